//! The text lines the programs exchange, each ending in `\n`, and the aggregator's state line.
//!
//! Aggregator → trainer, one TCP connection per round (a trainer also serves several requests on
//! one connection):
//!
//! ```text
//! TRAIN <round> <model>                     -> UPDATE <round> <samples> <loss> <model>
//!                                           or ERR <reason>
//! ```
//!
//! A `<model>` is [`DIM`] (650) comma-separated decimals, the weights class by class then the
//! biases, printed in Rust's shortest round-trip form so text carries the exact bits (about
//! 13 KB). The aggregator's whole state is one [`State`] line,
//! `fedavg-state/2 round=.. acc=.. loss=.. updates=.. missed=.. history=.. model=..`: what
//! `CHECKPOINT` prints and what `RESTORE` and `BRUME_RESTORE_FILE` take back. Even with every number
//! at its longest it stays under [`crate::service::MAX_LINE`] (64 KiB), and so under the 3 MiB
//! brume keeps of an application checkpoint.

use std::fmt;

use crate::model::{Model, DIM};

/// Why a line could not be understood; the text says what was expected.
#[derive(Debug, Clone, PartialEq)]
pub enum WireError {
    Empty,
    UnknownCommand(String),
    Missing(&'static str),
    Number { field: &'static str, value: String },
    NotFinite(&'static str),
    Dimension { got: usize, want: usize },
    History { got: usize, round: u64 },
    Unexpected(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Empty => write!(f, "empty line: send a command"),
            WireError::UnknownCommand(c) => write!(f, "unknown command or tag \"{c}\""),
            WireError::Missing(field) => write!(f, "the line has no {field}"),
            WireError::Number { field, value } => {
                write!(
                    f,
                    "{field} \"{value}\" is not a number of the expected kind"
                )
            }
            WireError::NotFinite(field) => write!(f, "{field} holds NaN or infinity"),
            WireError::Dimension { got, want } => {
                write!(f, "the model has {got} numbers, this build uses {want}")
            }
            WireError::History { got, round } => {
                write!(f, "the history has {got} accuracies for {round} rounds")
            }
            WireError::Unexpected(t) => write!(f, "unexpected \"{t}\" at the end of the line"),
        }
    }
}

impl std::error::Error for WireError {}

/// `TRAIN <round> <model>`: start from `model` and train round `round`.
#[derive(Debug, Clone, PartialEq)]
pub struct Train {
    pub round: u64,
    pub model: Model,
}

/// `UPDATE <round> <samples> <loss> <model>`: a trainer's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub round: u64,
    pub samples: u64,
    pub loss: f64,
    pub model: Model,
}

/// Everything the aggregator needs to carry on elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The last completed round (0 before the first).
    pub round: u64,
    /// Test accuracy of `model`.
    pub acc: f64,
    /// Test loss (mean cross-entropy) of `model`.
    pub loss: f64,
    /// Trainer answers averaged so far.
    pub updates: u64,
    /// Trainer answers missed so far (unreachable, failed or too slow).
    pub missed: u64,
    /// Test accuracy after each completed round, round 1 first: the curve a picture draws, which
    /// travels with the state so a moved aggregator can still draw all of it.
    pub history: Vec<f64>,
    pub model: Model,
}

const STATE_TAG: &str = "fedavg-state/2";

/// `v` in the shorter of Rust's two shortest-round-trip forms, plain (`0.125`) or exponent
/// (`1.5e-20`): either parses back to the same bits, and the shorter bounds a number at 24
/// characters where the plain form of a tiny weight runs to hundreds.
pub fn number_text(v: f64) -> String {
    let plain = v.to_string();
    let exp = format!("{v:e}");
    if exp.len() < plain.len() {
        exp
    } else {
        plain
    }
}

/// Numbers comma-separated, each by [`number_text`].
fn numbers_text(vs: &[f64]) -> String {
    let parts: Vec<String> = vs.iter().copied().map(number_text).collect();
    parts.join(",")
}

pub fn model_text(m: &Model) -> String {
    numbers_text(&m.0)
}

