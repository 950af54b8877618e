//! Helpers of the testbed tests: a TCP echo server inside a host, RTT samples, tolerances.
//! Every loop here is bounded in count and in time.

#![allow(dead_code)] // Each test file uses a different part.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use brume_testnet::Testbed;

/// No server here lives longer than this, whatever the test does.
const SERVER_LIFETIME: Duration = Duration::from_secs(120);

/// A TCP server inside one host that echoes (or swallows) what it reads; stopped on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An echo server on host `host`'s testbed address.
pub fn echo_server(bed: &Testbed, host: usize) -> Server {
    server(bed, host, bed.addr(host).into(), true)
}

/// A server on `ip` inside host `host`; echoes when `echo`, else only reads.
pub fn server(bed: &Testbed, host: usize, ip: std::net::IpAddr, echo: bool) -> Server {
    let listener = bed
        .run_in(host, || TcpListener::bind((ip, 0)))
        .expect("enter host")
        .expect("bind inside host");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + SERVER_LIFETIME;
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => {
                    std::thread::spawn(move || serve(stream, echo));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    Server {
        addr,
        stop,
        thread: Some(thread),
    }
}

fn serve(mut stream: TcpStream, echo: bool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let deadline = Instant::now() + SERVER_LIFETIME;
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) if echo => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Ok(_) => {}
        }
    }
}

/// `samples` TCP connect times (SYN to SYN-ACK: one round trip) from host `from` to `to`.
pub fn connect_rtts(bed: &Testbed, from: usize, to: SocketAddr, samples: usize) -> Vec<Duration> {
    (0..samples)
        .map(|_| {
            bed.run_in(from, || {
                let t = Instant::now();
                let stream = TcpStream::connect_timeout(&to, Duration::from_secs(5));
                let elapsed = t.elapsed();
                stream.expect("connect");
                elapsed
            })
            .expect("enter host")
        })
        .collect()
}

/// `samples` request/response times of a 32-byte message over one connection from host `from`
/// to the echo server at `to` (after one unmeasured warm-up exchange).
pub fn echo_rtts(bed: &Testbed, from: usize, to: SocketAddr, samples: usize) -> Vec<Duration> {
    let mut stream = bed
        .run_in(from, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })
        .expect("enter host")
        .expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = [0u8; 32];
    (0..=samples)
        .map(|k| {
            let msg = [k as u8; 32];
            let t = Instant::now();
            stream.write_all(&msg).expect("send");
            stream.read_exact(&mut reply).expect("echo");
            let elapsed = t.elapsed();
            assert_eq!(reply, msg);
            elapsed
        })
        .skip(1)
        .collect()
}

/// The median, in ms.
pub fn median_ms(samples: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// The tolerance of a measured RTT: 3 ms or 10 % of the expected one, whichever is larger.
pub fn tolerance_ms(expected_ms: f64) -> f64 {
    (expected_ms * 0.1).max(3.0)
}

/// Asserts that `measured` is within [`tolerance_ms`] of `expected`.
pub fn assert_close(what: &str, measured_ms: f64, expected_ms: f64) {
    let tol = tolerance_ms(expected_ms);
    assert!(
        (measured_ms - expected_ms).abs() <= tol,
        "{what}: measured {measured_ms:.2} ms, matrix says {expected_ms} ms (tolerance {tol} ms)"
    );
}
