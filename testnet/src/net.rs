//! The `brume testnet` commands on node containers: argument handling and printing around
//! [`brume_testnet::containers`].

use std::time::Duration;

use brume_testnet::containers::state::{parse_latency, RttSource};
use brume_testnet::containers::{ops, up};
use brume_testnet::latency::{LatencyModel, RttMatrix};

use crate::Up;

fn msg(e: anyhow::Error) -> String {
    format!("{e:#}")
}

pub fn up(args: &Up) -> Result<(), String> {
    let nodes = args.nodes.unwrap_or(0);
    let rtt = match &args.rtt_matrix {
        Some(path) => {
            let m = RttMatrix::from_file(path).map_err(|e| e.to_string())?;
            let n = m.len();
            RttSource::Matrix(
                (0..n)
                    .map(|i| (0..n).map(|j| m.rtt(i, j).unwrap_or(-1.0)).collect())
                    .collect(),
            )
        }
        None => {
            let (min_ms, max_ms) =
                parse_latency(args.latency.as_deref().unwrap_or("5ms..80ms")).map_err(msg)?;
            RttSource::Range {
                min_ms,
                max_ms,
                seed: args.seed,
            }
        }
    };
    let opts = up::UpOptions {
        name: args.name.clone(),
        nodes,
        rtt,
        image: args.image.clone(),
        wait: Duration::from_secs(args.wait_s),
        labels: args.label.clone(),
        node_args: args.node_arg.clone(),
        processes: args.processes,
    };
    let (state, joined) = up::up(&opts).map_err(msg)?;
    println!(
        "testnet {} up: {nodes} nodes on {} (router pid {})",
        state.name,
        state.subnet().cidr(),
        state.router_pid.unwrap_or(0)
    );
    if let Some(t) = joined {
        println!(
            "all {nodes} nodes joined {:.1} s after `up` started",
            t.as_secs_f64()
        );
    }
    ps(&state.name)?;
    if nodes <= 12 {
        println!("RTT matrix (ms):");
        let m = state.effective_rtts();
        for i in 0..nodes {
            let row: Vec<String> = (0..nodes)
                .map(|j| format!("{:6.1}", m[i * nodes + j]))
                .collect();
            println!("  {}", row.join(" "));
        }
    }
    if state.processes {
        println!(
            "try: brume peers --control {}",
            brume_testnet::containers::procs::control(&state, 0).display()
        );
    } else {
        println!(
            "try: docker exec {} brume peers --control /run/brume/control.sock",
            state.nodes[0].container
        );
    }
    Ok(())
}

pub fn ps(name: &str) -> Result<(), String> {
    let rows = ops::ps(name).map_err(msg)?;
    println!(
        "{:>4}  {:<28} {:<18} {:<9} peer id",
        "node", "container", "address", "status"
    );
    for r in rows {
        println!(
            "{:>4}  {:<28} {:<18} {:<9} {}",
            r.index, r.container, r.addr, r.status, r.peer_id
        );
    }
    Ok(())
}

pub fn kill(name: &str, node: &str) -> Result<(), String> {
    let i = ops::kill(name, node).map_err(msg)?;
    println!("killed node {i}");
    Ok(())
}

pub fn partition(name: &str, groups: &[String]) -> Result<(), String> {
    let parts = ops::partition(name, groups).map_err(msg)?;
    println!("partitioned into {parts:?}");
    Ok(())
}

pub fn heal(name: &str) -> Result<(), String> {
    ops::heal(name).map_err(msg)?;
    println!("healed");
    Ok(())
}

pub fn join(name: &str, labels: &[String], wait_s: u64) -> Result<(), String> {
    let i = up::join(name, labels, Duration::from_secs(wait_s)).map_err(msg)?;
    println!("node {i} joined");
    Ok(())
}

pub fn down(name: &str) -> Result<(), String> {
    let removed = ops::down(name).map_err(msg)?;
    println!("testnet {name} down ({} nodes removed)", removed.len());
    Ok(())
}
