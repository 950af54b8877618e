//! Garbage collection of a node's data directory (`brume gc`, `disk_budget_mib`): a real
//! `brume node` on loopback, process engine, deploying one-task relay services.
//!
//! * What a stopped service used (its chunks, assembled artifact and image tree) is deleted by
//!   `brume gc` while a running service's items are kept, and the stopped one deploys again.
//! * Under a disk budget, a fetch that would pass it first deletes what nothing uses, oldest
//!   first, and a deploy that the items in use leave no room for is refused with an error that
//!   names the budget.
//! * A pin held by an operation under way keeps its items through a sweep: a real deploy whose
//!   last chunk's fetch the test's initiator holds unanswered, and the collector's pins on a
//!   real chunk store.
//! * On Docker, only the images this node made and nothing uses are removed.

use std::path::{Path, PathBuf};

mod common;

use brume::gc::{Collector, Goal};
use brume_artifact::{ArtifactManifest, ChunkStore};
use brume_control::GcReport;
use common::{port_of, text};

const BRUME: &str = env!("CARGO_BIN_EXE_brume");

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// A one-task relay service `name` in `dir/<name>/` (its own build context, salted with its
/// name so that its artifact is its own); its manifest path and artifact manifest.
fn service(dir: &Path, name: &str) -> (PathBuf, ArtifactManifest) {
    let sdir = dir.join(name);
    std::fs::create_dir_all(&sdir).unwrap();
    let ctx = common::chain_context(&sdir, name, name);
    let manifest = sdir.join("service.toml");
    std::fs::write(
        &manifest,
        format!(
            "[service]\nname = \"{name}\"\nroot = \"relay\"\n\n[[task]]\nname = \"relay\"\n\
             build = \"ctx\"\ncpu_millis = 100\nmemory_mb = 64\n"
        ),
    )
    .unwrap();
    // The artifact the initiator will make of it: the same context, packed the same way.
    let scratch = common::tempdir();
    let store = ChunkStore::open(scratch.path()).unwrap();
    let artifact = brume_artifact::pack_context(&ctx).unwrap();
    (manifest, store.put_artifact(&artifact).unwrap())
}

/// Which of the artifact's items are in the node's data directory: (chunks, tarball, tree).
fn on_disk(data: &Path, m: &ArtifactManifest) -> (usize, bool, bool) {
    let hex = m.digest.to_hex();
    let chunks = m
        .chunks
        .iter()
        .filter(|c| {
            let h = c.to_hex();
            data.join("chunks").join(&h[..2]).join(&h[2..]).is_file()
        })
        .count();
    let tar = data.join("images").join(format!("{hex}.tar")).is_file();
    let tree = data.join("tasks/images").join(&hex[..16]).is_dir();
    (chunks, tar, tree)
}

fn deploy(net: &common::ServiceNet, manifest: &Path) -> std::process::Output {
    net.brume(0, &["deploy", manifest.to_str().unwrap(), "--json"])
}

