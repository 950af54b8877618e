//! `brume deploy` end to end: three real `brume node` daemons on loopback, a service of three
//! relay tasks (a static Rust binary in a `FROM scratch` build context) placed one per node,
//! each calling the next through its `BRUME_CALL_*` tunnel. Run on the real Docker engine and on
//! the process engine; then the refusals: a malformed manifest, a missing Dockerfile and a
//! corrupt chunk, each a clear error that leaves no task and no container behind.
//!
//! Each node offers only 150 mCPU, so the 100-mCPU tasks cannot share a node: the call chain
//! front -> mid -> back crosses the overlay twice.
//!
//! Build contexts carry the labels `brume.test=<run>` and `brume.test.owner=<service>`, so the
//! images the daemons build (and their containers) are removed when the test ends, pass or fail
//! (`common::ServiceNet`'s drop), and swept by label after a run that died. A missing Docker
//! daemon is a skip recorded by `brume_testnet::require`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

mod common;

use brume_control::Deployed;
use brume_control::{PsRow, StatusView};

use common::{port_of, text};

const BRUME: &str = env!("CARGO_BIN_EXE_brume");

/// The relay chain's build context (the static relay, `FROM scratch`) with `service` in it as
/// its salt and its owner label.
fn context(dir: &Path, service: &str) -> PathBuf {
    common::chain_context(dir, service, service)
}

