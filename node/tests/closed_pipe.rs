//! A read-only query whose reader has gone (`brume peers | head`) ends quietly, as Unix tools
//! do, instead of panicking at its first line of output: a real `brume node` on loopback, and
//! `brume status` / `brume peers` writing into a pipe whose read end is already closed.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use brume_testnet::localnet::LocalNet;

const BRUME: &str = env!("CARGO_BIN_EXE_brume");

#[test]
fn a_query_into_a_closed_pipe_ends_without_a_panic() {
    let net = LocalNet::start(Path::new(BRUME), 1, &["--engine", "process"])
        .unwrap_or_else(|e| panic!("a daemon starts: {e:#}"));
    for query in ["status", "peers"] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let out = Command::new(BRUME)
            .arg(query)
            .arg("--control")
            .arg(net.sock(0))
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .expect("brume runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.signal() == Some(libc::SIGPIPE),
            "brume {query} into a closed pipe: {:?}, stderr: {stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "brume {query}: {stderr}");
    }
}
