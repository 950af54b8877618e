//! The testnet's router as a process of its own (`brume-testnet router --name NET`), so that it
//! outlives the `up` command: it attaches every node container's network namespace
//! (`ip netns attach brume-<tag>-<i> <pid>`), creates the `brume0` TUN device in it with the
//! node's address, and routes among the devices with the RTTs of the state file, like a
//! [`Testbed`](crate::Testbed) does for bare namespaces.
//!
//! Control channel: a unix socket in the state directory taking one line per connection and
//! answering one line (`ok` or `error: ...`): `ping`; `reload` (read the state file again:
//! attach the namespaces of nodes added since, and route with its current partition); `stop`
//! (detach everything and exit). The commands that change a testnet (`partition`, `heal`,
//! `join`) write the state file, then send `reload`: the file is the one truth, the socket only
//! says when to read it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::state::NetState;
use crate::netns;
use crate::router::{Router, RouterConfig};
use crate::testbed::IFNAME;
use crate::tun::Tun;

/// The `brume-testnet` program that serves `router`: this one, or the one installed beside it
/// (a bench that starts a testnet through this library runs as another program).
fn router_program() -> anyhow::Result<std::path::PathBuf> {
    let me = std::env::current_exe().context("cannot find this program's path")?;
    if me.file_stem().is_some_and(|s| s == "brume-testnet") {
        return Ok(me);
    }
    let beside = me.with_file_name("brume-testnet");
    anyhow::ensure!(
        beside.is_file(),
        "no brume-testnet program beside {} to run the testnet's router (build it: cargo \
         build --release -p brume-testnet)",
        me.display()
    );
    Ok(beside)
}

/// Starts the router process for testnet `state` (detached: its own session, output to
/// `router.log` in the state directory) and waits until it answers (all devices up).
pub fn spawn(state: &NetState) -> anyhow::Result<u32> {
    let exe = router_program()?;
    let log = std::fs::File::create(state.dir().join("router.log")).context("create router.log")?;
    let mut cmd = Command::new(exe);
    cmd.args(["router", "--name", &state.name])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the child leaves our session so that a Ctrl-C of
    // `up`'s terminal does not reach the router that must outlive it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start the router process")?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(answer) = ask(state, "ping") {
            if answer == "ok" {
                return Ok(pid);
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(state.dir().join("router.log")).unwrap_or_default();
            bail!("the router process exited ({status}): {}", log.trim());
        }
        if Instant::now() > deadline {
            bail!("the router process did not answer within 60 s (see its router.log)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one command to testnet `state`'s router and returns its answer line; an `error: ...`
/// answer is an error.
pub fn ask(state: &NetState, command: &str) -> anyhow::Result<String> {
    let mut stream = UnixStream::connect(state.socket())
        .with_context(|| format!("the router of testnet `{}` does not answer", state.name))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    writeln!(stream, "{command}")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let line = line.trim().to_string();
    match line.strip_prefix("error: ") {
        Some(why) => bail!("the router refused `{command}`: {why}"),
        None => Ok(line),
    }
}

/// The router process's main: routes until told to stop.
pub fn serve(name: &str) -> anyhow::Result<()> {
    let mut state = NetState::load(name)?;
    // The owner marker now names this process, so `brume-testnet cleanup` keeps the attached
    // namespaces while it routes for them and removes them once it is gone.
    std::fs::write(
        netns::owner_file(&state.tag),
        std::process::id().to_string(),
    )
    .context("write the owner marker")?;
    let _ = std::fs::remove_file(state.socket());
    let listener = UnixListener::bind(state.socket()).context("bind the control socket")?;
    let mut devices = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        let (mut router, attached) = reload(&state, None, &mut devices);
        attached?;
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut line = String::new();
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            if BufReader::new(&conn).read_line(&mut line).is_err() {
                continue;
            }
            let answer = match line.trim() {
                "ping" => Ok(()),
                "stop" => {
                    let _ = writeln!(conn, "ok");
                    router.stop();
                    return Ok(());
                }
                "reload" => match NetState::load(name) {
                    Ok(s) => {
                        state = s;
                        let attached;
                        (router, attached) = reload(&state, Some(router), &mut devices);
                        attached
                    }
                    Err(e) => Err(e),
                },
                other => Err(anyhow::anyhow!("unknown command `{other}`")),
            };
            let _ = match answer {
                Ok(()) => writeln!(conn, "ok"),
                Err(e) => writeln!(conn, "error: {e:#}"),
            };
        }
        Ok(())
    })();
    detach_all(&state);
    let _ = std::fs::remove_file(state.socket());
    netns::remove_owner(&state.tag);
    result
}

/// Stops `old` (keeping its devices), attaches the namespaces of nodes that have none yet, and
/// starts a router over all devices with the state's current RTTs. The router keeps routing for
/// the devices it has when attaching a new one fails (that failure is the second value).
fn reload(
    state: &NetState,
    old: Option<Router>,
    devices: &mut Vec<Tun>,
) -> (Router, anyhow::Result<()>) {
    if let Some(old) = old {
        *devices = old.into_devices();
    }
    let mut attached = Ok(());
    for i in devices.len()..state.nodes.len() {
        match attach(state, i) {
            Ok(tun) => devices.push(tun),
            Err(e) => {
                attached = Err(e);
                break;
            }
        }
    }
    let n = devices.len();
    let all = state.effective_rtts();
    let m = state.nodes.len();
    let rtt_ms = (0..n * n).map(|k| all[(k / n) * m + k % n]).collect();
    let config = RouterConfig {
        subnet: state.subnet(),
        rtt_ms,
        uplink: vec![None; n],
        downlink: vec![None; n],
    };
    // The config always fits the devices, and starting only fails without threads or fds.
    match Router::start(std::mem::take(devices), config) {
        Ok(router) => (router, attached),
        Err(e) => panic!("cannot restart the router: {e}"),
    }
}

/// Attaches node `i`'s container namespace under /run/netns and gives it its TUN device.
fn attach(state: &NetState, i: usize) -> anyhow::Result<Tun> {
    let name = netns::name(&state.tag, i);
    let node = &state.nodes[i];
    // A process node's namespace was created by name already; a container's is attached.
    if !state.processes {
        netns::ip(&["netns", "attach", &name, &node.pid.to_string()], None).with_context(|| {
            format!(
                "attach the namespace of {} (pid {})",
                node.container, node.pid
            )
        })?;
    }
    let tun = Tun::create_in(&name, IFNAME)?;
    let script = format!(
        "link set lo up\nlink set {IFNAME} addrgenmode none\naddr add {}/16 dev {IFNAME}\nlink set {IFNAME} up\n",
        node.addr
    );
    netns::ip(&["-n", &name, "-batch", "-"], Some(&script))?;
    Ok(tun)
}

/// Removes the /run/netns names of the testnet (the namespaces themselves die with their
/// containers; nothing inside is killed here).
pub fn detach_all(state: &NetState) {
    for i in 0..state.nodes.len() {
        let name = netns::name(&state.tag, i);
        if std::path::Path::new(netns::NETNS_DIR).join(&name).exists() {
            let _ = netns::ip(&["netns", "del", &name], None);
        }
    }
}
