//! The images of the off-the-shelf scenario: redis as Debian ships it, and the root task.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The Debian package's server.
pub const REDIS: &str = "/usr/bin/redis-server";

/// How redis starts: on the node's `$PORT`, on loopback (tasks share the host's network), with
/// no persistence (its state lives in memory only, so only a live move can keep it). `exec`
/// leaves redis the task's only process. The relative path runs the image's own binary on both
/// engines: Docker's working directory is the image's `/`, the process engine's is the image's
/// root directory (it runs tasks without a chroot).
const REDIS_START: &str = "exec ./usr/bin/redis-server --port \"$PORT\" --bind 127.0.0.1 \
                           --protected-mode no --save '' --appendonly no";

/// Copies `program` into `rootfs` at `at`, with every shared library `ldd` lists for it and
/// the dynamic loader, each at the path `ldd` names: an unmodified host program runs in a
/// `FROM scratch` image (`COPY rootfs/ /`). A library `ldd` cannot find is an error.
pub fn add_host_program(rootfs: &Path, program: &Path, at: &str) -> anyhow::Result<()> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .with_context(|| format!("ldd {}", program.display()))?;
    let listing = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}{listing}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut files = vec![(program.to_path_buf(), at.to_string())];
    for line in listing.lines() {
        if line.contains("not found") {
            bail!(
                "{} needs a library the host lacks: {line}",
                program.display()
            );
        }
        // `libx.so.1 => /lib/.../libx.so.1 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`,
        // or the kernel's `linux-vdso.so.1 (0x...)`, which is no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            files.push((PathBuf::from(path), path.to_string()));
        }
    }
    for (src, dst) in files {
        let dst = rootfs.join(dst.trim_start_matches('/'));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("mkdir {}", parent.display()))?;
        }
        std::fs::copy(&src, &dst)
            .with_context(|| format!("copy {} into the rootfs", src.display()))?;
    }
    Ok(())
}

/// The redis build context in `dir/kv`: redis-server, dash as /bin/sh, their libraries;
/// `labels` (Dockerfile lines, may be empty) end the Dockerfile.
pub fn redis_context(dir: &Path, labels: &str) -> anyhow::Result<()> {
    if !Path::new(REDIS).exists() {
        bail!("{REDIS} is missing: run `bash scripts/install-deps.sh` (it installs Debian's redis-server)");
    }
    let ctx = dir.join("kv");
    let rootfs = ctx.join("rootfs");
    // Debian's /usr/bin/redis-server is a link to redis-check-rdb, which acts by the name it
    // was started under: the image holds the file itself under the server's name.
    let redis = std::fs::canonicalize(REDIS).context("resolve redis-server")?;
    add_host_program(&rootfs, &redis, REDIS)?;
    let sh = std::fs::canonicalize("/bin/sh").context("resolve /bin/sh")?;
    add_host_program(&rootfs, &sh, "/bin/sh")?;
    let entrypoint = serde_json::to_string(&["/bin/sh", "-c", REDIS_START])?;
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\nCOPY rootfs/ /\nWORKDIR /\nENTRYPOINT {entrypoint}\n{labels}"),
    )
    .context("write redis's Dockerfile")?;
    Ok(())
}

/// The root task's build context in `dir/front`: the static relay at `relay`.
pub fn front_context(dir: &Path, relay: &Path, labels: &str) -> anyhow::Result<()> {
    let ctx = dir.join("front");
    std::fs::create_dir_all(&ctx).context("mkdir front")?;
    std::fs::copy(relay, ctx.join("brume-relay"))
        .with_context(|| format!("copy the relay {}", relay.display()))?;
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY brume-relay /brume-relay\nENTRYPOINT [\"/brume-relay\"]\n{labels}"
        ),
    )
    .context("write the relay's Dockerfile")?;
    Ok(())
}

/// front (the root, stateless) calls kv (redis, moved live with CRIU, so as root: CRIU cannot
/// dump a container task of another user here; docs/limits.md), within `budget_ms`.
pub fn manifest(dir: &Path, service: &str, budget_ms: u64) -> anyhow::Result<PathBuf> {
    let text = format!(
        "[service]\nname = \"{service}\"\nroot = \"front\"\n\n\
         [[task]]\nname = \"front\"\nbuild = \"front\"\ncpu_millis = 100\nmemory_mb = 64\n\n\
         [[task]]\nname = \"kv\"\nbuild = \"kv\"\ncpu_millis = 100\nmemory_mb = 64\n\
         stateful = true\ncheckpoint = \"criu\"\nuser = \"root\"\n\n\
         [[call]]\nfrom = \"front\"\nto = \"kv\"\nlatency_ms = {budget_ms}\ntraffic_mbps = 1\n"
    );
    let path = dir.join("service.toml");
    std::fs::write(&path, text).context("write the manifest")?;
    Ok(path)
}

/// The pids of the live redis servers on this machine that listen on `port`. Redis rewrites
/// its command line (and with it the environment brume gave it) into its title,
/// `<program> 127.0.0.1:<port>`, which is what this reads.
pub fn redis_processes(port: u16) -> Vec<u32> {
    let title = format!(" 127.0.0.1:{port}");
    crate::processes::live_processes()
        .filter(|(_, dir)| {
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            comm.trim() == "redis-server"
                && String::from_utf8_lossy(&cmdline)
                    .trim_end_matches('\0')
                    .ends_with(&title)
        })
        .map(|(pid, _)| pid)
        .collect()
}
