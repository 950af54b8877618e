//! `aggregator`: runs `ROUNDS` rounds of federated averaging over the trainers in
//! `BRUME_CALL_TRAINER`, and serves its status and its checkpoint on 127.0.0.1:$PORT.
//!
//! At start it trains the same softmax regression on the pooled training data (the centralised
//! baseline, `ROUNDS` x `EPOCHS_PER_ROUND` passes) and prints `central acc=..`. Then each round
//! it sends `TRAIN <round> <model>` to every trainer at once (one connection each, retried a few
//! times with backoff while a trainer is unreachable), averages the updates that came back
//! weighted by sample count, scores the average on the held-out test set (accuracy and
//! cross-entropy) and prints one line; with `PLOT_SVG` set it redraws the accuracy picture
//! there. A round with fewer than `MIN_TRAINERS` answers is not counted and is tried again.
//!
//! The control lines: `STATUS` → `round=<r>/<R> acc=<a> loss=<l> central_acc=<a>
//! checksum=<hex> done=<bool>`;
//! `CHECKPOINT` → the state line; `RESTORE <state line>` → `OK round=<r> checksum=<hex>`, after
//! which the rounds continue from that state (a round in flight is dropped). The file
//! `BRUME_RESTORE_FILE` names holds a state line to start from. After the last round it keeps
//! serving until SIGTERM.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use brume_fedavg::data::{self, Dataset};
use brume_fedavg::learn::{self, DEFAULT_ROUNDS};
use brume_fedavg::model::{fedavg, Model, Score, Sgd};
use brume_fedavg::plot::{self, Curves, Marker};
use brume_fedavg::service::{self, var, StartError};
use brume_fedavg::wire::{State, Train, Update};

/// More rounds would make the state line's history too long for one request line.
const MAX_ROUNDS: u64 = 1000;

struct Config {
    trainers: Vec<String>,
    rounds: u64,
    sgd: Sgd,
    central_epochs: u32,
    plot: Option<String>,
    markers: Vec<Marker>,
    min_trainers: usize,
    round_timeout: Duration,
    retries: u32,
    backoff: Duration,
    pause: Duration,
}

/// The state, and a generation bumped by every RESTORE so a round begun before it is dropped.
struct Shared {
    inner: Mutex<(State, u64)>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, (State, u64)> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn main() {
    service::exit_on_sigterm();
    let cfg = config().unwrap_or_else(|e| start_err(&e));
    let seed =
        var("DATA_SEED", 0u64, "an unsigned 64-bit integer").unwrap_or_else(|e| start_err(&e));
    let cut = data::cut(seed).unwrap_or_else(|e| start_err(&e));
    let restore = std::env::var("BRUME_RESTORE_FILE").ok().map(|file| {
        let line = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            start_err(&format!("BRUME_RESTORE_FILE={file}: cannot read it: {e}"))
        });
        State::parse(line.trim()).unwrap_or_else(|e| start_err(&format!("BRUME_RESTORE_FILE: {e}")))
    });
    let state = match restore {
        Some(state) => state,
        None => {
            let model = Model::zeros();
            let score = model.score(&cut.test);
            State {
                round: 0,
                acc: score.accuracy,
                loss: score.loss,
                updates: 0,
                missed: 0,
                history: Vec::new(),
                model,
            }
        }
    };
    // The baseline: deterministic, so a restored aggregator computes the same one again.
    let started = Instant::now();
    let (curve, _) = learn::centralised(&cut.train, &cut.test, cfg.sgd, cfg.central_epochs, seed);
    let central = curve.last().copied().unwrap_or(Score {
        accuracy: 0.0,
        loss: 0.0,
    });
    let accs: Vec<String> = curve.iter().map(|s| format!("{:.4}", s.accuracy)).collect();
    println!(
        "central acc={:.4} loss={:.6} epochs={} epochs_per_round={} samples={} test={} ms={} curve={}",
        central.accuracy,
        central.loss,
        cfg.central_epochs,
        cfg.sgd.epochs,
        cut.train.len(),
        cut.test.len(),
        started.elapsed().as_millis(),
        accs.join(",")
    );
    println!(
        "start round={}/{} acc={:.4} loss={:.6} checksum={:016x} trainers={} min_trainers={}",
        state.round,
        cfg.rounds,
        state.acc,
        state.loss,
        state.model.checksum(),
        cfg.trainers.len(),
        cfg.min_trainers
    );
    let per_round = f64::from(cfg.sgd.epochs);
    let baseline = Curves {
        federated: Vec::new(),
        central: curve
            .iter()
            .enumerate()
            .map(|(e, s)| ((e + 1) as f64 / per_round, s.accuracy))
            .collect(),
        central_final: (!curve.is_empty()).then_some(central.accuracy),
    };
    draw(&cfg, &baseline, &state);
    // Shared by the round loop and the control threads for the life of the process.
    let shared: &'static Shared = Box::leak(Box::new(Shared {
        inner: Mutex::new((state, 0)),
        changed: Condvar::new(),
    }));
    let listener = service::listen().unwrap_or_else(|e| start_err(&e));
    let rounds = cfg.rounds;
    let central_acc = central.accuracy;
    thread::spawn(move || {
        service::serve_lines(listener, move |l| control(shared, rounds, central_acc, l))
    });
    run(&cfg, shared, &cut.test, &baseline);
}

