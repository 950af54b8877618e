//! The Docker engine against the real Docker daemon: the relay image is built from a temporary
//! `FROM scratch` context, two relay containers find each other through `BRUME_CALL_B` on the
//! host network, logs are read, stop and remove leave nothing; a `docker save` tar loads; bad
//! input (no Dockerfile, a failing build, a taken port, a task that exits at once, a name in
//! use, an image never prepared, a container brume did not create) fails with a clear message
//! and leaves no container; the restart policy brings a killed task back. Tasks run contained:
//! without NET_RAW, with no-new-privileges and a pids limit, as an unprivileged user (read
//! back from the daemon and from /proc); a `docker save` tarball whose manifest names another
//! image's tag loads without moving that tag. A state too big for the environment reaches a
//! container as the file `BRUME_RESTORE_FILE` names.
//!
//! Every test names its containers `brume-t-*-<unique suffix>`, builds its images from contexts
//! labelled `brume.test=<run>` and `brume.test.owner=<its own owner>` (containers inherit the
//! labels), gives its tasks ports leased to the test process (`common::free_port`), and removes
//! what it made in a Drop guard (by name and by owner label), so the tests run in parallel and
//! clean up after a failure. A missing Docker daemon is a skip recorded by
//! `brume_testnet::require` (a failure under `BRUME_REQUIRE=docker`).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use brume_engine::{
    DockerEngine, Engine, EngineError, ImageInput, ImageKind, ImageRef, LaunchSpec, RestartPolicy,
    TaskState,
};
use common::{ask, free_port, pack_context, relay_context, tempdir, unique_suffix, Cleanup};

/// The engine, or `None` (the skip recorded) when no Docker daemon answers.
async fn engine(test: &str) -> Option<DockerEngine> {
    if !common::need_docker(&format!("engine_docker::{test}")) {
        return None;
    }
    Some(DockerEngine::connect().await.expect("Docker answers"))
}

/// How long Docker may take to do what it was told (restart a task) before the test calls it
/// stuck: a liveness bound, never a speed claim.
const LIVENESS: Duration = Duration::from_secs(60);

/// The relay context, labelled for `owner`, with unique bytes appended to the binary (ELF
/// ignores them), so this test's image shares no layer with any other image: its build is cold.
fn relay_input(out: &std::path::Path, owner: &str) -> ImageInput {
    use std::io::Write;
    let ctx = relay_context(owner);
    let mut bin = std::fs::OpenOptions::new()
        .append(true)
        .open(ctx.path().join("brume-relay"))
        .unwrap();
    bin.write_all(unique_suffix().as_bytes()).unwrap();
    drop(bin);
    pack_context(ctx.path(), out)
}

fn spec(name: &str, task: &str, image: &ImageRef, port: u16) -> LaunchSpec {
    LaunchSpec {
        name: name.to_string(),
        service: "enginetest".into(),
        task: task.into(),
        replica: 0,
        epoch: 1,
        image: image.clone(),
        env: BTreeMap::new(),
        port,
        cpu_millis: 500,
        memory_mb: 64,
        restart: RestartPolicy::Never,
        workdir: None,
        user: None,
        restore: None,
    }
}

fn image_id(image: &str) -> String {
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", image])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Copies a `docker save` tarball, its manifest's `RepoTags` set to `[tag]`.
fn retag_save(src: &std::path::Path, dst: &std::path::Path, tag: &str) {
    let mut archive = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut out = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let mut header = entry.header().clone();
        if path == std::path::Path::new("manifest.json") {
            let mut images: Vec<serde_json::Value> = serde_json::from_reader(&mut entry).unwrap();
            images[0]["RepoTags"] = serde_json::json!([tag]);
            let bytes = serde_json::to_vec(&images).unwrap();
            header.set_size(bytes.len() as u64);
            header.set_cksum();
            out.append(&header, bytes.as_slice()).unwrap();
        } else if path == std::path::Path::new("repositories") {
            continue;
        } else {
            out.append(&header, entry).unwrap();
        }
    }
    out.finish().unwrap();
}

fn container_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["container", "inspect", name])
        .output()
        .unwrap()
        .status
        .success()
}

