//! The process engine for real: the relay's `FROM scratch` build context becomes a directory
//! tree, two relays run as child processes in their own directories and find each other through
//! `BRUME_CALL_B`; logs, stop (SIGTERM, exit 0) and remove leave nothing. Bad input (no
//! Dockerfile, a base image, RUN, shell form, a missing COPY source, a taken port, a task that
//! exits at once, a name in use, an image never prepared) fails with a clear message and leaves
//! no task. The supervisor restarts a killed task up to its limit; dropping the engine, or
//! killing the node's process outright, leaves no child alive (checked in /proc). A `docker
//! save` tarball of the relay image (made with the real Docker engine) runs as a process too.
//! A state too big for the environment reaches a task as the file `BRUME_RESTORE_FILE` names.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use brume_engine::{
    DockerEngine, Engine, EngineError, ImageInput, ImageKind, ImageRef, LaunchSpec, ProcessEngine,
    RestartPolicy, TaskState,
};
use common::{ask, free_port, pack_context, relay_context, tempdir, unique_suffix, Cleanup};

fn spec(name: &str, task: &str, image: &ImageRef, port: u16) -> LaunchSpec {
    LaunchSpec {
        name: name.to_string(),
        service: "proctest".into(),
        task: task.into(),
        replica: 0,
        epoch: 3,
        image: image.clone(),
        env: BTreeMap::new(),
        port,
        cpu_millis: 0,
        memory_mb: 0,
        restart: RestartPolicy::Never,
        workdir: None,
        user: None,
        restore: None,
    }
}

/// A process as /proc shows it: alive (not a zombie) and the same process (start time).
fn alive(pid: u32, start: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state is the 1st, starttime the 20th.
    fields.first() != Some(&"Z") && fields.get(19) == Some(&start)
}

fn start_time(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(") ").expect("stat format");
    rest.split_whitespace()
        .nth(19)
        .expect("starttime")
        .to_string()
}

/// Waits (polling /proc) until the process is gone; false when it is still alive after `bound`,
/// a liveness deadline far beyond what a loaded machine needs.
fn wait_dead(pid: u32, start: &str, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if !alive(pid, start) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// How long a task may take to do what it was told (exit, come back) before the test calls it
/// stuck: a liveness bound, never a speed claim.
const LIVENESS: Duration = Duration::from_secs(60);

async fn relay_engine(root: &Path) -> (ProcessEngine, ImageRef) {
    let engine = ProcessEngine::new(root.join("engine")).unwrap();
    let ctx = relay_context("engine-process");
    let input = pack_context(ctx.path(), root);
    let image = engine.prepare(&input).await.unwrap();
    (engine, image)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_call_each_other_and_leave_nothing_behind() {
    let root = tempdir();
    let engine = ProcessEngine::new(root.path().join("engine")).unwrap();
    let ctx = relay_context("engine-process");
    let input = pack_context(ctx.path(), root.path());
    let t = Instant::now();
    let image = engine.prepare(&input).await.unwrap();
    let cold_prepare = t.elapsed();
    assert_eq!(image, input.image_ref().unwrap());
    let image_json = root
        .path()
        .join("engine/images")
        .join(image.brume_id().unwrap())
        .join("image.json");
    let made = std::fs::metadata(&image_json).unwrap().modified().unwrap();
    assert_eq!(engine.prepare(&input).await.unwrap(), image);
    assert_eq!(
        std::fs::metadata(&image_json).unwrap().modified().unwrap(),
        made,
        "a prepared image is not prepared again"
    );

    let (pa, pb) = (free_port(), free_port());
    let t = Instant::now();
    engine.start(&spec("b", "b", &image, pb)).await.unwrap();
    let start_b = t.elapsed();
    let mut sa = spec("a", "a", &image, pa);
    sa.env
        .insert("BRUME_CALL_B".into(), format!("127.0.0.1:{pb}"));
    sa.env
        .insert("BRUME_CALL_B_0".into(), format!("127.0.0.1:{pb}"));
    engine.start(&sa).await.unwrap();
    eprintln!("process engine: cold prepare {cold_prepare:?}, start (spawn+accepting) {start_b:?}");

    assert_eq!(ask(pa, "hello").unwrap(), "a(b)");
    assert_eq!(ask(pb, "STATE").unwrap(), "1");

    // Its own directory, the image's file, and exactly the task's environment.
    let st = engine.state("a").await.unwrap();
    assert_eq!(st.state, TaskState::Running);
    let pid = st.pid.expect("a pid");
    let task_dir = root.path().join("engine/tasks/a");
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(cwd, task_dir.join("rootfs"));
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, task_dir.join("rootfs/brume-relay"));
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    for want in [
        format!("PORT={pa}"),
        "BRUME_TASK=a".into(),
        "BRUME_SERVICE=proctest".into(),
        "BRUME_EPOCH=3".into(),
        "BRUME_REPLICA=0".into(),
    ] {
        assert!(environ.contains(&want), "{want} missing from {environ:?}");
    }
    assert!(
        !environ.iter().any(|v| v.starts_with("CARGO_")),
        "the node's environment leaked into the task: {environ:?}"
    );
    // Its own process group.
    // SAFETY: getpgid(2) on a pid; no memory involved.
    assert_eq!(unsafe { libc::getpgid(pid as i32) }, pid as i32);

    let logs = engine.logs("a", 10).await.unwrap();
    assert!(
        logs.contains(&format!("brume-relay a listening on 127.0.0.1:{pa}")),
        "{logs}"
    );
    let names: Vec<String> = engine
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["a", "b"]);

    // SIGTERM ends the relay with status 0 (SIGKILL, which the engine sends once the grace is
    // over, would read 137: the exit code, not the time taken, shows the relay handled SIGTERM).
    let start_a = start_time(pid);
    engine.stop("a", Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        engine.state("a").await.unwrap().state,
        TaskState::Exited { code: 0 }
    );
    assert!(!alive(pid, &start_a));
    // Stopped stays stopped, and stopping again is fine.
    engine.stop("a", Duration::from_secs(1)).await.unwrap();

    let pid_b = engine.state("b").await.unwrap().pid.unwrap();
    let start_b = start_time(pid_b);
    engine.remove("a").await.unwrap();
    engine.remove("b").await.unwrap();
    assert!(
        wait_dead(pid_b, &start_b, LIVENESS),
        "b ({pid_b}) outlived its removal"
    );
    assert!(engine.list().await.unwrap().is_empty());
    assert_eq!(engine.state("a").await.unwrap().state, TaskState::Missing);
    engine.remove("a").await.unwrap();
    assert!(!task_dir.exists());
    assert!(matches!(
        engine.logs("a", 5).await,
        Err(EngineError::NotFound { .. })
    ));
}

