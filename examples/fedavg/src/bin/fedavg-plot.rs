//! `fedavg-plot`: draws the accuracy picture of a run from an aggregator's log, for a script
//! that watched the run from outside (scripts/demo.sh): the aggregator's own `PLOT_SVG` lands
//! where the aggregator runs, inside its container on Docker, and its markers must be known
//! before it starts.
//!
//! Usage: `fedavg-plot [--markers 3.5:move,6.5:kill] [--title TEXT] [--state-from ADDR] <
//! aggregator.log > accuracy.svg`. The log holds the aggregator's `central ...` and `round=...`
//! lines (other lines are ignored; a round seen twice draws its last line). With `--state-from
//! 127.0.0.1:PORT` the rounds the log lacks (a line printed on the old host just before a live
//! move is in no log the new host serves) come from the running aggregator's own history, its
//! `CHECKPOINT` state line.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use brume_fedavg::plot::{self, Curves};
use brume_fedavg::wire::State;

const USAGE: &str = "usage: fedavg-plot [--markers ROUND:LABEL,...] [--title TEXT] [--state-from ADDR] < aggregator.log > accuracy.svg\n\
  Draws test accuracy per round (federated and centralised) from an aggregator's log, with a\n\
  dashed line per marker (e.g. --markers 3.5:move,6.5:kill: between rounds 3 and 4, 6 and 7).\n\
  --state-from 127.0.0.1:PORT takes the rounds the log lacks from the running aggregator's\n\
  own history (its CHECKPOINT state line).";

/// The running aggregator's state line at `address`, parsed.
fn state_from(address: &str) -> Result<State, String> {
    let s = std::net::TcpStream::connect(address).map_err(|e| format!("cannot connect: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    (&s).write_all(b"CHECKPOINT\n")
        .map_err(|e| format!("cannot ask: {e}"))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("no answer: {e}"))?;
    State::parse(line.trim_end()).map_err(|e| format!("not a state line ({e})"))
}

fn main() -> ExitCode {
    let mut markers = String::new();
    let mut title = "fedavg on the UCI digits: test accuracy per round".to_string();
    let mut state = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--markers", Some(v)) => markers = v,
            ("--title", Some(v)) => title = v,
            ("--state-from", Some(v)) => state = Some(v),
            ("--help" | "-h", _) => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("fedavg-plot: unexpected argument \"{a}\"\n{USAGE}");
                return ExitCode::FAILURE;
            }
        }
    }
    let markers = match plot::parse_markers(&markers) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("fedavg-plot: --markers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut log = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut log) {
        eprintln!("fedavg-plot: cannot read the log on stdin: {e}");
        return ExitCode::FAILURE;
    }
    let mut curves = Curves::from_log(&log);
    if let Some(address) = state {
        match state_from(&address) {
            Ok(s) => {
                curves.fill_from_history(&s.history);
            }
            Err(e) => eprintln!("fedavg-plot: --state-from {address}: {e}; drawing the log alone"),
        }
    }
    if curves.federated.is_empty() {
        eprintln!("fedavg-plot: no `round=<r>/<R> ... acc=<a>` line on stdin");
        return ExitCode::FAILURE;
    }
    let svg = plot::svg(&curves, &markers, &title);
    if let Err(e) = std::io::stdout().write_all(svg.as_bytes()) {
        eprintln!("fedavg-plot: cannot write the picture: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
