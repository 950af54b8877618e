//! The two programs as brume runs them: plain child processes given `PORT`, `BRUME_REPLICA` and
//! `BRUME_CALL_TRAINER`, talked to over their line protocols. Every test starts its own trainers
//! and aggregators with `PORT=0`: each binds a free port itself and names it in the `listening
//! on` line it prints, which the test waits for and reads (a port the test picked and released
//! could be taken before the child bound it). All are killed when the test ends, pass or fail
//! (the `Proc` guard). Waits are on lines and answers, with a generous deadline that prints the
//! process's output.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use brume_fedavg::data::{self, Dataset, DEFAULT_ALPHA};
use brume_fedavg::learn::{self, DEFAULT_ROUNDS, DEFAULT_SGD, DEFAULT_TRAINERS};
use brume_fedavg::wire::State;

const DEADLINE: Duration = Duration::from_secs(60);

/// A child process, its output lines (stderr ones prefixed "err: "), killed on drop.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    port: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(bin: &str, env: &[(&str, String)]) -> Proc {
        let mut child = Command::new(bin)
            .env_clear()
            .env("PORT", "0")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().expect("stdout"), "", &lines);
        collect(child.stderr.take().expect("stderr"), "err: ", &lines);
        let mut p = Proc {
            child,
            lines,
            port: 0,
        };
        const LISTENING: &str = "listening on 127.0.0.1:";
        p.wait_for_line(LISTENING);
        let log = p.log();
        let line = log
            .iter()
            .find(|l| l.contains(LISTENING))
            .expect("the line waited for");
        p.port = line
            .rsplit(':')
            .next()
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        p
    }

    fn log(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    fn wait_for_line(&self, needle: &str) {
        wait_for(&format!("a line with {needle:?}"), self, || {
            self.log().iter().any(|l| l.contains(needle))
        });
    }

    fn ask(&self, line: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        writeln!(s, "{line}").expect("send");
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).expect("reply");
        reply.trim_end().to_string()
    }

    fn status(&self) -> Status {
        Status::parse(&self.ask("STATUS"))
    }

    /// The `round=k/R ...` lines of an aggregator, as parsed fields.
    fn rounds(&self) -> Vec<RoundLine> {
        self.log()
            .iter()
            .filter_map(|l| RoundLine::parse(l))
            .collect()
    }

    /// Waits until the aggregator says it is done, over STATUS, and its `done` line has reached
    /// this test's reader (the line is printed around the time STATUS turns, and a reader
    /// thread copies it: a failed CI run read the log in between).
    fn wait_done(&self) -> Status {
        wait_for("the last round", self, || self.status().done);
        wait_for("a done line", self, || {
            self.log().iter().any(|l| l.starts_with("done "))
        });
        self.status()
    }
}

fn collect(out: impl Read + Send + 'static, prefix: &'static str, into: &Arc<Mutex<Vec<String>>>) {
    let into = Arc::clone(into);
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            into.lock().expect("lines").push(format!("{prefix}{line}"));
        }
    });
}

fn wait_for(what: &str, p: &Proc, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < DEADLINE,
            "no {what} after {DEADLINE:?}; output:\n{}",
            p.log().join("\n")
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `key=value` out of a line of such words.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[derive(Debug)]
struct Status {
    round: u64,
    acc: f64,
    central_acc: f64,
    loss: f64,
    checksum: String,
    done: bool,
}

impl Status {
    fn parse(line: &str) -> Status {
        let get = |k| field(line, k).unwrap_or_else(|| panic!("no {k} in {line:?}"));
        Status {
            round: get("round").split('/').next().unwrap().parse().unwrap(),
            acc: get("acc").parse().unwrap(),
            central_acc: get("central_acc").parse().unwrap(),
            loss: get("loss").parse().unwrap(),
            checksum: get("checksum").to_string(),
            done: get("done") == "true",
        }
    }
}

#[derive(Debug)]
struct RoundLine {
    round: u64,
    answered: usize,
    acc: f64,
    loss: f64,
    checksum: String,
}

impl RoundLine {
    fn parse(line: &str) -> Option<RoundLine> {
        if !line.starts_with("round=") {
            return None;
        }
        let round = field(line, "round")?.split('/').next()?.parse().ok()?;
        let answered = field(line, "trainers")?.split('/').next()?.parse().ok()?;
        Some(RoundLine {
            round,
            answered,
            acc: field(line, "acc")?.parse().ok()?,
            loss: field(line, "loss")?.parse().ok()?,
            checksum: field(line, "checksum")?.to_string(),
        })
    }
}

fn trainers(n: usize) -> (Vec<Proc>, String) {
    let procs: Vec<Proc> = (0..n)
        .map(|i| {
            Proc::start(
                env!("CARGO_BIN_EXE_trainer"),
                &[("BRUME_REPLICA", i.to_string())],
            )
        })
        .collect();
    let addrs: Vec<String> = procs
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.port))
        .collect();
    (procs, addrs.join(","))
}

