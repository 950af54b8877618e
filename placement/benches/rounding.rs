//! Speed of breadth-first randomized rounding: a 100-task service on a 10,000-host network, one
//! round and best of 32, with the greedy baseline beside them. `cargo bench -p brume-placement`.

use brume_placement::generate::{self, GraphSpec, NetSpec, Shape};
use brume_placement::policy::Latency;
use brume_placement::{greedy, rounding, Problem, RoundingConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let net = generate::network(&NetSpec::new(10_000), &mut rng);
    let graph = generate::call_graph(&GraphSpec::new(Shape::Tree, 100), &mut rng);
    let problem = Problem::new(&graph, &net).expect("generated graph is valid");
    let mut group = c.benchmark_group("place_100_tasks_10000_hosts");
    group.sample_size(20);
    for rounds in [1u32, 32] {
        let cfg = RoundingConfig {
            rounds,
            ..Default::default()
        };
        group.bench_with_input(BenchmarkId::new("rounding", rounds), &cfg, |b, cfg| {
            b.iter(|| rounding::place(&problem, &Latency, cfg).expect("feasible"))
        });
    }
    group.bench_function("greedy", |b| {
        b.iter(|| greedy::place(&problem, &Latency).expect("feasible"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