/// Redraws the picture at `PLOT_SVG`, if set, from the baseline and the state's history; a
/// file that cannot be written is logged, never fatal.
fn draw(cfg: &Config, baseline: &Curves, state: &State) {
    let Some(path) = &cfg.plot else { return };
    let curves = Curves {
        federated: (1..).zip(state.history.iter().copied()).collect(),
        ..baseline.clone()
    };
    let title = format!(
        "fedavg on the UCI digits: test accuracy, {} label-skewed trainers vs centralised",
        cfg.trainers.len()
    );
    let svg = plot::svg(&curves, &cfg.markers, &title);
    // Written beside and renamed, so a reader never sees half a picture.
    let tmp = format!("{path}.tmp");
    if let Err(e) = std::fs::write(&tmp, svg).and_then(|()| std::fs::rename(&tmp, path)) {
        eprintln!("cannot write PLOT_SVG={path}: {e}");
    }
}

fn start_err(e: &dyn std::fmt::Display) -> ! {
    service::fail("aggregator cannot start", e)
}

fn config() -> Result<Config, String> {
    let list = std::env::var("BRUME_CALL_TRAINER").unwrap_or_default();
    let trainers: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if trainers.is_empty() {
        return Err("BRUME_CALL_TRAINER is empty: set it to the trainers' addresses, comma-separated, e.g. 127.0.0.1:7001,127.0.0.1:7002".into());
    }
    let e = |e: StartError| e.to_string();
    let ms =
        |name, default| var(name, default, "a number of milliseconds").map(Duration::from_millis);
    let rounds = var("ROUNDS", DEFAULT_ROUNDS, "a number of rounds, 1000 at most").map_err(e)?;
    if rounds > MAX_ROUNDS {
        return Err(format!("ROUNDS={rounds}: use {MAX_ROUNDS} at most (the state line keeps every round's accuracy)"));
    }
    let sgd = learn::sgd_from_env().map_err(e)?;
    let passes = u32::try_from(rounds)
        .unwrap_or(u32::MAX)
        .saturating_mul(sgd.epochs);
    let markers = plot::parse_markers(&std::env::var("PLOT_MARKERS").unwrap_or_default())
        .map_err(|m| format!("PLOT_MARKERS: {m}"))?;
    let cfg = Config {
        rounds,
        sgd,
        central_epochs: var("CENTRAL_EPOCHS", passes, "a number of epochs").map_err(e)?,
        plot: std::env::var("PLOT_SVG")
            .ok()
            .filter(|p| !p.trim().is_empty()),
        markers,
        min_trainers: var("MIN_TRAINERS", 1usize, "a number of trainers, 1 or more").map_err(e)?,
        round_timeout: ms("ROUND_TIMEOUT_MS", 30_000).map_err(e)?,
        retries: var("RETRIES", 5u32, "a number of retries").map_err(e)?,
        backoff: ms("RETRY_BACKOFF_MS", 200).map_err(e)?,
        pause: ms("ROUND_PAUSE_MS", 0).map_err(e)?,
        trainers,
    };
    if cfg.round_timeout.is_zero() {
        return Err("ROUND_TIMEOUT_MS=0 would give up before asking: use 1 or more".into());
    }
    if cfg.min_trainers == 0 || cfg.min_trainers > cfg.trainers.len() {
        return Err(format!(
            "MIN_TRAINERS={} but BRUME_CALL_TRAINER lists {} trainers: use 1 to {}",
            cfg.min_trainers,
            cfg.trainers.len(),
            cfg.trainers.len()
        ));
    }
    Ok(cfg)
}

/// One reply line per control line.
fn control(shared: &Shared, rounds: u64, central_acc: f64, line: &str) -> String {
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    match cmd {
        "STATUS" => {
            let (s, _) = &*shared.lock();
            let (r, a, l, c) = (s.round, s.acc, s.loss, s.model.checksum());
            format!(
                "round={r}/{rounds} acc={a} loss={l} central_acc={central_acc} checksum={c:016x} done={}",
                r >= rounds
            )
        }
        "CHECKPOINT" => shared.lock().0.to_string(),
        "RESTORE" => match State::parse(rest.trim()) {
            Err(e) => format!("ERR {e} (expected RESTORE <a line CHECKPOINT printed>)"),
            Ok(state) => {
                let (r, c) = (state.round, state.model.checksum());
                let mut inner = shared.lock();
                *inner = (state, inner.1 + 1);
                shared.changed.notify_all();
                println!("restored round={r}/{rounds} checksum={c:016x}");
                format!("OK round={r} checksum={c:016x}")
            }
        },
        _ => format!("ERR unknown command \"{cmd}\": use STATUS, CHECKPOINT or RESTORE <state>"),
    }
}

