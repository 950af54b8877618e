//! A testbed: `n` hosts, each a network namespace with a TUN device, joined by one [`Router`].

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::addr::{Subnet, MAX_HOSTS};
use crate::error::{Error, Result};
use crate::netns;
use crate::router::{Router, RouterConfig, RouterStats, Shaping};
use crate::tun::Tun;

/// The TUN interface every host has.
pub const IFNAME: &str = "brume0";

/// `n` hosts in their own network namespaces whose traffic to each other takes the RTTs of a
/// matrix. Dropping it (also while unwinding from a panic) stops the router, kills whatever still
/// runs in the namespaces and deletes them.
#[derive(Debug)]
pub struct Testbed {
    tag: String,
    subnet: Subnet,
    names: Vec<String>,
    rtt_ms: Vec<f64>,
    router: Option<Router>,
}

/// Options of a testbed beyond its latencies (see [`Testbed::builder`]).
#[derive(Debug, Clone)]
pub struct TestbedBuilder {
    n: usize,
    rtt_ms: Vec<f64>,
    uplink: Vec<Option<Shaping>>,
    downlink: Vec<Option<Shaping>>,
}

impl TestbedBuilder {
    /// Limits what host `host` sends and receives to `shaping` (both directions).
    pub fn bandwidth(self, host: usize, shaping: Shaping) -> Self {
        self.uplink(host, shaping).downlink(host, shaping)
    }

    /// Limits what host `host` sends.
    pub fn uplink(mut self, host: usize, shaping: Shaping) -> Self {
        if let Some(slot) = self.uplink.get_mut(host) {
            *slot = Some(shaping);
        }
        self
    }

    /// Limits what host `host` receives.
    pub fn downlink(mut self, host: usize, shaping: Shaping) -> Self {
        if let Some(slot) = self.downlink.get_mut(host) {
            *slot = Some(shaping);
        }
        self
    }

    /// Creates the namespaces and devices and starts the router.
    pub fn build(self) -> Result<Testbed> {
        netns::require_root()?;
        let n = self.n;
        if n == 0 || n > MAX_HOSTS {
            return Err(Error::Invalid(format!(
                "{n} hosts: a testbed has 1 to {MAX_HOSTS} hosts"
            )));
        }
        if let Some(s) = self
            .uplink
            .iter()
            .chain(&self.downlink)
            .flatten()
            .find(|s| s.bits_per_sec == 0)
        {
            return Err(Error::Invalid(format!("a link rate must be > 0 ({s:?})")));
        }
        let tag = claim_tag()?;
        let mut bed = Testbed {
            tag,
            subnet: Subnet::random(),
            names: Vec::with_capacity(n),
            rtt_ms: self.rtt_ms,
            router: None,
        };
        // From here on, an early return drops `bed`, which deletes what was created.
        let mut tuns = Vec::with_capacity(n);
        for i in 0..n {
            let name = netns::name(&bed.tag, i);
            netns::create(&name)?;
            bed.names.push(name.clone());
            tuns.push(Tun::create_in(&name, IFNAME)?);
            let script = format!(
                "link set lo up\nlink set {IFNAME} addrgenmode none\naddr add {}/16 dev {IFNAME}\nlink set {IFNAME} up\n",
                bed.subnet.host(i)
            );
            netns::ip(&["-n", &name, "-batch", "-"], Some(&script))?;
        }
        bed.router = Some(Router::start(
            tuns,
            RouterConfig {
                subnet: bed.subnet,
                rtt_ms: bed.rtt_ms.clone(),
                uplink: self.uplink,
                downlink: self.downlink,
            },
        )?);
        Ok(bed)
    }
}

/// A tag that no namespace and no other testbed uses, claimed for this process (its owner
/// marker written). The tag is random: it only names resources and decides nothing a test
/// checks; the claim is atomic, so testbeds built at once in parallel tests never share one.
pub(crate) fn claim_tag() -> Result<String> {
    loop {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let used = Path::new(netns::NETNS_DIR)
            .join(netns::name(&tag, 0))
            .exists();
        if !used && netns::claim_owner(&tag)? {
            return Ok(tag);
        }
    }
}

impl Testbed {
    /// A testbed of `n` hosts where a round trip between hosts `i` and `j` takes `rtt_ms(i, j)`
    /// milliseconds (each direction `i -> j` is held `rtt_ms(i, j) / 2`, so an asymmetric function
    /// gives round trips of `(rtt_ms(i, j) + rtt_ms(j, i)) / 2`). A negative or non-finite value
    /// makes the pair unreachable. Fails with [`Error::NotRoot`] unless run as root.
    pub fn new(n: usize, rtt_ms: impl Fn(usize, usize) -> f64) -> Result<Testbed> {
        Testbed::builder(n, rtt_ms).build()
    }