pub fn parse_model(text: &str) -> Result<Model, WireError> {
    let mut w = Vec::with_capacity(DIM);
    for part in text.split(',') {
        w.push(finite("model", part)?);
    }
    if w.len() != DIM {
        return Err(WireError::Dimension {
            got: w.len(),
            want: DIM,
        });
    }
    Ok(Model(w))
}

impl fmt::Display for Train {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TRAIN {} {}", self.round, model_text(&self.model))
    }
}

impl Train {
    pub fn parse(line: &str) -> Result<Self, WireError> {
        let mut t = Tokens::new(line, "TRAIN")?;
        let round = t.number("round")?;
        let model = parse_model(t.next("model")?)?;
        t.end()?;
        Ok(Train { round, model })
    }
}

impl fmt::Display for Update {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, n, l) = (self.round, self.samples, number_text(self.loss));
        write!(f, "UPDATE {r} {n} {l} {}", model_text(&self.model))
    }
}

impl Update {
    pub fn parse(line: &str) -> Result<Self, WireError> {
        let mut t = Tokens::new(line, "UPDATE")?;
        let round = t.number("round")?;
        let samples = t.number("samples")?;
        let loss = finite("loss", t.next("loss")?)?;
        let model = parse_model(t.next("model")?)?;
        t.end()?;
        Ok(Update {
            round,
            samples,
            loss,
            model,
        })
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let State {
            round,
            acc,
            loss,
            updates,
            missed,
            history,
            model,
        } = self;
        let model = model_text(model);
        let history = numbers_text(history);
        let (acc, loss) = (number_text(*acc), number_text(*loss));
        write!(
            f,
            "{STATE_TAG} round={round} acc={acc} loss={loss} updates={updates} missed={missed} history={history} model={model}"
        )
    }
}

impl State {
    pub fn parse(line: &str) -> Result<Self, WireError> {
        let mut t = Tokens::new(line, STATE_TAG)?;
        let mut field = |key: &'static str| -> Result<&str, WireError> {
            let token = t.next(key)?;
            match token.split_once('=') {
                Some((k, v)) if k == key => Ok(v),
                _ => Err(WireError::Missing(key)),
            }
        };
        let round = int("round", field("round")?)?;
        let acc = finite("acc", field("acc")?)?;
        let loss = finite("loss", field("loss")?)?;
        let updates = int("updates", field("updates")?)?;
        let missed = int("missed", field("missed")?)?;
        let history_text = field("history")?;
        let model = parse_model(field("model")?)?;
        t.end()?;
        let history = if history_text.is_empty() {
            Vec::new()
        } else {
            history_text
                .split(',')
                .map(|a| finite("history", a))
                .collect::<Result<Vec<f64>, _>>()?
        };
        if history.len() as u64 != round {
            return Err(WireError::History {
                got: history.len(),
                round,
            });
        }
        Ok(State {
            round,
            acc,
            loss,
            updates,
            missed,
            history,
            model,
        })
    }
}

/// The whitespace-separated words of a line that must start with `tag`.
struct Tokens<'a>(std::str::SplitWhitespace<'a>);

impl<'a> Tokens<'a> {
    fn new(line: &'a str, tag: &str) -> Result<Self, WireError> {
        let mut words = line.split_whitespace();
        match words.next() {
            None => Err(WireError::Empty),
            Some(w) if w == tag => Ok(Tokens(words)),
            Some(w) => Err(WireError::UnknownCommand(w.to_string())),
        }
    }

    fn next(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        self.0.next().ok_or(WireError::Missing(field))
    }

    fn number(&mut self, field: &'static str) -> Result<u64, WireError> {
        int(field, self.next(field)?)
    }

    fn end(&mut self) -> Result<(), WireError> {
        match self.0.next() {
            None => Ok(()),
            Some(t) => Err(WireError::Unexpected(t.to_string())),
        }
    }
}

fn int(field: &'static str, text: &str) -> Result<u64, WireError> {
    text.parse().map_err(|_| WireError::Number {
        field,
        value: text.to_string(),
    })
}

