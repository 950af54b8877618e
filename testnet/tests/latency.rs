//! Measured RTTs between namespaces match the matrix; the router's own overhead; two testbeds at
//! once; bandwidth shaping; ping. These need root (CI runs as root) and fail loudly without it.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use brume_testnet::{Shaping, Testbed};
use common::{assert_close, connect_rtts, echo_rtts, echo_server, median_ms, server};

/// 0-1: 20 ms, 1-2: 40 ms, 0-2: 80 ms.
fn three_hosts() -> Testbed {
    Testbed::from_matrix(&[
        vec![0.0, 20.0, 80.0],
        vec![20.0, 0.0, 40.0],
        vec![80.0, 40.0, 0.0],
    ])
    .expect("build testbed (needs root)")
}

#[test]
fn measured_rtts_match_the_matrix() {
    let bed = three_hosts();
    let servers: Vec<_> = (0..3).map(|h| echo_server(&bed, h)).collect();
    for from in 0..3 {
        for to in (0..3).filter(|&to| to != from) {
            let expected = bed.rtt_ms(from, to);
            let connect = median_ms(&connect_rtts(&bed, from, servers[to].addr, 7));
            let echo = median_ms(&echo_rtts(&bed, from, servers[to].addr, 9));
            eprintln!(
                "{from} -> {to}: matrix {expected} ms, connect {connect:.2} ms, echo {echo:.2} ms"
            );
            assert_close(&format!("connect {from} -> {to}"), connect, expected);
            assert_close(&format!("echo {from} -> {to}"), echo, expected);
        }
    }
    let stats = bed.stats();
    assert!(stats.forwarded > 0 && stats.write_errors == 0, "{stats:?}");
    eprintln!(
        "router timer lateness: mean {:?}, max {:?}",
        stats.late_mean, stats.late_max
    );
}

/// The floor of the emulator: a 0 ms matrix entry, against loopback inside the same host.
#[test]
fn router_overhead_at_zero_rtt_is_small() {
    let bed = Testbed::new(2, |_, _| 0.0).expect("build testbed (needs root)");
    let remote = echo_server(&bed, 1);
    let local = server(&bed, 0, "127.0.0.1".parse().unwrap(), true);
    let via_router = median_ms(&echo_rtts(&bed, 0, remote.addr, 200));
    let loopback = median_ms(&echo_rtts(&bed, 0, local.addr, 200));
    let connect = median_ms(&connect_rtts(&bed, 0, remote.addr, 30));
    eprintln!(
        "0 ms matrix entry: echo RTT {via_router:.3} ms via the router ({loopback:.3} ms on \
         loopback), connect {connect:.3} ms; {:?}",
        bed.stats()
    );
    assert!(via_router < 1.5, "router overhead {via_router:.3} ms");
    assert!(connect < 3.0, "connect through the router {connect:.3} ms");
}

#[test]
fn two_testbeds_at_once_do_not_interfere() {
    let rtts = [10.0, 60.0];
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = rtts
            .iter()
            .map(|&rtt| {
                s.spawn(move || {
                    let bed = Testbed::new(2, |_, _| rtt).expect("build testbed (needs root)");
                    let srv = echo_server(&bed, 1);
                    let echo = median_ms(&echo_rtts(&bed, 0, srv.addr, 15));
                    let connect = median_ms(&connect_rtts(&bed, 0, srv.addr, 7));
                    (
                        bed.tag().to_string(),
                        bed.netns(0).to_string(),
                        echo,
                        connect,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_ne!(results[0].0, results[1].0, "two testbeds got one tag");
    for ((_, ns, echo, connect), rtt) in results.iter().zip(rtts) {
        eprintln!("{ns}: matrix {rtt} ms, echo {echo:.2} ms, connect {connect:.2} ms");
        assert_close(&format!("echo in {ns}"), *echo, rtt);
        assert_close(&format!("connect in {ns}"), *connect, rtt);
    }
}

#[test]
fn uplink_shaping_limits_throughput() {
    let rate_mbit = 20;
    let bed = Testbed::builder(2, |_, _| 2.0)
        .uplink(0, Shaping::mbit(rate_mbit))
        .build()
        .expect("build testbed (needs root)");
    let sink = server(&bed, 1, bed.addr(1).into(), false);
    let mut stream = bed
        .run_in(0, || {
            TcpStream::connect_timeout(&sink.addr, Duration::from_secs(5))
        })
        .unwrap()
        .expect("connect");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // 2.5 MB at 20 Mbit/s: about one second. Time it from when the first MB has gone (so the
    // socket buffers are full and the link is the bottleneck) to when the rest has.
    let chunk = vec![7u8; 64 * 1024];
    let total = 40;
    let mut start = None;
    let mut sent_after_start = 0usize;
    let t0 = Instant::now();
    for k in 0..total {
        stream.write_all(&chunk).expect("send");
        if k == 15 {
            start = Some(Instant::now());
        } else if start.is_some() {
            sent_after_start += chunk.len();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "sending took too long"
        );
    }
    let secs = start.unwrap().elapsed().as_secs_f64();
    let mbit = sent_after_start as f64 * 8.0 / secs / 1e6;
    eprintln!(
        "goodput {mbit:.2} Mbit/s through a {rate_mbit} Mbit/s uplink; {:?}",
        bed.stats()
    );
    let rate = rate_mbit as f64;
    assert!(
        (0.75 * rate..=1.05 * rate).contains(&mbit),
        "goodput {mbit:.2} Mbit/s through a {rate} Mbit/s uplink"
    );
}

#[test]
fn ping_works_when_installed() {
    let available = std::process::Command::new("ping")
        .arg("-V")
        .output()
        .is_ok();
    if !available {
        eprintln!("ping is not installed: skipping the ping check");
        return;
    }
    let bed = three_hosts();
    let out = bed
        .command(0, "ping")
        .args(["-c", "5", "-i", "0.2", "-W", "2", "-n"])
        .arg(bed.addr(2).to_string())
        .output()
        .expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ping failed: {text}");
    // "rtt min/avg/max/mdev = 80.1/80.2/80.3/0.1 ms"
    let avg: f64 = text
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no RTT summary in ping's output: {text}"));
    assert_close("ping 0 -> 2", avg, 80.0);
}