    /// A testbed from an `n x n` matrix of RTTs in ms (rules as in [`Testbed::new`]).
    pub fn from_matrix(rows: &[Vec<f64>]) -> Result<Testbed> {
        let n = rows.len();
        if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != n) {
            return Err(Error::Invalid(format!(
                "RTT matrix row {i} has {} entries; an {n}-host matrix needs {n} per row",
                row.len()
            )));
        }
        Testbed::new(n, |i, j| rows[i][j])
    }

    /// A builder, to add bandwidth limits before [`TestbedBuilder::build`].
    pub fn builder(n: usize, rtt_ms: impl Fn(usize, usize) -> f64) -> TestbedBuilder {
        TestbedBuilder {
            n,
            rtt_ms: (0..n * n).map(|k| rtt_ms(k / n, k % n)).collect(),
            uplink: vec![None; n],
            downlink: vec![None; n],
        }
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the testbed has no host (never true for a built one).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The random tag in this testbed's namespace names (`brume-<tag>-<i>`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The testbed's `/16`.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Host `i`'s address on its `brume0` device. Panics if there is no host `i`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        self.check(i);
        self.subnet.host(i)
    }

    /// Host `i`'s namespace name (for `ip -n`, `nsenter --net=/run/netns/<name>` or
    /// [`netns::enter`]). Panics if there is no host `i`.
    pub fn netns(&self, i: usize) -> &str {
        self.check(i);
        &self.names[i]
    }

    /// The RTT in ms that the matrix gives from `i` to `j`.
    pub fn rtt_ms(&self, i: usize, j: usize) -> f64 {
        self.check(i);
        self.check(j);
        self.rtt_ms[i * self.len() + j]
    }

    /// A command that runs `program` inside host `i`'s network namespace; add its arguments with
    /// [`Command::arg`]. Processes still running when the testbed is dropped are killed.
    ///
    /// The child enters the namespace itself, between fork and exec (`setns(2)` on
    /// `/run/netns/<ns>` in a `pre_exec` hook), so once `spawn` (or `output`, `status`) has
    /// returned the process is inside: a testbed dropped right after the spawn kills it, and
    /// nothing it does ever happens outside the namespace. If the namespace cannot be opened or
    /// entered, `spawn` fails with that error and no program runs. Unlike `ip netns exec`, only
    /// the network namespace changes: `/sys` and `/etc` stay the host's.
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        // Opened now, in the parent: the child must not allocate or touch the file system between
        // fork and exec. An open failure is kept as its errno and reported by `spawn`.
        let ns = netns::open(self.netns(i)).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
        let mut cmd = Command::new(program);
        // SAFETY: the hook runs in the forked child before exec. It only calls setns(2), which is
        // async-signal-safe, on a descriptor the closure owns (opened close-on-exec, so the
        // program does not inherit it), and builds an `io::Error` from an errno, which does not
        // allocate.
        unsafe {
            cmd.pre_exec(move || match &ns {
                Ok(file) => {
                    if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                }
                Err(errno) => Err(std::io::Error::from_raw_os_error(*errno)),
            });
        }
        cmd
    }

    /// Runs `f` on a thread inside host `i`'s namespace. Sockets created there (a `TcpListener`
    /// bound to [`Testbed::addr`], a `TcpStream` connected to another host) stay in host `i`
    /// and can be used from any thread afterwards.
    pub fn run_in<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> Result<T> {
        netns::run_in(self.netns(i), f)
    }

    /// The router's counters so far.
    pub fn stats(&self) -> RouterStats {
        self.router.as_ref().map(Router::stats).unwrap_or_default()
    }

    /// Tears the testbed down now and reports the first failure (dropping does the same but can
    /// only print failures).
    pub fn shutdown(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if let Some(mut router) = self.router.take() {
            router.stop();
        }
        let mut first = Ok(());
        for name in self.names.drain(..) {
            if let Err(e) = netns::delete(&name) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        netns::remove_owner(&self.tag);
        first
    }

    fn check(&self, i: usize) {
        assert!(i < self.len(), "host {i} of a {}-host testbed", self.len());
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("brume-testnet: cleaning up testbed {}: {e}", self.tag);
        }
    }
}
