//! Checkpoint of a running Docker container with `runc checkpoint --leave-running` (Docker's own
//! `docker checkpoint` needs the daemon in experimental mode, which these machines do not run),
//! and restore of the images into a NEW container run by runc from a copy of the bundle.
//!
//! Needs root, CRIU >= 4, runc, Docker 20.10 with its runc state in
//! /run/docker/runtime-runc/moby and containerd's bundles in
//! /run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby (as on these machines and
//! CI); without them it skips, or fails under `BRUME_REQUIRE` (`brume_testnet::require`).
//!
//! Data flow: a `FROM scratch` image of the static workload (criu_support.rs) runs as a Docker
//! container; the test talks to its Unix socket through `/proc/<pid>/root`; runc checkpoints it
//! into a temp dir; the container's bundle config is copied with a new rootfs (a copy of the
//! container's), a new cgroup, no Docker network hooks, and a CRIU config file that turns on
//! `mntns-compat-mode` (CRIU 4.1.1's mount-v2 engine fails on this restore with `Failed to copy
//! sharing`); `runc restore --detach` starts it as a new container; its counter continues from
//! the checkpoint. Everything is removed on drop, a panic too: the Docker container and image
//! (named `brume-test-criu-...`, labelled `brume.test=<run>`), the restored runc container
//! (under a runc root inside the test's temp dir), its cgroup `/brume-test-criu-...`.

mod criu_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use brume_testnet::require::{self, Need};
use criu_support::{
    ask, build_workload_image, docker_label, have_criu_runc_docker, remove_cgroup,
    remove_runc_container, run, run_ok, unique, wait_ready, TempDir, PREFIX,
};

const DOCKER_RUNC_ROOT: &str = "/run/docker/runtime-runc/moby";
const DOCKER_BUNDLES: &str = "/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby";

/// Removes the restored runc container, the Docker container and image, and the cgroup.
struct Cleanup {
    container: String,
    image: String,
    runc_root: PathBuf,
    restored: String,
    cgroup: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_runc_container(&self.runc_root, &self.restored);
        let _ = run("docker", &["rm", "-f", &self.container]);
        let _ = run("docker", &["rmi", "-f", &self.image]);
        remove_cgroup(&self.cgroup);
    }
}

