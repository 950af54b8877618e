//! The `BRUME_CALL_*` variables a task gets for the tasks it calls (the house convention):
//! `BRUME_CALL_<CALLEE>` holds the comma-separated forwarder addresses of every replica in
//! replica order, and `BRUME_CALL_<CALLEE>_<i>` the address of replica `i`. `<CALLEE>` is the
//! task name upper-cased with `-` turned into `_`.

use std::net::SocketAddr;

/// `BRUME_CALL_<CALLEE>` for a callee task name.
pub fn call_env_name(callee_task: &str) -> String {
    let name: String = callee_task
        .chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect();
    format!("BRUME_CALL_{name}")
}

/// The variables for one callee whose replicas' forwarders listen on `addrs` (replica order).
pub fn call_env(callee_task: &str, addrs: &[SocketAddr]) -> Vec<(String, String)> {
    let base = call_env_name(callee_task);
    let all = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut vars = vec![(base.clone(), all)];
    vars.extend(
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("{base}_{i}"), a.to_string())),
    );
    vars
}
