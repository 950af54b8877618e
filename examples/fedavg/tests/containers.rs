//! The build contexts as the Docker engine runs them: the crate is built static (crt-static, as
//! scripts/build-static.sh does, into target/static), each Dockerfile is built from a temporary
//! copy of its context with the binary beside it, and four trainer containers and an aggregator
//! run with host networking like brume's tasks. The test checks the rounds finish and that
//! `docker stop` ends the aggregator at once with status 0: as PID 1 it must handle SIGTERM
//! itself. Images, containers and the temporary contexts are removed even on failure.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 0");
    l.local_addr().expect("addr").port()
}

/// Builds both binaries the way scripts/build-static.sh does and returns their directory.
fn static_binaries(root: &Path) -> PathBuf {
    let target = root.join("target/static");
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", &target)
            .args([
                "build",
                "--release",
                "--target",
                "x86_64-unknown-linux-gnu",
                "-p",
                "brume-fedavg",
            ]),
    );
    target.join("x86_64-unknown-linux-gnu/release")
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
    if Command::new("docker")
        .arg("info")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        eprintln!("!!! SKIPPED: the Docker engine is unreachable, the images were not tested !!!");
        return;
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bins = static_binaries(&here.join("../.."));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let suffix = format!("{}-{nanos}", std::process::id());
    let mut cleanup = Cleanup {
        containers: Vec::new(),
        images: Vec::new(),
        dir: std::env::temp_dir().join(format!("brume-fedavg-images-{suffix}")),
    };
    for task in ["aggregator", "trainer"] {
        let ctx = cleanup.dir.join(task);
        std::fs::create_dir_all(&ctx).expect("context dir");
        std::fs::copy(here.join(task).join("Dockerfile"), ctx.join("Dockerfile")).expect("copy");
        std::fs::copy(bins.join(task), ctx.join(task)).expect("copy the binary");
        let tag = format!("brume-fedavg-test-{task}:{suffix}");
        cleanup.images.push(tag.clone());
        docker(&["build", "-q", "-t", &tag, ctx.to_str().expect("utf-8 path")]);
    }
    let mut addrs = Vec::new();
    for replica in 0..4 {
        let port = free_port();
        addrs.push(format!("127.0.0.1:{port}"));
        let name = format!("brume-fedavg-test-trainer-{replica}-{suffix}");
        cleanup.containers.push(name.clone());
        docker(&[
            "run",
            "-d",
            "--network",
            "host",
            "--name",
            &name,
            "-e",
            &format!("PORT={port}"),
            "-e",
            &format!("BRUME_REPLICA={replica}"),
            &cleanup.images[1],
        ]);
    }
    let port = free_port();
    let name = format!("brume-fedavg-test-aggregator-{suffix}");
    cleanup.containers.push(name.clone());
    docker(&[
        "run",
        "-d",
        "--network",
        "host",
        "--name",
        &name,
        "-e",
        &format!("PORT={port}"),
        "-e",
        "ROUNDS=5",
        "-e",
        &format!("BRUME_CALL_TRAINER={}", addrs.join(",")),
        &cleanup.images[0],
    ]);

    let start = Instant::now();
    let last = loop {
        match status(port) {
            Some(s) if s.contains("done=true") => break s,
            _ => {}
        }
        let logs = docker(&["logs", &name]);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not done after 60 s:\n{}{}",
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

    let stopping = Instant::now();
    docker(&["stop", "-t", "10", &name]);
    let took = stopping.elapsed();
    let code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
    assert_eq!(String::from_utf8_lossy(&code.stdout).trim(), "0");
    eprintln!("docker stop took {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM was ignored: stop took {took:?}"
    );
}
