//! What `brume trace checkpoints` will do, decided before anything runs: the tasks (workload
//! shape) and, for each, its dumps (how long after the previous one, and which follow tracked
//! pre-copy rounds). A pure function of the seed and the options, so a rerun with the same
//! `--seed` runs the same plan (what it measures still varies with the machine).
//!
//! Sizes are dealt like cards: each pass over the deck gives every size up to `--max-mib` one
//! task, in a seeded order, so a short plan still spans sizes and a long one covers them
//! evenly. Large tasks get fewer dumps (a 1 GiB task at most 3), which keeps the run's length
//! and the machine's memory in bounds.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The task sizes a plan deals from, MiB.
pub const SIZES: [usize; 7] = [16, 32, 64, 128, 256, 512, 1024];

/// One workload instance.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskPlan {
    /// Short name of the shape (the CSV's `workload`).
    pub workload: &'static str,
    pub mib: usize,
    pub dirty_mib_s: f64,
    pub threads: usize,
    pub procs: usize,
    pub files: usize,
    pub sockets: usize,
    pub dumps: Vec<DumpPlan>,
}

/// One dump of a task.
#[derive(Clone, Debug, PartialEq)]
pub struct DumpPlan {
    /// Seconds from the previous dump's end (or the task being ready) to this dump's start,
    /// the tracked rounds included.
    pub gap_s: f64,
    /// Empty for a plain dump; otherwise the seconds between consecutive tracked pre-copy
    /// rounds, the last round right before the dump (n intervals = n + 1 rounds).
    pub rounds: Vec<f64>,
}

/// The whole plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub tasks: Vec<TaskPlan>,
}

impl Plan {
    pub fn dumps(&self) -> usize {
        self.tasks.iter().map(|t| t.dumps.len()).sum()
    }
}

/// The most dumps one task of `mib` gets.
fn max_dumps(mib: usize, cap: usize) -> usize {
    let by_size = match mib {
        0..=128 => 8,
        129..=512 => 5,
        _ => 3,
    };
    by_size.min(cap).max(1)
}

/// Seconds, log-uniform in `[lo, hi]`.
fn log_uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    let u: f64 = rng.random();
    (lo.ln() + u * (hi.ln() - lo.ln())).exp()
}

/// A rounded number of seconds (plans print and compare cleanly).
fn ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

fn task(rng: &mut ChaCha8Rng, mib: usize, cap: usize) -> TaskPlan {
    let rates = [0.0, 1.0, 4.0, 16.0, 64.0];
    let dirty_mib_s = *rates.choose(rng).unwrap_or(&0.0);
    let (workload, threads, procs, files, sockets) = match rng.random_range(0..4) {
        0 => ("dirtier", 1, 1, rng.random_range(0..3), 0),
        1 => (
            "threads",
            *[2usize, 4, 8, 16].choose(rng).unwrap_or(&2),
            1,
            rng.random_range(0..8),
            rng.random_range(0..3),
        ),
        2 => (
            "files",
            rng.random_range(1..3),
            1,
            *[16usize, 64, 256, 512].choose(rng).unwrap_or(&16),
            *[4usize, 16, 64].choose(rng).unwrap_or(&4),
        ),
        _ => (
            "forks",
            rng.random_range(1..5),
            rng.random_range(2..5),
            rng.random_range(0..16),
            rng.random_range(0..6),
        ),
    };
    let most = max_dumps(mib, cap);
    let n = rng.random_range(most.min(2)..=most);
    let dumps = (0..n)
        .map(|_| {
            let tracked = rng.random_bool(0.5);
            let rounds: Vec<f64> = if tracked {
                (0..rng.random_range(1..=3))
                    .map(|_| ms(log_uniform(rng, 0.2, 1.5)))
                    .collect()
            } else {
                Vec::new()
            };
            let spent: f64 = rounds.iter().sum();
            DumpPlan {
                gap_s: ms(spent + log_uniform(rng, 0.1, 3.0)),
                rounds,
            }
        })
        .collect();
    TaskPlan {
        workload,
        mib,
        dirty_mib_s,
        threads,
        procs,
        files,
        sockets,
        dumps,
    }
}

/// The plan of `dumps` dumps (exactly) over tasks of at most `max_mib` MiB (at least the
/// smallest size), each with at most `per_task` dumps.
pub fn plan(seed: u64, dumps: usize, max_mib: usize, per_task: usize) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sizes: Vec<usize> = SIZES
        .iter()
        .copied()
        .filter(|&m| m <= max_mib.max(SIZES[0]))
        .collect();
    let mut tasks = Vec::new();
    let mut total = 0;
    let mut deck: Vec<usize> = Vec::new();
    while total < dumps {
        if deck.is_empty() {
            deck = sizes.clone();
            deck.shuffle(&mut rng);
        }
        let mib = deck.pop().unwrap_or(SIZES[0]);
        let mut t = task(&mut rng, mib, per_task);
        t.dumps.truncate(dumps - total);
        total += t.dumps.len();
        tasks.push(t);
    }
    Plan { tasks }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        assert_eq!(plan(1, 320, 1024, 8), plan(1, 320, 1024, 8));
        assert_ne!(plan(1, 320, 1024, 8), plan(2, 320, 1024, 8));
    }

    #[test]
    fn a_plan_has_exactly_its_dumps_within_its_bounds() {
        for (dumps, max_mib, per_task) in [(320, 1024, 8), (3, 32, 2), (1, 16, 8), (50, 100, 3)] {
            let p = plan(7, dumps, max_mib, per_task);
            assert_eq!(p.dumps(), dumps);
            for t in &p.tasks {
                assert!(t.mib <= max_mib.max(16) && t.mib >= 16, "{t:?}");
                assert!(!t.dumps.is_empty() && t.dumps.len() <= per_task, "{t:?}");
                if t.mib >= 1024 {
                    assert!(t.dumps.len() <= 3);
                }
                for d in &t.dumps {
                    assert!(d.gap_s >= d.rounds.iter().sum::<f64>());
                }
            }
        }
    }

    #[test]
    fn sizes_are_dealt_evenly() {
        let p = plan(1, 320, 1024, 8);
        for size in SIZES {
            let n = p.tasks.iter().filter(|t| t.mib == size).count();
            assert!(n >= p.tasks.len() / SIZES.len(), "{size} MiB: {n} tasks");
        }
        // Two tasks of a small plan have different sizes.
        let small = plan(1, 4, 32, 2);
        assert_eq!(small.tasks.len(), 2);
        assert_ne!(small.tasks[0].mib, small.tasks[1].mib);
    }

    #[test]
    fn both_kinds_of_dump_are_planned() {
        let p = plan(1, 320, 1024, 8);
        let tracked = p
            .tasks
            .iter()
            .flat_map(|t| &t.dumps)
            .filter(|d| !d.rounds.is_empty())
            .count();
        assert!(tracked > 100 && tracked < 220, "{tracked} tracked of 320");
    }
}