fn aggregator(call: &str, rounds: u64, extra: &[(&str, &str)]) -> Proc {
    let mut env = vec![
        ("BRUME_CALL_TRAINER", call.to_string()),
        ("ROUNDS", rounds.to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Proc::start(env!("CARGO_BIN_EXE_aggregator"), &env)
}

/// A file path of this test's own, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        TempFile(std::env::temp_dir().join(format!("fedavg-{name}-{}-{nanos}", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_default_run_learns_the_digits_within_two_points_of_centralised() {
    let (trainers, call) = trainers(4);
    let svg = TempFile::new("plot.svg");
    let svg_path = svg.0.to_string_lossy().into_owned();
    let mut agg = aggregator(
        &call,
        DEFAULT_ROUNDS,
        &[("PLOT_SVG", &svg_path), ("PLOT_MARKERS", "3.5:move,6:kill")],
    );
    let end = agg.wait_done();
    let rounds = agg.rounds();
    let numbers: Vec<u64> = rounds.iter().map(|r| r.round).collect();
    assert_eq!(
        numbers,
        (1..=DEFAULT_ROUNDS).collect::<Vec<_>>(),
        "{:#?}",
        agg.log()
    );
    assert!(rounds.iter().all(|r| r.answered == 4), "{rounds:?}");
    assert!(
        rounds.windows(2).all(|w| w[1].loss < w[0].loss),
        "the test loss falls every round: {rounds:?}"
    );
    // The target, with the defaults: federated within 2 points of centralised, and both
    // far above what a broken model reaches (10% is chance; a model that ignores the pixels or
    // averages badly stays well below 85%).
    let last = &rounds[rounds.len() - 1];
    let central = end.central_acc;
    eprintln!(
        "test accuracy per round: {:?}; centralised {central}",
        rounds.iter().map(|r| r.acc).collect::<Vec<_>>()
    );
    assert!(central > 0.9, "the centralised baseline learns: {central}");
    assert!(last.acc > 0.85, "federated learns: {}", last.acc);
    assert!(
        last.acc >= central - 0.02,
        "federated {} is more than 2 points below centralised {central}",
        last.acc
    );
    let log = agg.log();
    let done = log
        .iter()
        .find(|l| l.starts_with("done "))
        .expect("a done line");
    assert_eq!(
        field(done, "central_acc"),
        Some(format!("{central:.4}").as_str())
    );
    assert_eq!(
        field(done, "acc"),
        Some(format!("{:.4}", last.acc).as_str())
    );
    // The processes compute, to the bit, what the same rounds in one process compute: the data
    // cut, the local SGD and the averaging are the library's, the TCP adds nothing.
    let shares: Vec<Dataset> = (0..DEFAULT_TRAINERS as u64)
        .map(|r| data::for_trainer(0, r, DEFAULT_TRAINERS, DEFAULT_ALPHA).expect("data"))
        .collect();
    let cut = data::cut(0).expect("data");
    let (curve, model) = learn::federated(&shares, &cut.test, DEFAULT_SGD, DEFAULT_ROUNDS, 0);
    assert_eq!(end.checksum, format!("{:016x}", model.checksum()));
    assert_eq!(end.acc, curve[curve.len() - 1].accuracy);
    // STATUS tells the same story as the last log line.
    assert_eq!(end.round, DEFAULT_ROUNDS);
    assert_eq!(end.checksum, last.checksum);
    assert!((end.loss - last.loss).abs() < 1e-6, "{end:?} vs {last:?}");
    // The picture: a point per round, both curves, the markers passed in.
    let picture = std::fs::read_to_string(&svg.0).expect("PLOT_SVG was written");
    assert_eq!(picture.matches("<circle").count(), DEFAULT_ROUNDS as usize);
    assert_eq!(picture.matches("<polyline").count(), 2);
    assert!(picture.contains(">move<") && picture.contains(">kill<"));
    assert!(picture.contains(&format!("centralised: {:.1}%", central * 100.0)));
    // Every trainer trained every round.
    for t in &trainers {
        let trained = t.log().iter().filter(|l| l.starts_with("round=")).count();
        assert_eq!(trained, DEFAULT_ROUNDS as usize, "{:#?}", t.log());
    }
    // Finished, it keeps serving until SIGTERM, then exits cleanly at once.
    thread::sleep(Duration::from_millis(200));
    assert!(
        agg.child.try_wait().expect("wait").is_none(),
        "still running"
    );
    assert_eq!(agg.status().round, DEFAULT_ROUNDS);
    let pid = agg.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    // It exits with status 0: a process SIGTERM ends without a handler reads as killed by the
    // signal, not as a success. (How fast it exits is not a correctness claim.)
    let start = Instant::now();
    let code = loop {
        if let Some(code) = agg.child.try_wait().expect("wait") {
            break code;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "still running {DEADLINE:?} after SIGTERM; output:\n{}",
            agg.log().join("\n")
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert!(code.success(), "{code:?}");
}

#[test]
fn a_checkpoint_restored_elsewhere_continues_to_the_same_model() {
    let (_trainers, call) = trainers(4);
    // A runs 3 rounds and is checkpointed.
    let a = aggregator(&call, 3, &[]);
    let a_end = a.wait_done();
    let checkpoint = a.ask("CHECKPOINT");
    let state = State::parse(&checkpoint).expect("CHECKPOINT prints a state line");
    assert_eq!(state.round, 3);
    assert_eq!(format!("{:016x}", state.model.checksum()), a_end.checksum);
    assert_eq!((state.updates, state.missed), (12, 0));
    assert_eq!(state.history.len(), 3);
    assert_eq!(state.acc, a_end.acc);

    // B starts from it through BRUME_RESTORE_FILE and runs rounds 4 to 6 only.
    let restore = TempFile::new("restore");
    std::fs::write(&restore.0, &checkpoint).expect("write the state");
    let restore_path = restore.0.display().to_string();
    let b = aggregator(&call, 6, &[("BRUME_RESTORE_FILE", &restore_path)]);
    let b_end = b.wait_done();
    let b_rounds: Vec<u64> = b.rounds().iter().map(|r| r.round).collect();
    assert_eq!(b_rounds, [4, 5, 6], "{:#?}", b.log());

    // C starts fresh and is told RESTORE while running: it answers with A's round and checksum,
    // and whatever it had done is replaced by rounds 4 to 6 from A's state.
    let c = aggregator(&call, 6, &[("ROUND_PAUSE_MS", "100")]);
    let ok = c.ask(&format!("RESTORE {checkpoint}"));
    assert_eq!(ok, format!("OK round=3 checksum={}", a_end.checksum));
    let c_end = c.wait_done();
    let log = c.log();
    let restored = log
        .iter()
        .position(|l| l.starts_with("restored round=3/6"))
        .expect("logged");
    let after: Vec<u64> = log[restored..]
        .iter()
        .filter_map(|l| RoundLine::parse(l))
        .map(|r| r.round)
        .collect();
    assert_eq!(after, [4, 5, 6], "{log:#?}");

    // D runs 6 rounds uninterrupted: checkpoint-and-restore changed nothing, to the bit.
    let d = aggregator(&call, 6, &[]);
    let d_end = d.wait_done();
    assert_eq!(b_end.checksum, d_end.checksum);
    assert_eq!(c_end.checksum, d_end.checksum);
    assert_ne!(d_end.checksum, a_end.checksum);
    let (b_state, d_state) = (
        State::parse(&b.ask("CHECKPOINT")).expect("B's state"),
        State::parse(&d.ask("CHECKPOINT")).expect("D's state"),
    );
    assert_eq!(b_state, d_state, "the counters travel with the state too");
}

/// Stands in for a trainer at its own address: passes each exchange (one request line, one
/// answer line) on to the trainer, until the first `TRAIN` of round `kill_at` or later. Then it
/// kills the trainer (and reaps it) and closes that connection unanswered; every later call is
/// closed unanswered too, as a dead trainer's would fail. So the trainer dies at a point of the
/// run the test chooses, whatever the machine's speed. Stopped (and joined) on drop.
struct KillingProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl KillingProxy {
    fn start(mut victim: Proc, kill_at: u64) -> KillingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("its address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut alive = true;
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let mut request = String::new();
                if BufReader::new(&conn).read_line(&mut request).is_err() {
                    continue;
                }
                let round = request
                    .strip_prefix("TRAIN ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|r| r.parse::<u64>().ok());
                if alive && round.is_some_and(|r| r >= kill_at) {
                    let _ = victim.child.kill();
                    let _ = victim.child.wait();
                    alive = false;
                }
                if !alive {
                    continue; // closed unanswered
                }
                let answer = (|| -> std::io::Result<String> {
                    let mut t = TcpStream::connect(("127.0.0.1", victim.port))?;
                    t.write_all(request.as_bytes())?;
                    let mut line = String::new();
                    BufReader::new(t).read_line(&mut line)?;
                    Ok(line)
                })();
                if let Ok(line) = answer {
                    let _ = (&conn).write_all(line.as_bytes());
                }
            }
            drop(victim);
        });
        KillingProxy {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for KillingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_trainer_killed_mid_run_leaves_the_others_to_finish() {
    let (mut trainers, _) = trainers(4);
    // Trainer 3 is reached through a proxy that kills it when round 3 asks for it: rounds 1
    // and 2 have all four answers, rounds 3 to 8 three.
    let proxy = KillingProxy::start(trainers.pop().expect("four trainers"), 3);
    let dead_addr = format!("127.0.0.1:{}", proxy.port);
    let call = trainers
        .iter()
        .map(|t| format!("127.0.0.1:{}", t.port))
        .chain([dead_addr.clone()])
        .collect::<Vec<_>>()
        .join(",");
    let env = [
        ("RETRIES", "2"),
        ("RETRY_BACKOFF_MS", "50"),
        ("MIN_TRAINERS", "3"),
    ];
    let agg = aggregator(&call, 8, &env);
    let end = agg.wait_done();
    assert_eq!(end.round, 8);
    let rounds = agg.rounds();
    let answered: Vec<usize> = rounds.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [4, 4, 3, 3, 3, 3, 3, 3], "{:#?}", agg.log());
    // Without trainer 3's share (most of the 2s) from round 3 on, the others still learn.
    assert!(rounds[7].loss < rounds[0].loss, "{rounds:?}");
    assert!(rounds[7].acc > 0.8, "{rounds:?}");
    let log = agg.log().join("\n");
    assert!(
        log.contains(&format!(
            "trainer 3 at {dead_addr}: the trainer closed the connection without answering"
        )),
        "{log}"
    );
    assert!(
        log.contains("retry 2/2") && log.contains("left out of this round"),
        "{log}"
    );
    let state = State::parse(&agg.ask("CHECKPOINT")).expect("state");
    assert_eq!(state.missed, 6);
    assert_eq!(state.updates, 8 * 4 - 6);
    drop(proxy);
}

#[test]
fn too_few_trainers_hold_the_round_and_bad_lines_get_errors() {
    let (trainers, call) = trainers(1);
    // Port 0: nothing can ever listen there, so every connection is refused.
    let nobody = "127.0.0.1:0";
    let call = format!("{call},{nobody}");
    let agg = aggregator(&call, 3, &[("MIN_TRAINERS", "2"), ("RETRIES", "0")]);
    agg.wait_for_line("round=1/3 trainers=1/2 below MIN_TRAINERS=2: trying again");
    agg.wait_for_line(&format!("trainer 1 at {nobody}: cannot connect"));
    assert_eq!(agg.status().round, 0);
    assert!(!agg.status().done);

    assert!(agg
        .ask("HELLO")
        .starts_with("ERR unknown command \"HELLO\""));
    assert!(agg
        .ask("RESTORE junk")
        .starts_with("ERR unknown command or tag \"junk\""));
    let t = &trainers[0];
    assert!(t
        .ask("TRAIN x 1,2")
        .starts_with("ERR round \"x\" is not a number"));
    assert!(t
        .ask("TRAIN 1 1,2")
        .starts_with("ERR the model has 2 numbers"));
    assert_eq!(agg.status().round, 0, "the errors changed nothing");

    // Settings that cannot work stop the program at once, saying why.
    let bad_file = TempFile::new("bad-state");
    std::fs::write(&bad_file.0, "fedavg-state/2 round=1").expect("write the state");
    let bad_state = bad_file.0.display().to_string();
    let no_state = format!("{bad_state}.absent");
    for (key, value, says) in [
        (
            "MIN_TRAINERS",
            "3",
            "MIN_TRAINERS=3 but BRUME_CALL_TRAINER lists 2 trainers",
        ),
        (
            "BRUME_RESTORE_FILE",
            bad_state.as_str(),
            "BRUME_RESTORE_FILE: the line has no acc",
        ),
        ("BRUME_RESTORE_FILE", no_state.as_str(), "cannot read it"),
        ("ROUNDS", "ten", "ROUNDS=\"ten\" is not usable"),
        ("ROUNDS", "1001", "ROUNDS=1001: use 1000 at most"),
        ("LEARNING_RATE", "-1", "LEARNING_RATE=\"-1\" is not usable"),
        (
            "PLOT_MARKERS",
            "move",
            "PLOT_MARKERS: marker \"move\" is not round:label",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_aggregator"))
            .env_clear()
            .env("BRUME_CALL_TRAINER", &call)
            .env(key, value)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "wanted {says:?} in {err}");
    }
    for (key, value, says) in [
        ("TRAINERS", "0", "TRAINERS=0"),
        ("ALPHA", "0", "ALPHA=0"),
        ("BATCH", "0", "BATCH=\"0\" is not usable"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
            .env_clear()
            .env(key, value)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "wanted {says:?} in {err}");
    }
}