async fn prepare_err(engine: &ProcessEngine, root: &Path, dockerfile: Option<&str>) -> EngineError {
    let relay = common::relay_binary();
    let ctx = common::context_dir(dockerfile, &[("brume-relay", &relay)]);
    let input = pack_context(ctx.path(), root);
    engine.prepare(&input).await.unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_clearly_and_leaves_no_task() {
    let root = tempdir();
    let (engine, image) = relay_engine(root.path()).await;

    let err = prepare_err(&engine, root.path(), None).await;
    assert!(
        matches!(err, EngineError::MissingDockerfile { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("has no Dockerfile"), "{err}");

    let err = prepare_err(
        &engine,
        root.path(),
        Some("FROM debian:bookworm\nCOPY a /a\n"),
    )
    .await;
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Unsupported { .. }), "{err}");
    assert!(
        msg.contains("FROM debian:bookworm") && msg.contains("install Docker"),
        "{msg}"
    );

    let err = prepare_err(
        &engine,
        root.path(),
        Some("FROM scratch\nCOPY brume-relay /r\nRUN chmod +x /r\n"),
    )
    .await;
    assert!(
        err.to_string().contains("line 3") && err.to_string().contains("RUN"),
        "{err}"
    );

    let err = prepare_err(
        &engine,
        root.path(),
        Some("FROM scratch\nCOPY brume-relay /r\nENTRYPOINT /r --port 1\n"),
    )
    .await;
    assert!(err.to_string().contains("shell form"), "{err}");

    let err = prepare_err(
        &engine,
        root.path(),
        Some("FROM scratch\nCOPY missing-file /x\n"),
    )
    .await;
    assert!(matches!(err, EngineError::BuildFailed { .. }), "{err}");
    assert!(err.to_string().contains("missing-file"), "{err}");
    // No half-built image stays.
    let images: Vec<_> = std::fs::read_dir(root.path().join("engine/images"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");

    let ghost = ImageRef::from_digest("0000000000000000ffff").unwrap();
    let err = engine
        .start(&spec("ghost", "g", &ghost, free_port()))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::ImageMissing { .. }), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = engine
        .start(&spec("port", "p", &image, port))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("port {port} is in use on this host")),
        "{err}"
    );
    drop(taken);

    let mut s = spec("exits", "x", &image, free_port());
    s.env.insert("HOST".into(), "256.0.0.1".into());
    s.restart = RestartPolicy::OnFailure { max_restarts: 3 };
    let err = engine.start(&s).await.unwrap_err();
    match &err {
        EngineError::StartFailed {
            reason, last_logs, ..
        } => {
            assert!(reason.contains("exited with code 1"), "{reason}");
            assert!(
                last_logs.contains("cannot listen on 256.0.0.1"),
                "{last_logs}"
            );
        }
        other => panic!("expected StartFailed, got {other}"),
    }

    let port = free_port();
    engine.start(&spec("dup", "d", &image, port)).await.unwrap();
    let err = engine
        .start(&spec("dup", "d", &image, free_port()))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::AlreadyExists { .. }), "{err}");
    assert_eq!(ask(port, "still").unwrap(), "d");
    engine.remove("dup").await.unwrap();

    let err = engine
        .start(&spec("../escape", "e", &image, free_port()))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::BadName { .. }), "{err}");

    assert!(engine.list().await.unwrap().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(root.path().join("engine/tasks"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The state of task `name` once it no longer runs (a kill is seen by its supervisor a moment
/// after the signal).
async fn wait_not_running(engine: &ProcessEngine, name: &str) -> brume_engine::TaskStatus {
    let deadline = Instant::now() + LIVENESS;
    loop {
        let st = engine.state(name).await.unwrap();
        if st.state != TaskState::Running {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{name} still runs {LIVENESS:?} after its kill: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_restarts_a_killed_task_up_to_its_limit() {
    let root = tempdir();
    let (engine, image) = relay_engine(root.path()).await;
    let (pr, pn) = (free_port(), free_port());
    let mut sr = spec("r", "r", &image, pr);
    sr.restart = RestartPolicy::OnFailure { max_restarts: 1 };
    engine.start(&sr).await.unwrap();
    engine.start(&spec("n", "n", &image, pn)).await.unwrap();
    assert_eq!(ask(pr, "x").unwrap(), "r");

    let kill = |pid: u32| {
        // SAFETY: kill(2) on a task this test started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    };
    let first = engine.state("r").await.unwrap().pid.unwrap();
    kill(first);
    kill(engine.state("n").await.unwrap().pid.unwrap());
    let deadline = Instant::now() + LIVENESS;
    let second = loop {
        let st = engine.state("r").await.unwrap();
        if st.restarts == 1 && st.state == TaskState::Running {
            if let (Some(pid), Ok(reply)) = (st.pid, ask(pr, "back")) {
                assert_eq!(reply, "r");
                break pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not restarted within {LIVENESS:?}: {st:?}; its log: {:?}",
            engine.logs("r", 20).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(second, first);
    // n (restart: never) stays down once its supervisor has seen the kill.
    let st = wait_not_running(&engine, "n").await;
    assert_eq!(st.state, TaskState::Exited { code: 137 });
    assert_eq!(st.restarts, 0);

    // The limit: a second crash is the last.
    kill(second);
    let deadline = Instant::now() + LIVENESS;
    loop {
        let st = engine.state("r").await.unwrap();
        if st.state == (TaskState::Exited { code: 137 }) {
            assert_eq!(st.restarts, 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {st:?} {LIVENESS:?} after the second kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.remove("r").await.unwrap();
    engine.remove("n").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_engine_leaves_no_child_alive() {
    let root = tempdir();
    let (engine, image) = relay_engine(root.path()).await;
    let mut pids = Vec::new();
    for name in ["d1", "d2"] {
        let mut s = spec(name, name, &image, free_port());
        s.restart = RestartPolicy::OnFailure { max_restarts: 5 };
        engine.start(&s).await.unwrap();
        // Its pid, once it runs (a CI run once found none right after the start: the state and
        // the task's log say why if that happens again).
        let deadline = Instant::now() + LIVENESS;
        let pid = loop {
            let st = engine.state(name).await.unwrap();
            if let (TaskState::Running, Some(pid)) = (&st.state, st.pid) {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "{name} does not run: {st:?}; its log: {:?}",
                engine.logs(name, 20).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        pids.push((pid, start_time(pid)));
    }
    let clone = engine.clone();
    drop(engine);
    // A clone keeps the tasks.
    for (pid, start) in &pids {
        assert!(alive(*pid, start));
    }
    drop(clone);
    for (pid, start) in &pids {
        assert!(
            wait_dead(*pid, start, LIVENESS),
            "task {pid} outlived the engine"
        );
    }
}

/// Not a test on its own: the "node" of `a_killed_node_leaves_no_orphan`, run in a child
/// process of the test binary. It starts a task, writes the task's pid, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_helper_node() {
    let Ok(dir) = std::env::var("BRUME_ORPHAN_HELPER_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let input = ImageInput {
        kind: ImageKind::BuildContext,
        tar: PathBuf::from(std::env::var("BRUME_ORPHAN_HELPER_TAR").unwrap()),
        digest: std::env::var("BRUME_ORPHAN_HELPER_DIGEST").unwrap(),
    };
    let engine = ProcessEngine::new(dir.join("engine")).unwrap();
    let image = engine.prepare(&input).await.unwrap();
    let mut s = spec("orphan", "o", &image, free_port());
    s.restart = RestartPolicy::OnFailure { max_restarts: 5 };
    engine.start(&s).await.unwrap();
    // `start` returns once the task's supervisor runs; the supervisor spawns the process a
    // moment later (on a loaded machine, after this first look: CI-like run 19 read no pid).
    let deadline = Instant::now() + LIVENESS;
    let pid = loop {
        if let Some(pid) = engine.state("orphan").await.unwrap().pid {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the task got no pid within {LIVENESS:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    std::fs::write(dir.join("pid.tmp"), pid.to_string()).unwrap();
    std::fs::rename(dir.join("pid.tmp"), dir.join("pid")).unwrap();
    // Killed by the test long before this ends; the bound only keeps a lost helper from
    // lingering.
    tokio::time::sleep(Duration::from_secs(300)).await;
}

#[test]
fn a_killed_node_leaves_no_orphan() {
    let root = tempdir();
    let ctx = relay_context("engine-process");
    let input = pack_context(ctx.path(), root.path());
    let mut node = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "orphan_helper_node",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BRUME_ORPHAN_HELPER_DIR", root.path())
        .env("BRUME_ORPHAN_HELPER_TAR", &input.tar)
        .env("BRUME_ORPHAN_HELPER_DIGEST", &input.digest)
        .spawn()
        .unwrap();
    let pid_file = root.path().join("pid");
    let deadline = Instant::now() + LIVENESS;
    while !pid_file.exists() {
        if Instant::now() > deadline {
            let _ = node.kill();
            let _ = node.wait();
            panic!("the helper node did not start its task within {LIVENESS:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let start = start_time(pid);
    assert!(alive(pid, &start));
    // SIGKILL: the node gets no chance to clean up; the kernel must end its children.
    node.kill().unwrap();
    node.wait().unwrap();
    assert!(
        wait_dead(pid, &start, LIVENESS),
        "task {pid} outlived its killed node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_save_tarball_runs_as_a_process() {
    const TEST: &str = "engine_process::a_docker_save_tarball_runs_as_a_process";
    if !common::need_docker(TEST) {
        return;
    }
    let docker = DockerEngine::connect().await.expect("Docker answers");
    let root = tempdir();
    let owner = format!("engine-process-{}", unique_suffix());
    let mut cleanup = Cleanup::owned(&owner);
    let ctx = relay_context(&owner);
    let input = pack_context(ctx.path(), root.path());
    let built = docker.prepare(&input).await.unwrap();
    cleanup.images.push(built.0.clone());
    let saved = root.path().join("save.tar");
    let status = Command::new("docker")
        .args(["save", "-o", saved.to_str().unwrap(), built.as_str()])
        .status()
        .unwrap();
    assert!(status.success());

    let engine = ProcessEngine::new(root.path().join("engine")).unwrap();
    let load = ImageInput {
        kind: ImageKind::DockerSave,
        tar: saved,
        digest: "5a5e5a5e5a5e5a5e00".into(),
    };
    let t = Instant::now();
    let image = engine.prepare(&load).await.unwrap();
    eprintln!(
        "process engine: docker save tarball prepared in {:?}",
        t.elapsed()
    );
    let port = free_port();
    engine
        .start(&spec("saved", "s", &image, port))
        .await
        .unwrap();
    assert_eq!(ask(port, "x").unwrap(), "s");
    engine.remove("saved").await.unwrap();

    // A build context is not a docker save tarball.
    let bogus = ImageInput {
        kind: ImageKind::DockerSave,
        tar: input.tar.clone(),
        digest: "b0b0b0b0b0b0b0b000".into(),
    };
    let err = engine.prepare(&bogus).await.unwrap_err();
    assert!(err.to_string().contains("no manifest.json"), "{err}");
}

/// Polls `name`'s log until it shows `want` `count` times; a liveness bound, not a speed claim.
async fn wait_log(engine: &ProcessEngine, name: &str, want: &str, count: usize) -> String {
    let deadline = Instant::now() + LIVENESS;
    loop {
        let logs = engine.logs(name, 100).await.unwrap();
        if logs.matches(want).count() >= count {
            return logs;
        }
        assert!(
            Instant::now() < deadline,
            "{name}'s log did not show {want:?} {count} times within {LIVENESS:?}: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A task's log past its cap moves to `task.log.1` and starts again empty; `logs` reads across
/// both, and the task's next output lands in the emptied log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_log_past_its_cap_is_rotated_and_still_read_whole() {
    let root = tempdir();
    let engine = ProcessEngine::new(root.path().join("engine"))
        .unwrap()
        .with_log_max_bytes(32);
    let ctx = relay_context("engine-process");
    let image = engine
        .prepare(&pack_context(ctx.path(), root.path()))
        .await
        .unwrap();
    let port = free_port();
    let mut s = spec("lg", "lg", &image, port);
    s.restart = RestartPolicy::OnFailure { max_restarts: 1 };
    engine.start(&s).await.unwrap();
    wait_log(&engine, "lg", "listening", 1).await;
    let log = root.path().join("engine/tasks/lg/task.log");
    let older = root.path().join("engine/tasks/lg/task.log.1");
    assert!(std::fs::metadata(&log).unwrap().len() > 32);

    assert_eq!(engine.rotate_logs(), 1, "one log over its cap");
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
    assert!(std::fs::metadata(&older).unwrap().len() <= 32);
    assert_eq!(engine.rotate_logs(), 0, "an emptied log is under its cap");

    // The task's next life writes into the emptied log; `logs` shows the end of both.
    let pid = engine.state("lg").await.unwrap().pid.unwrap();
    // SAFETY: kill(2) on the task this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let logs = wait_log(&engine, "lg", "listening", 1).await;
    let now = std::fs::read_to_string(&log).unwrap();
    assert!(now.contains("listening"), "{now:?}");
    let kept = std::fs::read_to_string(&older).unwrap();
    assert!(logs.contains(kept.trim_end()), "{logs:?} lacks {kept:?}");
    engine.remove("lg").await.unwrap();
}

/// Characters of the relay's ballast (`RELAY_STATE_BYTES`) in the big-state tests: more than
/// the 128 KiB Linux lets one environment string hold.
const BIG_STATE: usize = 300_000;

/// The environment of a running process, `KEY=value` each.
fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_bigger_than_an_environment_string_reaches_the_task_as_a_file() {
    let root = tempdir();
    let (engine, image) = relay_engine(root.path()).await;
    let big = |name: &str| {
        let mut s = spec(name, name, &image, free_port());
        s.env
            .insert("RELAY_STATE_BYTES".into(), BIG_STATE.to_string());
        s
    };
    let first = big("first");
    engine.start(&first).await.unwrap();
    for _ in 0..3 {
        assert_eq!(ask(first.port, "x").unwrap(), "first");
    }
    let state = ask(first.port, "CHECKPOINT").unwrap();
    assert!(state.len() > BIG_STATE, "{} bytes", state.len());

    // The second relay starts from the first's state: it checks the ballast and counts on.
    let mut second = big("second");
    second.restore = Some(state.clone());
    engine.start(&second).await.unwrap();
    assert_eq!(ask(second.port, "STATE").unwrap(), "3");
    let pid = engine.state("second").await.unwrap().pid.expect("a pid");
    let env = environ(pid);
    let file = root.path().join("engine/tasks/second/restore");
    assert!(
        env.contains(&format!("BRUME_RESTORE_FILE={}", file.display())),
        "{env:?}"
    );
    assert!(
        env.iter().all(|v| v.len() < 4096),
        "no state in the environment"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), state);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A damaged state stops the task at start, saying so, and leaves no task.
    let mut third = big("third");
    third.restore = Some(state[..state.len() - 1].to_string());
    let err = engine.start(&third).await.unwrap_err().to_string();
    assert!(err.contains("BRUME_RESTORE_FILE"), "{err}");
    assert_eq!(
        engine.state("third").await.unwrap().state,
        TaskState::Missing,
        "the failed task is gone"
    );

    // A task that starts without a state sees no file, even where one was left.
    engine.remove("second").await.unwrap();
    assert!(!file.exists(), "removing the task removes its state");
    let fresh = spec("first-again", "first-again", &image, free_port());
    engine.remove("first").await.unwrap();
    engine.start(&fresh).await.unwrap();
    assert_eq!(ask(fresh.port, "STATE").unwrap(), "0");
    let pid = engine
        .state("first-again")
        .await
        .unwrap()
        .pid
        .expect("a pid");
    assert!(
        environ(pid)
            .iter()
            .all(|v| !v.starts_with("BRUME_RESTORE_FILE=")),
        "no state named"
    );
    engine.remove("first-again").await.unwrap();
}
