//! The build contexts as the Docker engine runs them: the static binaries scripts/build-static.sh
//! built (scripts/test.sh runs it first; the test never builds), each Dockerfile built from a
//! temporary copy of its context with the binary beside it, and four trainer containers and an
//! aggregator run with host networking like brume's tasks, each with `PORT=0`: it binds a free
//! port itself and names it in its log, which the test reads. The test checks the rounds finish,
//! that the static release binaries in their images learn exactly what the library computes in
//! this (debug) process (the same final checksum; an accuracy above 85% and within 2 points of
//! the centralised baseline), and that `docker stop` ends the aggregator with status 0: as PID 1 it must handle SIGTERM
//! itself (Docker's SIGKILL after the grace would read 137).
//!
//! Images and containers carry the labels `brume.test=<run>` (what
//! scripts/sweep-test-leftovers.sh removes) and `brume.test.owner=<this test's suffix>`; they and
//! the temporary contexts (`brume-test-fedavg-*` in the temp dir) are removed even on failure. A
//! missing Docker daemon is a skip recorded by `brume_testnet::require` (a failure under
//! `BRUME_REQUIRE=docker`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use brume_fedavg::data::{self, Dataset, DEFAULT_ALPHA};
use brume_fedavg::learn::{self, DEFAULT_SGD};

/// How long the containers may take to listen and to finish the rounds before the test calls
/// them stuck: a liveness bound, never a speed claim.
const DEADLINE: Duration = Duration::from_secs(60);

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn docker(args: &[&str]) -> Output {
    run(Command::new("docker").args(args))
}

/// Everything the test made in Docker and on disk, removed on drop.
struct Cleanup {
    containers: Vec<String>,
    images: Vec<String>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of the static binaries scripts/build-static.sh built; panics with the command
/// to run when they are not there.
fn static_binaries(root: &Path) -> PathBuf {
    let dir = root.join("target/static/x86_64-unknown-linux-gnu/release");
    for bin in ["aggregator", "trainer"] {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: run `bash scripts/build-static.sh` first (scripts/test.sh does)",
            dir.join(bin).display()
        );
    }
    dir
}

/// The port container `name` says it listens on (`listening on 127.0.0.1:PORT` in its log),
/// waited for.
fn listening_port(name: &str) -> u16 {
    let start = Instant::now();
    loop {
        let logs = docker(&["logs", name]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
        let port = text
            .lines()
            .find_map(|l| l.split("listening on 127.0.0.1:").nth(1))
            .and_then(|p| p.trim().parse().ok());
        if let Some(port) = port {
            return port;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{name} did not say where it listens within {DEADLINE:?}; its log:\n{text}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn status(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    writeln!(s, "STATUS").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line.trim_end().to_string())
}

#[test]
fn the_images_run_the_rounds_and_stop_at_once() {
    if !brume_testnet::require::docker("containers::the_images_run_the_rounds_and_stop_at_once") {
        return;
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bins = static_binaries(&here.join("../.."));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let suffix = format!("{}-{nanos}", std::process::id());
    let run_id =
        std::env::var("BRUME_TEST_RUN").unwrap_or_else(|_| format!("pid{}", std::process::id()));
    let labels = [
        format!("brume.test={run_id}"),
        format!("brume.test.owner=fedavg-{suffix}"),
    ];
    let mut cleanup = Cleanup {
        containers: Vec::new(),
        images: Vec::new(),
        dir: std::env::temp_dir().join(format!("brume-test-fedavg-{suffix}")),
    };
    for task in ["aggregator", "trainer"] {
        let ctx = cleanup.dir.join(task);
        std::fs::create_dir_all(&ctx).expect("context dir");
        std::fs::copy(here.join(task).join("Dockerfile"), ctx.join("Dockerfile")).expect("copy");
        std::fs::copy(bins.join(task), ctx.join(task)).expect("copy the binary");
        let tag = format!("brume-fedavg-test-{task}:{suffix}");
        cleanup.images.push(tag.clone());
        // --no-cache: Docker 20.10's legacy builder probes its cache by loading every image on
        // the same parent (FROM scratch: all of them), and a concurrent `docker rmi` of one
        // (another test's cleanup) fails this build with "unable to find image sha256:...".
        docker(&[
            "build",
            "--no-cache",
            "--label",
            &labels[0],
            "--label",
            &labels[1],
            "-q",
            "-t",
            &tag,
            ctx.to_str().expect("utf-8 path"),
        ]);
    }
    let run_container = |name: &str, env: &[String], image: &str| {
        let mut args = vec!["run", "-d", "--network", "host", "--name", name];
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        for e in env {
            args.extend(["-e", e.as_str()]);
        }
        args.push(image);
        docker(&args);
    };
    let mut addrs = Vec::new();
    for replica in 0..4 {
        let name = format!("brume-fedavg-test-trainer-{replica}-{suffix}");
        cleanup.containers.push(name.clone());
        run_container(
            &name,
            &["PORT=0".into(), format!("BRUME_REPLICA={replica}")],
            &cleanup.images[1],
        );
        addrs.push(format!("127.0.0.1:{}", listening_port(&name)));
    }
    let name = format!("brume-fedavg-test-aggregator-{suffix}");
    cleanup.containers.push(name.clone());
    run_container(
        &name,
        &[
            "PORT=0".into(),
            "ROUNDS=5".into(),
            format!("BRUME_CALL_TRAINER={}", addrs.join(",")),
        ],
        &cleanup.images[0],
    );
    let port = listening_port(&name);

    let start = Instant::now();
    let last = loop {
        match status(port) {
            Some(s) if s.contains("done=true") => break s,
            _ => {}
        }
        let logs = docker(&["logs", &name]);
        assert!(
            start.elapsed() < DEADLINE,
            "not done after {DEADLINE:?}:\n{}{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert!(last.starts_with("round=5/5 "), "{last}");
    let logs = String::from_utf8_lossy(&docker(&["logs", &name]).stdout).into_owned();
    let answered = logs
        .lines()
        .filter(|l| l.starts_with("round=") && l.contains("trainers=4/4"));
    assert_eq!(answered.count(), 5, "{logs}");
    let done = logs
        .lines()
        .find(|l| l.starts_with("done round=5/5 "))
        .unwrap_or_else(|| panic!("no done line in {logs}"));
    let get = |k: &str| -> f64 {
        done.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {done}"))
    };
    let (acc, central) = (get("acc"), get("central_acc"));
    assert!(acc > 0.85 && central > 0.9, "{done}");
    assert!(
        acc >= central - 0.02,
        "more than 2 points below centralised: {done}"
    );
    let shares: Vec<Dataset> = (0..4)
        .map(|r| data::for_trainer(0, r, 4, DEFAULT_ALPHA).expect("data"))
        .collect();
    let test = data::cut(0).expect("data").test;
    let (_, model) = learn::federated(&shares, &test, DEFAULT_SGD, 5, 0);
    assert!(
        done.ends_with(&format!("checksum={:016x}", model.checksum())),
        "the containers' model is not the library's: {done}"
    );

    // Exit code 0, not 137: the aggregator ended on SIGTERM before Docker's SIGKILL (the grace
    // is long, so a slow machine is not mistaken for an ignored signal).
    let stopping = Instant::now();
    docker(&["stop", "-t", "60", &name]);
    let took = stopping.elapsed();
    let code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
    eprintln!("docker stop took {took:?}");
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "the aggregator did not end on SIGTERM"
    );
}