fn finite(field: &'static str, text: &str) -> Result<f64, WireError> {
    let v: f64 = text.parse().map_err(|_| WireError::Number {
        field,
        value: text.to_string(),
    })?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(WireError::NotFinite(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn odd_model() -> Model {
        Model(
            (0..DIM)
                .map(|i| (i as f64 + 0.1) / 3.0 - 1e-17 * i as f64)
                .collect(),
        )
    }

    #[test]
    fn lines_round_trip_to_the_exact_bits() {
        let m = odd_model();
        let train = Train {
            round: 7,
            model: m.clone(),
        };
        assert_eq!(Train::parse(&train.to_string()), Ok(train));
        let update = Update {
            round: 7,
            samples: 2500,
            loss: 0.1 / 3.0,
            model: m.clone(),
        };
        assert_eq!(Update::parse(&update.to_string()), Ok(update));
        let state = State {
            round: 3,
            acc: 0.9,
            loss: 1.0 / 7.0,
            updates: 12,
            missed: 1,
            history: vec![0.5, 0.8, 1.0 / 3.0],
            model: m,
        };
        let line = state.to_string();
        assert!(!line.contains('\n'));
        let back = State::parse(&line).expect("parses");
        assert_eq!(back.model.checksum(), state.model.checksum());
        assert_eq!(back, state);
        // Before the first round the history is empty, and that round-trips too.
        let start = State {
            round: 0,
            history: Vec::new(),
            ..state
        };
        assert_eq!(State::parse(&start.to_string()), Ok(start));
    }

    #[test]
    fn the_longest_state_line_fits_a_request_and_a_brume_checkpoint() {
        // Every number at its longest shortest-round-trip form (a negative subnormal-ish with a
        // 17-digit mantissa and a 3-digit exponent), and a long history.
        let long = -1.234_567_890_123_456_7e-300;
        let state = State {
            round: 1000,
            acc: long,
            loss: long,
            updates: u64::MAX,
            missed: u64::MAX,
            history: vec![long; 1000],
            model: Model(vec![long; DIM]),
        };
        let line = state.to_string();
        assert!(
            line.len() < crate::service::MAX_LINE as usize,
            "{} bytes",
            line.len()
        );
        assert!(line.len() < 128 * 1024, "{} bytes", line.len());
        assert_eq!(State::parse(&line), Ok(state));
        // Typical numbers keep their plain form.
        assert_eq!(number_text(0.125), "0.125");
        assert_eq!(number_text(-3.0), "-3");
        assert_eq!(number_text(1.5e-20), "1.5e-20");
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let m = model_text(&odd_model());
        assert_eq!(Train::parse(""), Err(WireError::Empty));
        assert_eq!(
            Train::parse("HELLO 1"),
            Err(WireError::UnknownCommand("HELLO".into()))
        );
        assert_eq!(Train::parse("TRAIN 1"), Err(WireError::Missing("model")));
        assert!(matches!(
            Train::parse(&format!("TRAIN -1 {m}")),
            Err(WireError::Number { field: "round", .. })
        ));
        assert_eq!(
            Train::parse("TRAIN 1 1,2,3"),
            Err(WireError::Dimension { got: 3, want: DIM })
        );
        let nan = format!("NaN{}", &m[m.find(',').expect("commas")..]);
        assert_eq!(
            Train::parse(&format!("TRAIN 1 {nan}")),
            Err(WireError::NotFinite("model"))
        );
        assert_eq!(
            Train::parse(&format!("TRAIN 1 {m} extra")),
            Err(WireError::Unexpected("extra".into()))
        );
        assert_eq!(
            State::parse(&format!(
                "{STATE_TAG} round=1 acc=0.5 loss=1 missed=0 updates=0 history=0.5 model={m}"
            )),
            Err(WireError::Missing("updates"))
        );
        assert_eq!(
            State::parse(&format!(
                "{STATE_TAG} round=2 acc=0.5 loss=1 updates=0 missed=0 history=0.5 model={m}"
            )),
            Err(WireError::History { got: 1, round: 2 })
        );
        // A state line of the old synthetic-regression format is refused, not misread.
        assert_eq!(
            State::parse("fedavg-state/1 round=1 loss=1 updates=0 missed=0 model=1,2"),
            Err(WireError::UnknownCommand("fedavg-state/1".into()))
        );
    }
}
