//! The relay chain, the service brume's deploy tests and benches deploy: three copies of the
//! static `brume-relay` binary (front -> mid -> back) in a `FROM scratch` image. Each answers a
//! line with its own name wrapped around its callee's answer, so `front(mid(back))` proves every
//! call went through.

use std::path::{Path, PathBuf};

/// The relay chain's build context `dir/ctx`: the static relay binary, a `FROM scratch`
/// Dockerfile and `salt` (a different salt, a different digest).
pub fn context(dir: &Path, relay: &Path, salt: &str) -> anyhow::Result<PathBuf> {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx)?;
    std::fs::copy(relay, ctx.join("relay"))?;
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY relay /relay\nENTRYPOINT [\"/relay\"]\n",
    )?;
    std::fs::write(ctx.join("salt.txt"), salt)?;
    Ok(ctx)
}

/// The latency bound of every call in the test services' manifests, in ms. Their nodes share
/// one loaded machine, where the first pings of a new link can take tens of ms (a daemon waiting
/// for a core): a bound of 50 ms made placement find a dead end now and then. The tests are
/// about deploying, calling, moving and healing, not latency (placement's bounds have tests of
/// their own, on given RTTs); like the test maps' 5 s budget, the bound only has to hold.
pub const CALL_BOUND_MS: u32 = 5_000;

/// The relay chain's manifest `dir/service.toml`: front -> mid -> back, 100 mCPU each, built
/// from `ctx`, each call bounded by [`CALL_BOUND_MS`].
pub fn manifest(dir: &Path, service: &str) -> anyhow::Result<PathBuf> {
    let mut text = format!("[service]\nname = \"{service}\"\nroot = \"front\"\n\n");
    for t in ["front", "mid", "back"] {
        text += &format!(
            "[[task]]\nname = \"{t}\"\nbuild = \"ctx\"\ncpu_millis = 100\nmemory_mb = 64\n\n"
        );
    }
    for (a, b) in [("front", "mid"), ("mid", "back")] {
        text += &format!(
            "[[call]]\nfrom = \"{a}\"\nto = \"{b}\"\nlatency_ms = {CALL_BOUND_MS}\ntraffic_mbps = 1\n\n"
        );
    }
    let path = dir.join("service.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// One request line to a relay task at `address` (`host:port`), its reply line.
pub fn ask(address: &str, line: &str) -> std::io::Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let s = std::net::TcpStream::connect(address)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    writeln!(w, "{line}")?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    Ok(reply.trim_end().to_string())
}
