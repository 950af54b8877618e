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
//! A `<model>` is [`DIM`] comma-separated decimals, weights then bias, printed in Rust's
//! shortest round-trip form so text carries the exact bits. The aggregator's whole state is one
//! [`State`] line, `fedavg-state/1 round=.. loss=.. updates=.. missed=.. model=..`: what
//! `CHECKPOINT` prints and what `RESTORE` and `BRUME_RESTORE` take back.

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
    /// Held-out loss of `model`.
    pub loss: f64,
    /// Trainer answers averaged so far.
    pub updates: u64,
    /// Trainer answers missed so far (unreachable, failed or too slow).
    pub missed: u64,
    pub model: Model,
}

const STATE_TAG: &str = "fedavg-state/1";

pub fn model_text(m: &Model) -> String {
    let parts: Vec<String> = m.0.iter().map(f64::to_string).collect();
    parts.join(",")
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
        let (r, n, l) = (self.round, self.samples, self.loss);
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
            loss,
            updates,
            missed,
            model,
        } = self;
        let model = model_text(model);
        write!(
            f,
            "{STATE_TAG} round={round} loss={loss} updates={updates} missed={missed} model={model}"
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
        let loss = finite("loss", field("loss")?)?;
        let updates = int("updates", field("updates")?)?;
        let missed = int("missed", field("missed")?)?;
        let model = parse_model(field("model")?)?;
        t.end()?;
        Ok(State {
            round,
            loss,
            updates,
            missed,
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
            loss: 1.0 / 7.0,
            updates: 12,
            missed: 1,
            model: m,
        };
        let line = state.to_string();
        assert!(!line.contains('\n'));
        let back = State::parse(&line).expect("parses");
        assert_eq!(back.model.checksum(), state.model.checksum());
        assert_eq!(back, state);
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
                "{STATE_TAG} round=1 loss=1 missed=0 updates=0 model={m}"
            )),
            Err(WireError::Missing("updates"))
        );
    }
}
