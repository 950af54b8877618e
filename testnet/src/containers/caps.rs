//! The privileges of a node container: everything `--privileged` gives, minus the capabilities
//! this process does not hold itself. Docker's `--privileged` asks runc for every capability it
//! knows, and runc fails the start (`unable to apply caps: operation not permitted`) when the
//! daemon's own bounding set lacks one, as it does in a sandbox that drops, say,
//! CAP_SYS_RESOURCE. So the container gets `--cap-add ALL` with the missing ones dropped, and
//! the rest of what `--privileged` means spelled out: no seccomp filter (CRIU and the dirty-page
//! tracker's userfaultfd), no AppArmor profile, and writable /proc/sys and /sys paths.

/// Capability names by bit number (linux/capability.h, up to CAP_CHECKPOINT_RESTORE).
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capabilities missing from `bounding` (the hex `CapBnd` of /proc/self/status).
pub fn missing(bounding: u64) -> Vec<&'static str> {
    NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// This process's bounding set (all bits when it cannot be read: then `--cap-add ALL` alone).
fn own_bounding() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("CapBnd:"))?.to_string();
            u64::from_str_radix(line.trim_start_matches("CapBnd:").trim(), 16).ok()
        })
        .unwrap_or(u64::MAX)
}

/// The `docker run` arguments that make a node container as privileged as it can be here.
pub fn docker_args() -> Vec<String> {
    let mut args: Vec<String> = [
        "--cap-add=ALL",
        "--security-opt=seccomp=unconfined",
        "--security-opt=apparmor=unconfined",
        "--security-opt=systempaths=unconfined",
    ]
    .map(String::from)
    .to_vec();
    args.extend(
        missing(own_bounding())
            .iter()
            .map(|c| format!("--cap-drop={c}")),
    );
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_named() {
        assert_eq!(missing(0x1ff_feff_ffff), vec!["SYS_RESOURCE"]);
        assert!(missing(u64::MAX).is_empty());
        assert_eq!(missing(0x1ff_ffff_fffe), vec!["CHOWN"]);
    }
}