/// The relay chain's manifest: front -> mid -> back, 100 mCPU each.
fn manifest(dir: &Path, service: &str) -> PathBuf {
    brume_testnet::relay_service::manifest(dir, service).expect("a manifest")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Three daemons, each offering 150 mCPU (one task per node), and the test's service.
struct Net(common::ServiceNet);

impl Net {
    fn start(engine: &str, service: &str) -> Net {
        Net(common::ServiceNet::start(
            Path::new(BRUME),
            3,
            engine,
            150,
            service,
        ))
    }

    fn dir(&self) -> &Path {
        self.0.dir()
    }

    fn data(&self, i: usize) -> PathBuf {
        self.0.net.data(i)
    }

    fn brume(&self, i: usize, args: &[&str]) -> Output {
        self.0.brume(i, args)
    }

    fn containers(&self) -> Vec<String> {
        self.0.containers()
    }
}

fn deploys_a_chain_across_three_nodes(engine: &str) {
    let service = unique("chain");
    let net = Net::start(engine, &service);
    context(net.dir(), &service);
    let m = manifest(net.dir(), &service);
    let started = std::time::Instant::now();
    let out = net.brume(0, &["deploy", m.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "deploy failed: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let took = started.elapsed();
    let done: Deployed = serde_json::from_slice(&out.stdout).unwrap();
    let rows = &done.instances;
    assert_eq!(rows.len(), 3, "{done:#?}");
    let hosts: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(hosts.len(), 3, "one task per node: {done:#?}");
    let front = rows.iter().find(|r| r.task == "front").unwrap();
    assert_eq!(front.engine, engine);

    // front runs here (the root stays on the initiator); mid and back are one and two overlay
    // hops of tunnel away.
    let reply = common::ask(port_of(&front.address), "hello").expect("front answers");
    assert_eq!(reply, "front(mid(back))");
    eprintln!("{engine}: deployed in {took:?}; reply {reply}");

    let ps = net.brume(0, &["ps", "--json"]);
    let ps: Vec<PsRow> = serde_json::from_slice(&ps.stdout).unwrap();
    let states: Vec<&str> = ps.iter().map(|r| r.instance.state.as_str()).collect();
    assert_eq!(states, vec!["running"; 3], "{ps:#?}");

    let logs = net.brume(0, &["logs", "back"]);
    assert!(logs.status.success(), "{}", text(&logs.stderr));

    let stop = net.brume(0, &["stop", &service]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    assert!(
        text(&stop.stdout).contains("3 instance(s)"),
        "{}",
        text(&stop.stdout)
    );
    assert!(
        net.containers().is_empty(),
        "containers left: {:?}",
        net.containers()
    );
    let ps = net.brume(0, &["ps", "--json"]);
    let ps: Vec<PsRow> = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(ps, Vec::new());
}

#[test]
fn a_chain_of_three_tasks_calls_through_tunnels_on_docker() {
    if !common::need_docker("deploy::a_chain_of_three_tasks_calls_through_tunnels_on_docker") {
        return;
    }
    deploys_a_chain_across_three_nodes("docker");
}

#[test]
fn a_chain_of_three_tasks_calls_through_tunnels_on_processes() {
    deploys_a_chain_across_three_nodes("process");
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_behind() {
    if !common::need_docker("deploy::bad_input_is_refused_and_leaves_nothing_behind") {
        return;
    }
    let service = unique("bad");
    let net = Net::start("docker", &service);
    let dir = net.dir();

    // A malformed manifest: refused with the file, the line and the field.
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "[service]\nname = \"x\"\nroot = 3\n").unwrap();
    let out = net.brume(0, &["deploy", broken.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("broken.toml"),
        "{}",
        text(&out.stderr)
    );

    // A build context without a Dockerfile.
    let m = manifest(dir, &service);
    std::fs::create_dir_all(dir.join("ctx")).unwrap();
    let out = net.brume(0, &["deploy", m.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Dockerfile"),
        "{}",
        text(&out.stderr)
    );
    assert!(net.containers().is_empty());

    // A corrupt chunk on the initiator: the hosts refuse it, the deploy is rolled back.
    context(dir, &service);
    let ok = net.brume(0, &["deploy", m.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(net.brume(0, &["stop", &service]).status.success());
    for i in 1..3 {
        let _ = std::fs::remove_dir_all(net.data(i).join("chunks"));
        let _ = std::fs::remove_dir_all(net.data(i).join("images"));
    }
    let mut corrupted = 0;
    for entry in walk(&net.data(0).join("chunks")) {
        let len = std::fs::metadata(&entry).unwrap().len() as usize;
        std::fs::write(&entry, vec![0x5a; len]).unwrap();
        corrupted += 1;
    }
    assert!(corrupted > 0, "the initiator stored no chunks");
    let out = net.brume(0, &["deploy", m.to_str().unwrap()]);
    assert!(!out.status.success(), "a corrupt artifact was deployed");
    let err = text(&out.stderr);
    assert!(err.contains("digest") || err.contains("corrupt"), "{err}");
    assert!(err.contains("stopped again"), "{err}");
    assert!(
        net.containers().is_empty(),
        "containers left: {:?}",
        net.containers()
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The pids of the processes running epoch `epoch` of `service`'s relay task.
fn relay_processes(service: &str, epoch: u64) -> Vec<u32> {
    common::processes_with_env(&[
        &format!("BRUME_SERVICE={service}"),
        "BRUME_TASK=relay",
        &format!("BRUME_EPOCH={epoch}"),
    ])
}

/// Waits until no process runs epoch `epoch` of `service`'s relay (a stopped task is reaped a
/// moment after the stop returns), for at most 60 s.
fn wait_relay_gone(service: &str, epoch: u64) {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = relay_processes(service, epoch);
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "the epoch-{epoch} relay outlived its removal by 60 s: processes {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A host asked directly (as a racing initiator with a stale map would) for more than it has
/// free refuses and starts nothing; deploys are idempotent per epoch (the same again is a no-op,
/// an older epoch is stale, a newer one replaces); garbage on the deploy protocol is refused.
#[test]
fn a_host_checks_resources_epochs_and_garbage() {
    use brume::deploy::wire::{InstanceSpec, Payload, Reply, Request, DEPLOY_PROTOCOL};
    use brume_overlay::frames::{read_frame, write_frame};
    use brume_tunnel::InstanceId;
    use futures::AsyncWriteExt;

    let service = unique("greedy");
    let net = Net::start("process", &service);
    let target = {
        let out = net.brume(1, &["status", "--json"]);
        let status: StatusView = serde_json::from_slice(&out.stdout).unwrap();
        status.listen[0].clone()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = brume_overlay::OverlayConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![target.parse().unwrap()],
            min_degree: 1,
            max_degree: 4,
            ..Default::default()
        };
        let (me, task) = brume_overlay::Overlay::spawn(cfg).await.unwrap();
        let host: brume_overlay::PeerId = target.rsplit('/').next().unwrap().parse().unwrap();
        let addr: brume_overlay::Multiaddr = target.parse().unwrap();
        me.connect(host, vec![addr], Duration::from_secs(60))
            .await
            .unwrap();

        let spec = InstanceSpec::new(
            InstanceId::new(&service, "hog", 0),
            1,
            Payload::Command(vec!["/bin/true".into()]),
            10_000,
            64,
        )
        .signed(me.keypair());
        let mut s = me.open_stream(host, DEPLOY_PROTOCOL).await.unwrap();
        write_frame(&mut s, &Request::Deploy(spec))
            .await
            .unwrap();
        let reply: Reply = read_frame(&mut s, 1 << 20).await.unwrap();
        match reply {
            Reply::Refused { reason } => {
                assert!(reason.contains("not enough free resources"), "{reason}")
            }
            other => panic!("a 10-core task was not refused: {other:?}"),
        }

        // Deploys are idempotent per epoch: the same request again changes nothing, an older
        // epoch is refused as stale, a newer one replaces the instance.
        let store_dir = common::tempdir();
        let store = brume_artifact::ChunkStore::open(store_dir.path()).unwrap();
        let ctx = common::relay_context(&service);
        let artifact = brume_artifact::pack_context(ctx.path()).unwrap();
        let manifest = store.put_artifact(&artifact).unwrap();
        let incoming = me.accept_streams(brume_artifact::TRANSFER_PROTOCOL).unwrap();
        let server = tokio::spawn(brume_artifact::serve_incoming(store, incoming, 2));
        let relay = |epoch: u64| InstanceSpec::new(
            InstanceId::new(&service, "relay", 0),
            epoch,
            Payload::Artifact(manifest.clone()),
            100,
            64,
        )
        .signed(me.keypair());
        let deploy = |spec: InstanceSpec| {
            let me = me.clone();
            async move {
                let mut s = me.open_stream(host, DEPLOY_PROTOCOL).await.unwrap();
                write_frame(&mut s, &Request::Deploy(spec)).await.unwrap();
                loop {
                    match read_frame::<_, Reply>(&mut s, 1 << 20).await.unwrap() {
                        Reply::Phase(_) => continue,
                        last => return last,
                    }
                }
            }
        };
        let first = deploy(relay(10)).await;
        let Reply::Started { instance, reused } = first else {
            panic!("the relay did not start: {first:?}");
        };
        assert!(!reused);
        assert_eq!(common::ask(instance.port, "x").unwrap(), "relay");
        assert_eq!(
            relay_processes(&service, 10).len(),
            1,
            "one epoch-10 relay process runs"
        );
        let again = deploy(relay(10)).await;
        assert!(
            matches!(&again, Reply::Started { instance: i, reused: true } if i.port == instance.port),
            "{again:?}"
        );
        let stale = deploy(relay(9)).await;
        assert!(
            matches!(&stale, Reply::Refused { reason } if reason.contains("stale")),
            "{stale:?}"
        );
        let newer = deploy(relay(11)).await;
        let Reply::Started { instance: second, reused: false } = newer else {
            panic!("epoch 11 did not replace epoch 10: {newer:?}");
        };
        assert_eq!(second.epoch, 11);
        // Its process is gone (not "its port refuses": once freed, the port may be anyone's).
        wait_relay_gone(&service, 10);
        // A move that gave up removes one instance of one epoch: another epoch is left alone.
        let remove = |epoch: u64| {
            let me = me.clone();
            let service = service.clone();
            async move {
                let mut s = me.open_stream(host, DEPLOY_PROTOCOL).await.unwrap();
                let req = Request::Remove {
                    instance: InstanceId::new(service, "relay", 0),
                    epoch,
                    back_to: None,
                    delegation: None,
                };
                write_frame(&mut s, &req).await.unwrap();
                read_frame::<_, Reply>(&mut s, 1 << 20).await.unwrap()
            }
        };
        let kept = remove(10).await;
        assert!(
            matches!(&kept, Reply::Stopped { instances } if instances.is_empty()),
            "{kept:?}"
        );
        assert_eq!(common::ask(second.port, "x").unwrap(), "relay");
        let removed = remove(11).await;
        assert!(
            matches!(&removed, Reply::Stopped { instances } if instances.len() == 1),
            "{removed:?}"
        );
        wait_relay_gone(&service, 11);
        let mut s = me.open_stream(host, DEPLOY_PROTOCOL).await.unwrap();
        let stop = Request::Stop {
            service: service.clone(),
            epoch: None,
        };
        write_frame(&mut s, &stop).await.unwrap();
        let reply: Reply = read_frame(&mut s, 1 << 20).await.unwrap();
        assert!(
            matches!(&reply, Reply::Stopped { instances } if instances.is_empty()),
            "nothing is left to stop: {reply:?}"
        );
        server.abort();

        // Garbage instead of a request: refused, and the host still answers.
        let mut s = me.open_stream(host, DEPLOY_PROTOCOL).await.unwrap();
        s.write_all(&[0, 0, 0, 4, 0xff, 0xfe, 0xfd, 0xfc])
            .await
            .unwrap();
        s.flush().await.unwrap();
        let reply: Reply = read_frame(&mut s, 1 << 20).await.unwrap();
        assert!(matches!(reply, Reply::Refused { .. }), "{reply:?}");
        let mut s = me.open_stream(host, DEPLOY_PROTOCOL).await.unwrap();
        write_frame(&mut s, &Request::List { service: None })
            .await
            .unwrap();
        let reply: Reply = read_frame(&mut s, 1 << 20).await.unwrap();
        assert_eq!(reply, Reply::Instances(Vec::new()));
        me.shutdown().await.unwrap();
        let _ = task.await;
    });
}
