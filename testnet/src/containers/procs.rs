//! Testnets without Docker (`up --processes`): each node is a `brume node` process in a network
//! namespace this tooling creates (`ip netns add brume-<tag>-<i>`), started detached, with its
//! data directory and control socket under the state directory. The router, the addresses and
//! every command are the same as for containers; only how a node starts, stops and is asked
//! differs. Tasks run on the host's process engine, inside the node's namespace.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::Context;

use super::state::NetState;
use crate::netns;

/// The `brume` program beside this one (target/debug/brume beside target/debug/brume-testnet).
pub fn brume() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let brume = me.with_file_name("brume");
    anyhow::ensure!(
        brume.is_file(),
        "{} is missing: a testnet of processes runs the brume beside brume-testnet \
         (cargo build -p brume)",
        brume.display()
    );
    Ok(brume)
}

/// Node `i`'s control socket on the host (a container node's too: the container mounts that
/// directory at `/run/brume`).
pub fn control(state: &NetState, i: usize) -> PathBuf {
    state.node_dir(i).join("control.sock")
}

/// Creates node `i`'s namespace, where the node may bind its address before the router has
/// made the device that holds it. The router attaches it on its next (re)load, before the node
/// starts: the node's first join then finds a route.
pub fn prepare(state: &NetState, i: usize) -> anyhow::Result<()> {
    let ns = netns::name(&state.tag, i);
    netns::create(&ns)?;
    netns::run_in(&ns, || {
        std::fs::write("/proc/sys/net/ipv4/ip_nonlocal_bind", "1")
            .context("set net.ipv4.ip_nonlocal_bind in the node's namespace")
    })?
}

/// Starts `brume node ARGS` inside node `i`'s namespace ([`prepare`]d), detached; returns its pid.
pub fn start(state: &NetState, i: usize, args: &[String]) -> anyhow::Result<u32> {
    let ns = netns::name(&state.tag, i);
    let dir = state.node_dir(i);
    std::fs::create_dir_all(dir.join("data"))?;
    let log = std::fs::File::create(dir.join("node.log")).context("create node.log")?;
    let nsfile = netns::open(&ns).with_context(|| format!("open namespace {ns}"))?;
    let program = match &state.brume {
        Some(b) => b.clone(),
        None => brume()?,
    };
    let mut cmd = Command::new(program);
    cmd.arg("node")
        .args(args)
        .arg("--control")
        .arg(control(state, i))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: between fork and exec the child only calls setns and setsid (async-signal-safe)
    // on a descriptor the closure owns; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("start brume node")?;
    Ok(child.id())
}

/// Whether process `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Sends `signal` to node process `pid` if it runs.
pub fn signal(pid: u32, signal: i32) {
    if alive(pid) {
        // SAFETY: kill has no memory-safety preconditions; the pid is a node this testnet
        // started (checked alive just before).
        unsafe { libc::kill(pid as i32, signal) };
    }
}
