//! The few Docker operations a testnet needs, through the `docker` command (the CLI is what an
//! operator has, and this tooling stays synchronous and free of the daemon's async client).

use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context};

/// The label on every container of a testnet: `brume.testnet=<name>`.
pub const NET_LABEL: &str = "brume.testnet";

/// Runs `docker ARGS` and returns its trimmed stdout, or an error with its stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = run(args)?;
    if !out.status.success() {
        bail!(
            "`docker {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `docker ARGS`, whatever its status.
pub fn run(args: &[&str]) -> anyhow::Result<Output> {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `docker` (install Docker, or see `brume testnet up --help`)")
}

/// Fails with what to do unless a Docker daemon answers.
pub fn require() -> anyhow::Result<()> {
    let out = run(&["version", "--format", "{{.Server.Version}}"]);
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "the Docker daemon does not answer ({}); `brume testnet up` runs each node in a \
             container. Start Docker (systemctl start docker), or run the nodes as processes in \
             namespaces instead: `brume testnet up --nodes N --processes`",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => Err(e),
    }
}

/// Whether image `image` exists locally.
pub fn image_exists(image: &str) -> bool {
    run(&["image", "inspect", image]).is_ok_and(|o| o.status.success())
}

/// The pid of a running container's first process.
pub fn pid_of(container: &str) -> anyhow::Result<u32> {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", container])?;
    match pid.parse::<u32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => bail!("container {container} is not running (its pid is `{pid}`)"),
    }
}

/// The state of a container (`running`, `exited`...), or `gone`.
pub fn status_of(container: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Status}}", container]).unwrap_or_else(|_| "gone".into())
}

/// Names of the containers carrying `brume.testnet=<net>` (running or not).
pub fn containers_of(net: &str) -> anyhow::Result<Vec<String>> {
    let filter = format!("label={NET_LABEL}={net}");
    let out = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])?;
    Ok(out.lines().map(str::to_string).collect())
}