/// The rounds, forever: after the last one it waits for a RESTORE that sets it back.
fn run(cfg: &Config, shared: &Shared, test: &Dataset, baseline: &Curves) {
    let central_acc = baseline.central_final.unwrap_or(0.0);
    let mut announced_done = false;
    loop {
        let (state, generation) = {
            let mut inner = shared.lock();
            while inner.0.round >= cfg.rounds {
                if !announced_done {
                    let s = &inner.0;
                    println!(
                        "done round={}/{} acc={:.4} central_acc={central_acc:.4} loss={:.6} updates={} missed={} checksum={:016x}",
                        s.round,
                        cfg.rounds,
                        s.acc,
                        s.loss,
                        s.updates,
                        s.missed,
                        s.model.checksum()
                    );
                    announced_done = true;
                }
                inner = shared
                    .changed
                    .wait(inner)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            announced_done = false;
            inner.clone()
        };
        let round = state.round + 1;
        let started = Instant::now();
        let request = &Train {
            round,
            model: state.model.clone(),
        }
        .to_string();
        let answers: Vec<Option<Update>> = thread::scope(|s| {
            let asks: Vec<_> = cfg
                .trainers
                .iter()
                .enumerate()
                .map(|(i, addr)| s.spawn(move || ask(cfg, i, addr, round, request)))
                .collect();
            asks.into_iter().map(|h| h.join().ok().flatten()).collect()
        });
        // Replica order, not arrival order: the same answers always give the same bits.
        let got: Vec<(u64, &Model)> = answers
            .iter()
            .flatten()
            .map(|u| (u.samples, &u.model))
            .collect();
        let n = cfg.trainers.len();
        let average = if got.len() >= cfg.min_trainers {
            fedavg(&got)
        } else {
            None
        };
        let Some(model) = average else {
            println!(
                "round={round}/{} trainers={}/{n} below MIN_TRAINERS={}: trying again",
                cfg.rounds,
                got.len(),
                cfg.min_trainers
            );
            thread::sleep(cfg.pause.max(Duration::from_secs(1)));
            continue;
        };
        let Score { accuracy, loss } = model.score(test);
        let checksum = model.checksum();
        let mut history = state.history;
        history.push(accuracy);
        let next = State {
            round,
            acc: accuracy,
            loss,
            updates: state.updates + got.len() as u64,
            missed: state.missed + (n - got.len()) as u64,
            history,
            model,
        };
        {
            let mut inner = shared.lock();
            if inner.1 != generation {
                println!("round={round} dropped: the state was restored meanwhile");
                continue;
            }
            inner.0 = next.clone();
        }
        println!(
            "round={round}/{} trainers={}/{n} acc={accuracy:.4} loss={loss:.6} ms={} checksum={checksum:016x}",
            cfg.rounds,
            got.len(),
            started.elapsed().as_millis()
        );
        draw(cfg, baseline, &next);
        if round < cfg.rounds {
            thread::sleep(cfg.pause);
        }
    }
}

/// Trainer `i`'s update for `round`, or `None` (logged) once the retries are spent.
fn ask(cfg: &Config, i: usize, addr: &str, round: u64, request: &str) -> Option<Update> {
    let mut attempt = 0;
    loop {
        match exchange(cfg, addr, round, request) {
            Ok(update) => return Some(update),
            Err((e, retry)) if retry && attempt < cfg.retries => {
                let wait = cfg.backoff.saturating_mul(2u32.saturating_pow(attempt));
                attempt += 1;
                eprintln!(
                    "round {round}: trainer {i} at {addr}: {e}; retry {attempt}/{} in {} ms",
                    cfg.retries,
                    wait.as_millis()
                );
                thread::sleep(wait);
            }
            Err((e, _)) => {
                eprintln!("round {round}: trainer {i} at {addr}: {e}; left out of this round");
                return None;
            }
        }
    }
}

/// One request and its answer; an error says whether trying again could help.
fn exchange(cfg: &Config, addr: &str, round: u64, request: &str) -> Result<Update, (String, bool)> {
    let target: SocketAddr = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or((format!("\"{addr}\" is not an address"), false))?;
    let connect_timeout = cfg.round_timeout.min(Duration::from_secs(3));
    let stream = TcpStream::connect_timeout(&target, connect_timeout)
        .map_err(|e| (format!("cannot connect: {e}"), true))?;
    let io_err = |e: io::Error| {
        let timeout = matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        );
        if timeout {
            ("no answer within ROUND_TIMEOUT_MS".to_string(), false)
        } else {
            (format!("connection failed: {e}"), true)
        }
    };
    stream
        .set_read_timeout(Some(cfg.round_timeout))
        .map_err(io_err)?;
    (&stream)
        .write_all(format!("{request}\n").as_bytes())
        .map_err(io_err)?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(io_err)?;
    if line.is_empty() {
        return Err((
            "the trainer closed the connection without answering".into(),
            true,
        ));
    }
    let update = Update::parse(line.trim_end())
        .map_err(|e| (format!("bad answer ({e}): {}", line.trim_end()), false))?;
    if update.round != round {
        return Err((
            format!("answered round {} instead of {round}", update.round),
            false,
        ));
    }
    Ok(update)
}