async fn our_names(engine: &DockerEngine, suffix: &str) -> Vec<String> {
    engine
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .filter(|n| n.ends_with(suffix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_call_each_other_and_leave_nothing_behind() {
    let Some(engine) = engine("two_relays_call_each_other_and_leave_nothing_behind").await else {
        return;
    };
    let out = tempdir();
    let suffix = unique_suffix();
    let mut cleanup = Cleanup::owned(&format!("engine-docker-{suffix}"));
    let input = relay_input(out.path(), cleanup.owner.as_deref().unwrap());
    let image = input.image_ref().unwrap();
    cleanup.images.push(image.0.clone());

    let t = Instant::now();
    let prepared = engine.prepare(&input).await.unwrap();
    let cold_prepare = t.elapsed();
    assert_eq!(prepared, image);
    let id = image_id(image.as_str());
    assert!(id.starts_with("sha256:"), "the image is there: {id}");
    // A re-deploy of the same artifact finds the image: nothing is built again.
    let t = Instant::now();
    assert_eq!(engine.prepare(&input).await.unwrap(), image);
    let warm_prepare = t.elapsed();
    assert_eq!(image_id(image.as_str()), id);

    let (pa, pb) = (free_port(), free_port());
    let (a, b) = (format!("brume-t-a-{suffix}"), format!("brume-t-b-{suffix}"));
    cleanup.containers.extend([a.clone(), b.clone()]);
    let t = Instant::now();
    engine.start(&spec(&b, "b", &image, pb)).await.unwrap();
    let start_b = t.elapsed();
    let mut sa = spec(&a, "a", &image, pa);
    sa.env
        .insert("BRUME_CALL_B".into(), format!("127.0.0.1:{pb}"));
    sa.env
        .insert("BRUME_CALL_B_0".into(), format!("127.0.0.1:{pb}"));
    engine.start(&sa).await.unwrap();
    eprintln!(
        "docker engine: cold prepare (build) {cold_prepare:?}, prepare of a present image \
         {warm_prepare:?}, start (create+start+accepting) {start_b:?}"
    );

    assert_eq!(ask(pa, "hello").unwrap(), "a(b)");
    assert_eq!(ask(pb, "hello").unwrap(), "b");
    assert_eq!(ask(pa, "STATE").unwrap(), "1");

    let st = engine.state(&a).await.unwrap();
    assert_eq!(st.state, TaskState::Running);
    assert!(st.pid.is_some());
    let logs = engine.logs(&a, 10).await.unwrap();
    assert!(
        logs.contains(&format!("brume-relay a listening on 127.0.0.1:{pa}")),
        "{logs}"
    );
    assert!(logs.contains(&format!("B=127.0.0.1:{pb}")), "{logs}");

    let listed = engine.list().await.unwrap();
    let la = listed.iter().find(|t| t.name == a).expect("a is listed");
    assert_eq!(
        (la.service.as_str(), la.task.as_str(), la.epoch, la.port),
        ("enginetest", "a", 1, pa)
    );
    assert_eq!(la.state, TaskState::Running);

    // The limits reached Docker.
    let out = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.HostConfig.NetworkMode}} {{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}",
            &a,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("host 500000000 {}", 64 << 20)
    );

    // The containment reached Docker (read back through its API).
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let info = docker.inspect_container(&a, None).await.unwrap();
    let host = info.host_config.unwrap();
    assert_eq!(host.cap_drop, Some(vec!["NET_RAW".to_string()]));
    assert_eq!(
        host.security_opt,
        Some(vec![brume_engine::NO_NEW_PRIVILEGES.to_string()])
    );
    assert_eq!(host.pids_limit, Some(brume_engine::PIDS_LIMIT));
    // Its log is capped like a process task's (Docker's json-file driver rolls it over).
    let logs = host.log_config.expect("a log config");
    assert_eq!(logs.typ.as_deref(), Some("json-file"));
    let opts = logs.config.expect("log options");
    assert_eq!(
        opts.get("max-size").map(String::as_str),
        Some(
            brume_engine::logcap::DEFAULT_LOG_MAX_BYTES
                .to_string()
                .as_str()
        )
    );
    assert_eq!(opts.get("max-file").map(String::as_str), Some("2"));
    assert_eq!(
        info.config.unwrap().user.as_deref(),
        Some(brume_engine::DEFAULT_USER)
    );
    // The task's process runs as that user, not as root.
    let pid = info.state.unwrap().pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some("65534"),
        "{uid_line}"
    );

    // SIGTERM ends the relay with status 0 (Docker's SIGKILL after the grace would read 137:
    // the exit code, not the time taken, shows the relay handled SIGTERM).
    engine.stop(&a, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        engine.state(&a).await.unwrap().state,
        TaskState::Exited { code: 0 }
    );
    engine.remove(&a).await.unwrap();
    engine.remove(&b).await.unwrap();
    assert!(our_names(&engine, &suffix).await.is_empty());
    assert_eq!(engine.state(&a).await.unwrap().state, TaskState::Missing);
    // Removing what is gone is fine.
    engine.remove(&a).await.unwrap();
    assert!(matches!(
        engine.logs(&a, 5).await,
        Err(EngineError::NotFound { .. })
    ));
    assert!(!container_exists(&a) && !container_exists(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_save_tarball_loads_under_its_digest_name() {
    let Some(engine) = engine("a_docker_save_tarball_loads_under_its_digest_name").await else {
        return;
    };
    let out = tempdir();
    let mut cleanup = Cleanup::owned(&format!("engine-docker-{}", unique_suffix()));
    let input = relay_input(out.path(), cleanup.owner.as_deref().unwrap());
    let built = engine.prepare(&input).await.unwrap();
    cleanup.images.push(built.0.clone());
    let saved = out.path().join("relay-save.tar");
    let status = Command::new("docker")
        .args(["save", "-o", saved.to_str().unwrap(), built.as_str()])
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&saved).unwrap();
    let digest = blake3::hash(&[&bytes[..], unique_suffix().as_bytes()].concat())
        .to_hex()
        .to_string();
    let load = ImageInput {
        kind: ImageKind::DockerSave,
        tar: saved,
        digest,
    };
    let loaded = engine.prepare(&load).await.unwrap();
    cleanup.images.push(loaded.0.clone());
    assert_ne!(loaded, built);
    assert_eq!(image_id(loaded.as_str()), image_id(built.as_str()));

    let name = format!("brume-t-load-{}", unique_suffix());
    cleanup.containers.push(name.clone());
    let port = free_port();
    engine
        .start(&spec(&name, "loaded", &loaded, port))
        .await
        .unwrap();
    assert_eq!(ask(port, "x").unwrap(), "loaded");
    engine.remove(&name).await.unwrap();

    // A tarball whose manifest names another image's tag cannot take that tag: the loaded image
    // is known by id and brume's digest name only.
    let victim = relay_input(out.path(), cleanup.owner.as_deref().unwrap());
    let victim_ref = engine.prepare(&victim).await.unwrap();
    cleanup.images.push(victim_ref.0.clone());
    let victim_id = image_id(victim_ref.as_str());
    assert_ne!(victim_id, image_id(built.as_str()));
    let forged = out.path().join("forged-save.tar");
    retag_save(
        &out.path().join("relay-save.tar"),
        &forged,
        victim_ref.as_str(),
    );
    let forged_load = ImageInput {
        kind: ImageKind::DockerSave,
        tar: forged,
        digest: blake3::hash(unique_suffix().as_bytes())
            .to_hex()
            .to_string(),
    };
    let forged_ref = engine.prepare(&forged_load).await.unwrap();
    cleanup.images.push(forged_ref.0.clone());
    assert_eq!(image_id(forged_ref.as_str()), image_id(built.as_str()));
    assert_eq!(
        image_id(victim_ref.as_str()),
        victim_id,
        "the forged tarball retagged another image"
    );

    // Not a docker save tarball.
    let bogus = ImageInput {
        kind: ImageKind::DockerSave,
        tar: input.tar.clone(),
        digest: "feedfacefeedface00".into(),
    };
    let err = engine.prepare(&bogus).await.unwrap_err();
    assert!(
        err.to_string().contains("no manifest.json") && err.to_string().contains("docker save"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_clearly_and_leaves_no_container() {
    let Some(engine) = engine("bad_input_fails_clearly_and_leaves_no_container").await else {
        return;
    };
    let out = tempdir();
    let suffix = unique_suffix();
    let owner = format!("engine-docker-{suffix}");
    let mut cleanup = Cleanup::owned(&owner);

    // A context without a Dockerfile.
    let relay = common::relay_binary();
    let ctx = common::context_dir(None, &[("brume-relay", &relay)]);
    std::fs::write(ctx.path().join("nonce"), &suffix).unwrap();
    let input = pack_context(ctx.path(), out.path());
    cleanup.images.push(input.image_ref().unwrap().0);
    let err = engine.prepare(&input).await.unwrap_err();
    assert!(
        matches!(err, EngineError::MissingDockerfile { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("has no Dockerfile"), "{err}");

    // A Dockerfile that fails to build: the daemon's reason comes back.
    let failing_dockerfile = format!(
        "FROM scratch\nCOPY missing-file /missing-file\n{}",
        common::docker_labels(&owner)
    );
    let ctx = common::context_dir(Some(&failing_dockerfile), &[("brume-relay", &relay)]);
    std::fs::write(ctx.path().join("nonce"), &suffix).unwrap();
    let input = pack_context(ctx.path(), out.path());
    let failing = input.image_ref().unwrap();
    cleanup.images.push(failing.0.clone());
    let err = engine.prepare(&input).await.unwrap_err();
    match &err {
        EngineError::BuildFailed { message, .. } => {
            assert!(message.contains("missing-file"), "{message}")
        }
        other => panic!("expected BuildFailed, got {other}"),
    }
    assert!(!engine.image_exists(failing.as_str()).await.unwrap());

    let input = relay_input(out.path(), &owner);
    let image = engine.prepare(&input).await.unwrap();
    cleanup.images.push(image.0.clone());

    // An image never prepared.
    let ghost = ImageRef::from_digest("0000000000000000ffff").unwrap();
    let name = format!("brume-t-ghost-{suffix}");
    cleanup.containers.push(name.clone());
    let err = engine
        .start(&spec(&name, "g", &ghost, free_port()))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::ImageMissing { .. }), "{err}");

    // A port something else listens on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let name = format!("brume-t-port-{suffix}");
    cleanup.containers.push(name.clone());
    let err = engine
        .start(&spec(&name, "p", &image, port))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("port {port} is in use on this host")),
        "{err}"
    );
    assert!(!container_exists(&name));
    drop(taken);

    // A task that exits at once (it cannot listen on HOST): start fails with its last words.
    let name = format!("brume-t-exit-{suffix}");
    cleanup.containers.push(name.clone());
    let mut s = spec(&name, "x", &image, free_port());
    s.env.insert("HOST".into(), "256.0.0.1".into());
    s.restart = RestartPolicy::OnFailure { max_restarts: 3 };
    let err = engine.start(&s).await.unwrap_err();
    match &err {
        EngineError::StartFailed {
            reason, last_logs, ..
        } => {
            assert!(reason.contains("exited with code"), "{reason}");
            assert!(
                last_logs.contains("cannot listen on 256.0.0.1"),
                "{last_logs}"
            );
        }
        other => panic!("expected StartFailed, got {other}"),
    }
    assert!(!container_exists(&name), "the failed container was removed");

    // A name already taken: refused, and the running task is untouched.
    let name = format!("brume-t-dup-{suffix}");
    cleanup.containers.push(name.clone());
    let port = free_port();
    engine.start(&spec(&name, "d", &image, port)).await.unwrap();
    let err = engine
        .start(&spec(&name, "d", &image, free_port()))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::AlreadyExists { .. }), "{err}");
    assert_eq!(ask(port, "still").unwrap(), "d");
    engine.remove(&name).await.unwrap();

    // A container brume did not create is left alone.
    let foreign = format!("not-brume-{suffix}");
    cleanup.containers.push(foreign.clone());
    let created = Command::new("docker")
        .args(["create", "--name", &foreign, image.as_str()])
        .output()
        .unwrap();
    assert!(created.status.success());
    for err in [
        engine.remove(&foreign).await.unwrap_err(),
        engine.stop(&foreign, Duration::ZERO).await.unwrap_err(),
    ] {
        assert!(matches!(err, EngineError::NotOurs { .. }), "{err}");
    }
    assert!(container_exists(&foreign));
    let listed = engine.list().await.unwrap();
    assert!(
        !listed.iter().any(|t| t.name == foreign),
        "list() shows only brume's"
    );

    assert!(our_names(&engine, &suffix).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_task_is_restarted_on_failure_and_not_under_never() {
    let Some(engine) = engine("a_killed_task_is_restarted_on_failure_and_not_under_never").await
    else {
        return;
    };
    let out = tempdir();
    let suffix = unique_suffix();
    let mut cleanup = Cleanup::owned(&format!("engine-docker-{suffix}"));
    let input = relay_input(out.path(), cleanup.owner.as_deref().unwrap());
    let image = engine.prepare(&input).await.unwrap();
    cleanup.images.push(image.0.clone());

    let (r, n) = (
        format!("brume-t-restart-{suffix}"),
        format!("brume-t-never-{suffix}"),
    );
    cleanup.containers.extend([r.clone(), n.clone()]);
    let (pr, pn) = (free_port(), free_port());
    let mut sr = spec(&r, "r", &image, pr);
    sr.restart = RestartPolicy::OnFailure { max_restarts: 3 };
    engine.start(&sr).await.unwrap();
    engine.start(&spec(&n, "n", &image, pn)).await.unwrap();

    for name in [&r, &n] {
        let pid = engine.state(name).await.unwrap().pid.expect("a pid");
        // SAFETY: kill(2) on the container's main process, which this test started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    }
    let deadline = Instant::now() + LIVENESS;
    loop {
        let st = engine.state(&r).await.unwrap();
        if st.restarts >= 1 && st.state == TaskState::Running {
            if let Ok(reply) = ask(pr, "back") {
                assert_eq!(reply, "r");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not restarted within {LIVENESS:?}: {st:?}; its log: {:?}",
            engine.logs(&r, 20).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // n (restart: never) stays down once Docker has seen the kill.
    let deadline = Instant::now() + LIVENESS;
    let st = loop {
        let st = engine.state(&n).await.unwrap();
        if st.state != TaskState::Running {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "n still runs {LIVENESS:?} after its kill: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(st.state, TaskState::Exited { code: 137 });
    assert_eq!(st.restarts, 0);
    engine.remove(&r).await.unwrap();
    engine.remove(&n).await.unwrap();
    assert!(our_names(&engine, &suffix).await.is_empty());
}

/// Characters of the relay's ballast (`RELAY_STATE_BYTES`): more than the 128 KiB Linux lets
/// one environment string hold.
const BIG_STATE: usize = 300_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_bigger_than_an_environment_string_reaches_the_container_as_a_file() {
    let test = "a_state_bigger_than_an_environment_string_reaches_the_container_as_a_file";
    let Some(engine) = engine(test).await else {
        return;
    };
    let out = tempdir();
    let suffix = unique_suffix();
    let mut cleanup = Cleanup::owned(&format!("engine-docker-state-{suffix}"));
    let input = relay_input(out.path(), cleanup.owner.as_deref().unwrap());
    let image = engine.prepare(&input).await.unwrap();
    cleanup.images.push(image.0.clone());
    let big = |name: &str| {
        let mut s = spec(name, "big", &image, free_port());
        s.env
            .insert("RELAY_STATE_BYTES".into(), BIG_STATE.to_string());
        s
    };
    let names: Vec<String> = ["first", "second", "third"]
        .iter()
        .map(|n| format!("brume-t-{n}-{suffix}"))
        .collect();
    cleanup.containers.extend(names.iter().cloned());

    let first = big(&names[0]);
    engine.start(&first).await.unwrap();
    for _ in 0..3 {
        assert_eq!(ask(first.port, "x").unwrap(), "big");
    }
    let state = ask(first.port, "CHECKPOINT").unwrap();
    assert!(state.len() > BIG_STATE, "{} bytes", state.len());

    // The second container starts from the first's state, as the unprivileged default user: it
    // checks the ballast and counts on.
    let mut second = big(&names[1]);
    second.restore = Some(state.clone());
    engine.start(&second).await.unwrap();
    assert_eq!(ask(second.port, "STATE").unwrap(), "3");
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let config = docker
        .inspect_container(&names[1], None)
        .await
        .unwrap()
        .config
        .unwrap();
    let env = config.env.unwrap_or_default();
    assert!(
        env.contains(&"BRUME_RESTORE_FILE=/.brume/restore".to_string()),
        "{env:?}"
    );
    assert!(
        env.iter().all(|v| v.len() < 4096),
        "no state in the environment"
    );
    assert_eq!(config.user.as_deref(), Some(brume_engine::DEFAULT_USER));

    // A damaged state stops the task at start, saying so, and leaves no container.
    let mut third = big(&names[2]);
    third.restore = Some(state[..state.len() - 1].to_string());
    let err = engine.start(&third).await.unwrap_err().to_string();
    assert!(err.contains("BRUME_RESTORE_FILE"), "{err}");
    assert!(!container_exists(&names[2]), "the failed container is gone");

    for name in &names[..2] {
        engine.remove(name).await.unwrap();
    }
    assert!(our_names(&engine, &suffix).await.is_empty());
}