fn deployed_port(out: &std::process::Output) -> u16 {
    assert!(
        out.status.success(),
        "deploy failed: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let done: brume_control::Deployed = serde_json::from_slice(&out.stdout).unwrap();
    port_of(&done.instances[0].address)
}

fn stop(net: &common::ServiceNet, name: &str) {
    let out = net.brume(0, &["stop", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn gc_deletes_a_stopped_services_items_and_keeps_a_running_ones() {
    let (a, b) = (unique("gca"), unique("gcb"));
    let net = common::ServiceNet::start(Path::new(BRUME), 1, "process", 1000, &a);
    let (ma, art_a) = service(net.dir(), &a);
    let (mb, art_b) = service(net.dir(), &b);
    let data = net.net.data(0);
    let all_a = (art_a.chunks.len(), true, true);
    let all_b = (art_b.chunks.len(), true, true);

    let port_a = deployed_port(&deploy(&net, &ma));
    assert_eq!(common::ask(port_a, "x").unwrap(), "relay");
    let port_b = deployed_port(&deploy(&net, &mb));
    assert_eq!(on_disk(&data, &art_a), all_a, "a's artifact is here");
    assert_eq!(on_disk(&data, &art_b), all_b, "b's artifact is here");

    stop(&net, &a);
    let report: GcReport = net.json(0, &["gc", "--json"]);
    // The relay's bytes make chunks both artifacts share: those stay with b.
    let shared = art_a
        .chunks
        .iter()
        .filter(|c| art_b.chunks.contains(c))
        .count();
    assert!(shared < art_a.chunks.len(), "a has chunks of its own");
    assert_eq!(
        on_disk(&data, &art_a),
        (shared, false, false),
        "{report:#?}"
    );
    assert_eq!(on_disk(&data, &art_b), all_b, "running b kept: {report:#?}");
    assert_eq!(
        report.chunks,
        (art_a.chunks.len() - shared) as u64,
        "{report:#?}"
    );
    assert_eq!(
        (report.artifacts, report.image_trees),
        (1, 1),
        "{report:#?}"
    );
    assert!(report.freed_bytes >= 2 * art_a.size, "{report:#?}");
    assert_eq!(common::ask(port_b, "x").unwrap(), "relay", "b still runs");

    // Nothing more to free; the person's output says so.
    let again = net.brume(0, &["gc"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("freed       0.0 MiB"),
        "{}",
        text(&again.stdout)
    );

    // a deploys again: its chunks are packed and fetched anew.
    let port_a = deployed_port(&deploy(&net, &ma));
    assert_eq!(common::ask(port_a, "x").unwrap(), "relay");
    assert_eq!(on_disk(&data, &art_a), all_a);
    stop(&net, &a);
    stop(&net, &b);
}

#[test]
fn a_fetch_past_the_budget_deletes_garbage_first_and_is_refused_when_nothing_can_go() {
    let (a, b, c) = (unique("gba"), unique("gbb"), unique("gbc"));
    // Each relay artifact is about 6 MiB and takes three times that here (chunks, tarball,
    // image tree): one service fits in 30 MiB, two do not.
    let net = common::ServiceNet::start_with(
        Path::new(BRUME),
        1,
        "process",
        1000,
        &["--disk-budget-mib", "30"],
        &a,
    );
    let (ma, art_a) = service(net.dir(), &a);
    let (mb, art_b) = service(net.dir(), &b);
    let (mc, _) = service(net.dir(), &c);
    assert!(
        (5 << 20..8 << 20).contains(&art_a.size),
        "the sizes this test counts on: {}",
        art_a.size
    );
    let data = net.net.data(0);

    deployed_port(&deploy(&net, &ma));
    stop(&net, &a);
    // b does not fit beside a's leftovers: the oldest of them go first.
    let port_b = deployed_port(&deploy(&net, &mb));
    assert_eq!(common::ask(port_b, "x").unwrap(), "relay");
    let left = on_disk(&data, &art_a);
    assert_ne!(
        left,
        (art_a.chunks.len(), true, true),
        "nothing of a was deleted"
    );
    assert_eq!(on_disk(&data, &art_b), (art_b.chunks.len(), true, true));

    // c does not fit beside b, which runs: refused, naming the budget.
    let out = deploy(&net, &mc);
    assert!(!out.status.success(), "c was deployed past the budget");
    let err = text(&out.stderr) + &text(&out.stdout);
    assert!(err.contains("disk budget exceeded"), "{err}");
    assert!(err.contains("disk_budget_mib is 30 MiB"), "{err}");
    assert_eq!(common::ask(port_b, "x").unwrap(), "relay", "b still runs");
    stop(&net, &b);
}

#[tokio::test]
async fn a_pinned_artifact_survives_a_sweep_and_goes_once_unpinned() {
    let dir = common::tempdir();
    let data = dir.path();
    let store = ChunkStore::open(data.join("chunks")).unwrap();
    let ctx = common::relay_context("gc-pin");
    let m = store
        .put_artifact(&brume_artifact::pack_context(ctx.path()).unwrap())
        .unwrap();
    std::fs::create_dir_all(data.join("images")).unwrap();
    let tar = data
        .join("images")
        .join(format!("{}.tar", m.digest.to_hex()));
    store.assemble(&m, &tar).unwrap();
    let gc = Collector::in_data_dir(data, 0);

    // A deploy under way holds its pin: nothing of its artifact goes.
    let pin = gc.pins().pin([m.clone()]);
    let report = gc.sweep(gc.live_base(), Goal::everything()).await.unwrap();
    assert!(report.deleted.is_empty(), "{report:?}");
    assert_eq!(on_disk(data, &m), (m.chunks.len(), true, false));

    // An initiator packing freezes every chunk; the unpinned tarball may go.
    drop(pin);
    let packing = gc.pins().freeze_chunks("packing test");
    let report = gc.sweep(gc.live_base(), Goal::everything()).await.unwrap();
    assert_eq!(
        on_disk(data, &m),
        (m.chunks.len(), false, false),
        "{report:?}"
    );
    assert_eq!(report.chunks_frozen.len(), 1);

    // Nothing pinned: everything goes.
    drop(packing);
    let report = gc.sweep(gc.live_base(), Goal::everything()).await.unwrap();
    assert_eq!(on_disk(data, &m), (0, false, false), "{report:?}");
    assert_eq!(report.deleted.len(), m.chunks.len());
}

fn image_exists(name: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn on_docker_gc_removes_the_images_this_node_made_that_nothing_uses_and_no_other() {
    if !common::need_docker("on_docker_gc_removes_the_images_this_node_made") {
        return;
    }
    let (a, b) = (unique("gda"), unique("gdb"));
    let net = common::ServiceNet::start(Path::new(BRUME), 1, "docker", 1000, &a);
    let mut cleanup = common::Cleanup::owned(&b);
    let (ma, art_a) = service(net.dir(), &a);
    let (mb, art_b) = service(net.dir(), &b);
    let name = |m: &ArtifactManifest| format!("brume/{}:latest", &m.digest.to_hex()[..16]);
    let (image_a, image_b) = (name(&art_a), name(&art_b));

    deployed_port(&deploy(&net, &ma));
    let port_b = deployed_port(&deploy(&net, &mb));
    assert!(image_exists(&image_a) && image_exists(&image_b));
    // An image of brume's form of name that this node never made: never touched.
    let foreign = format!("brume/{:016x}:latest", rand::random::<u64>());
    let tagged = std::process::Command::new("docker")
        .args(["tag", &image_b, &foreign])
        .status()
        .unwrap();
    assert!(tagged.success());
    cleanup.images.push(foreign.clone());

    stop(&net, &a);
    let report: GcReport = net.json(0, &["gc", "--json"]);
    assert_eq!(report.images_removed, vec![image_a.clone()], "{report:#?}");
    assert!(!image_exists(&image_a), "a's image is gone");
    assert!(image_exists(&image_b), "b's image, in use, is kept");
    assert!(
        image_exists(&foreign),
        "an image this node did not make is kept"
    );
    assert_eq!(common::ask(port_b, "x").unwrap(), "relay");

    // a deploys again: its image is built anew.
    deployed_port(&deploy(&net, &ma));
    assert!(image_exists(&image_a));
    stop(&net, &a);
    stop(&net, &b);
}

/// A deploy under way pins its artifact on the host: a host that already holds all but one of
/// its chunks (left from an earlier epoch, stopped: garbage) starts fetching the last one from an
/// initiator that holds the stream unanswered; `brume gc` on the host then deletes nothing of
/// the artifact. Once the initiator answers, the deploy completes; stopped, its items go.
#[test]
fn an_artifact_pinned_by_a_deploy_under_way_survives_gc() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use brume::deploy::wire::{InstanceSpec, Payload, Reply, Request, DEPLOY_PROTOCOL};
    use brume_overlay::frames::{read_frame, write_frame};
    use brume_tunnel::InstanceId;
    use futures::StreamExt;

    let service = unique("gcpin");
    let net = common::ServiceNet::start(Path::new(BRUME), 1, "process", 1000, &service);
    let data = net.net.data(0);
    let target = {
        let s: brume_control::StatusView = net.json(0, &["status", "--json"]);
        s.listen[0].clone()
    };
    let store_dir = common::tempdir();
    let store = ChunkStore::open(store_dir.path()).unwrap();
    let ctx = common::relay_context(&service);
    let m = store
        .put_artifact(&brume_artifact::pack_context(ctx.path()).unwrap())
        .unwrap();
    assert!(m.chunks.len() >= 2, "the relay makes several chunks");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = brume_overlay::OverlayConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![target.parse().unwrap()],
            min_degree: 1,
            max_degree: 4,
            ..Default::default()
        };
        let (me, _task) = brume_overlay::Overlay::spawn(cfg).await.unwrap();
        let host: brume_overlay::PeerId = target.rsplit('/').next().unwrap().parse().unwrap();
        me.connect(host, vec![target.parse().unwrap()], Duration::from_secs(60))
            .await
            .unwrap();

        // The chunk server, behind a gate: while closed, transfer streams are held unanswered.
        let open = Arc::new(AtomicBool::new(true));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut incoming = me
            .accept_streams(brume_artifact::TRANSFER_PROTOCOL)
            .unwrap();
        let (gate, holding) = (open.clone(), held.clone());
        tokio::spawn(async move {
            while let Some(item) = incoming.next().await {
                if gate.load(Ordering::SeqCst) {
                    let _ = tx.unbounded_send(item);
                } else {
                    holding.lock().unwrap().push(item);
                }
            }
        });
        tokio::spawn(brume_artifact::serve_incoming(store, rx, 2));

        let relay = |epoch: u64| {
            InstanceSpec::new(
                InstanceId::new(&service, "relay", 0),
                epoch,
                Payload::Artifact(m.clone()),
                100,
                64,
            )
            .signed(me.keypair())
        };
        let ask = |req: Request| {
            let me = me.clone();
            async move {
                let mut s = me.open_stream(host, DEPLOY_PROTOCOL).await.unwrap();
                write_frame(&mut s, &req).await.unwrap();
                loop {
                    match read_frame::<_, Reply>(&mut s, 1 << 20).await.unwrap() {
                        Reply::Phase(_) => continue,
                        last => return last,
                    }
                }
            }
        };
        let stop = Request::Stop {
            service: service.clone(),
            epoch: None,
        };
        let all = (m.chunks.len(), true, true);

        // Epoch 1 runs and stops: its items are garbage now. One chunk is lost.
        let first = ask(Request::Deploy(relay(1))).await;
        assert!(matches!(first, Reply::Started { .. }), "{first:?}");
        assert!(matches!(ask(stop.clone()).await, Reply::Stopped { .. }));
        assert_eq!(on_disk(&data, &m), all);
        let last = m.chunks.last().unwrap().to_hex();
        std::fs::remove_file(data.join("chunks").join(&last[..2]).join(&last[2..])).unwrap();
        let kept = on_disk(&data, &m);
        assert_eq!(
            kept.0,
            m.chunks.iter().filter(|c| c.to_hex() != last).count()
        );

        // Epoch 2: its fetch of the lost chunk is held by the closed gate.
        open.store(false, Ordering::SeqCst);
        let deploying = tokio::spawn(ask(Request::Deploy(relay(2))));
        for _ in 0..600 {
            if !held.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !held.lock().unwrap().is_empty(),
            "the host never asked for the lost chunk"
        );

        let report: GcReport = tokio::task::block_in_place(|| net.json(0, &["gc", "--json"]));
        assert_eq!(
            on_disk(&data, &m),
            kept,
            "the pinned artifact lost items: {report:#?}"
        );
        assert_eq!(
            (report.chunks, report.artifacts, report.image_trees),
            (0, 0, 0),
            "{report:#?}"
        );

        // The initiator answers again: the held streams close, the fetch reopens and completes.
        open.store(true, Ordering::SeqCst);
        held.lock().unwrap().clear();
        let second = deploying.await.unwrap();
        assert!(matches!(second, Reply::Started { .. }), "{second:?}");
        assert_eq!(on_disk(&data, &m), all);

        // Stopped, with nothing under way: everything goes.
        assert!(matches!(ask(stop.clone()).await, Reply::Stopped { .. }));
        let report: GcReport = tokio::task::block_in_place(|| net.json(0, &["gc", "--json"]));
        assert_eq!(on_disk(&data, &m), (0, false, false), "{report:#?}");
    });
}