/// Removes the JSON member `"<key>": {...}` (and a following comma) from `json`.
fn remove_object_member(json: &str, key: &str) -> String {
    let needle = format!("\"{key}\":");
    let Some(start) = json.find(&needle) else {
        return json.to_string();
    };
    let bytes = json.as_bytes();
    let mut i = start + needle.len();
    while bytes[i] != b'{' {
        i += 1;
    }
    let (mut depth, mut in_string, mut escaped) = (0, false, false);
    loop {
        let b = bytes[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    let mut end = i + 1;
    while end < bytes.len() && (bytes[end] as char).is_whitespace() {
        end += 1;
    }
    if end < bytes.len() && bytes[end] == b',' {
        end += 1;
    }
    format!("{}{}", &json[..start], &json[end..])
}

/// Copies a container's root filesystem (directories and regular files; sockets are recreated
/// by CRIU).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read rootfs") {
        let entry = entry.expect("entry");
        let kind = entry.file_type().expect("file type");
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

fn json_string_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = json[start..].trim_start().strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

#[test]
fn runc_checkpoint_of_a_docker_container_restores_into_a_new_container() {
    let test = "runc_checkpoint_of_a_docker_container_restores_into_a_new_container";
    if !have_criu_runc_docker(test) {
        return;
    }
    let dir = TempDir::new("criu-runc");
    let suffix = unique();
    let cleanup = Cleanup {
        container: format!("{PREFIX}-criu-{suffix}"),
        image: format!("{PREFIX}-criu-workload:{suffix}"),
        runc_root: dir.path().join("runc-root"),
        restored: format!("{PREFIX}-criu-restored-{suffix}"),
        cgroup: format!("/{PREFIX}-criu-{suffix}"),
    };

    // A FROM scratch image of the static workload, with bytes of its own so no layer is shared.
    build_workload_image(&dir.path().join("context"), &cleanup.image, &suffix, 8, 77);
    let id = run_ok(
        "docker",
        &[
            "run",
            "-d",
            "--label",
            &docker_label(),
            "--name",
            &cleanup.container,
            &cleanup.image,
        ],
    );
    // Docker creates its runc state dir with its first container since it started.
    if !Path::new(DOCKER_RUNC_ROOT).join(&id).is_dir() {
        require::missing(
            test,
            Need::Docker,
            &format!("Docker's runc state {DOCKER_RUNC_ROOT}/<id> is missing (not Docker 20.10's layout?)"),
        );
        return;
    }
    let pid = run_ok("docker", &["inspect", "-f", "{{.State.Pid}}", &id]);
    let socket = PathBuf::from(format!("/proc/{pid}/root/w.sock"));
    wait_ready(&socket);
    assert_eq!(ask(&socket, "TICK"), "1");
    assert_eq!(ask(&socket, "TICK"), "2");
    let sum = ask(&socket, "SUM");

    // Checkpoint with runc, the container running on.
    let images = dir.path().join("images");
    let started = Instant::now();
    let out = run(
        "runc",
        &[
            "--root",
            DOCKER_RUNC_ROOT,
            "checkpoint",
            "--image-path",
            &images.display().to_string(),
            "--work-path",
            &dir.path().join("dump-work").display().to_string(),
            "--leave-running",
            &id,
        ],
    );
    let checkpoint_time = started.elapsed();
    assert!(
        out.status.success(),
        "runc checkpoint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ask(&socket, "TICK"),
        "3",
        "the original container runs on after --leave-running"
    );

    // A new bundle: the container's config with a copied rootfs, its own cgroup, no Docker hooks,
    // and CRIU's mount compat mode.
    let config = std::fs::read_to_string(Path::new(DOCKER_BUNDLES).join(&id).join("config.json"))
        .expect("bundle config");
    let rootfs_src = json_string_field(&config, "path").expect("root.path in config");
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    copy_tree(Path::new(&rootfs_src), &rootfs);
    let criu_conf = dir.path().join("criu.conf");
    std::fs::write(&criu_conf, "mntns-compat-mode\n").expect("criu conf");
    let mut new_config = remove_object_member(&config, "hooks")
        .replacen(
            &format!("\"{rootfs_src}\""),
            &format!("\"{}\"", rootfs.display()),
            1,
        )
        .replacen(
            &format!("\"/docker/{id}\""),
            &format!("\"{}\"", cleanup.cgroup),
            1,
        );
    new_config = remove_object_member(&new_config, "annotations");
    new_config = new_config.replacen(
        '{',
        &format!(
            "{{\"annotations\":{{\"org.criu.config\":\"{}\"}},",
            criu_conf.display()
        ),
        1,
    );
    std::fs::write(bundle.join("config.json"), new_config).expect("write config");

    let runc_root = cleanup.runc_root.display().to_string();
    let started = Instant::now();
    // runc's stdio becomes the restored container's: /dev/null and a file, as a pipe would stay
    // open (and `output()` wait for it) as long as the restored container runs.
    let restore_stderr = dir.path().join("runc-restore.stderr");
    let status = Command::new("runc")
        .args(["--root", &runc_root, "restore", "--image-path"])
        .arg(&images)
        .arg("--work-path")
        .arg(dir.path().join("restore-work"))
        .arg("--bundle")
        .arg(&bundle)
        .args(["--detach", &cleanup.restored])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&restore_stderr).expect("stderr file"))
        .status()
        .expect("run runc restore");
    let restore_time = started.elapsed();
    assert!(
        status.success(),
        "runc restore: {}\n{}",
        std::fs::read_to_string(&restore_stderr).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("restore-work/restore.log")).unwrap_or_default()
    );
    let state = run_ok("runc", &["--root", &runc_root, "state", &cleanup.restored]);
    let new_pid: u32 = state
        .split("\"pid\":")
        .nth(1)
        .and_then(|s| s.trim_start().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in runc state: {state}"));
    assert_ne!(
        new_pid.to_string(),
        pid,
        "the restored container is a new process"
    );
    let new_socket = PathBuf::from(format!("/proc/{new_pid}/root/w.sock"));
    wait_ready(&new_socket);
    assert_eq!(
        ask(&new_socket, "PID"),
        "1",
        "PID 1 in its own pid namespace, as in the container"
    );
    assert_eq!(
        ask(&new_socket, "TICK"),
        "3",
        "the restored counter continues from the checkpoint (2)"
    );
    assert_eq!(
        ask(&new_socket, "SUM"),
        sum,
        "memory is the checkpointed memory"
    );
    assert_eq!(
        ask(&socket, "TICK"),
        "4",
        "the original container is untouched"
    );
    eprintln!(
        "runc: checkpoint --leave-running {} ms, restore into a new container {} ms",
        checkpoint_time.as_millis(),
        restore_time.as_millis()
    );
}
