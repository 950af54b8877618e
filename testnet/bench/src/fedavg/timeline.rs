//! What the aggregator's log says, as the bench reads it while the run goes on: every distinct
//! line of interest with the time this program first saw it, and the figures drawn from them
//! (the timeline, lost rounds, rounds per minute, the gap a move left). No I/O: unit-tested
//! on log text.
//!
//! The aggregator's log is read again and again (`brume logs aggregator`), and after a live move
//! the new host's log holds only what the moved process printed there, so lines are gathered
//! across reads: a round line already seen keeps its first time.

use std::collections::{BTreeMap, BTreeSet};

/// One counted round: when it was first seen (s from the run's start), how many trainers
/// answered (of how many), the global model's test accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub round: u64,
    pub seen_s: f64,
    pub trainers: (u32, u32),
    pub acc: f64,
}

/// Every line of interest seen in the aggregator's log so far.
#[derive(Debug, Clone, Default)]
pub struct Log {
    /// The centralised baseline's line (`central acc=...`).
    pub central: Option<String>,
    /// Per round number, each distinct line that counted it, with when it was first seen. More
    /// than one line for a round means the round was done again (a restored state).
    rounds: BTreeMap<u64, Vec<(String, f64)>>,
    /// Rounds tried with fewer than MIN_TRAINERS answers (not counted, tried again).
    pub below_quorum: BTreeSet<u64>,
    /// Rounds dropped because the state was restored meanwhile.
    pub dropped: BTreeSet<u64>,
    /// The `done round=...` line.
    pub done: Option<String>,
}

/// `key=value` out of a line of such words.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// `round=<r>/<R>` or `round=<r>`: r.
fn round_of(line: &str) -> Option<u64> {
    field(line, "round")?.split('/').next()?.parse().ok()
}

impl Log {
    /// Takes in one read of the log, seen at `at_s`.
    pub fn absorb(&mut self, text: &str, at_s: f64) {
        for line in text.lines().map(str::trim) {
            if line.starts_with("central ") {
                self.central.get_or_insert_with(|| line.to_string());
            } else if line.starts_with("done ") {
                self.done.get_or_insert_with(|| line.to_string());
            } else if line.starts_with("round=") {
                let Some(r) = round_of(line) else { continue };
                if line.contains("below MIN_TRAINERS") {
                    self.below_quorum.insert(r);
                } else if line.contains(" dropped:") {
                    self.dropped.insert(r);
                } else if field(line, "acc").is_some() {
                    let seen = self.rounds.entry(r).or_default();
                    if !seen.iter().any(|(l, _)| l == line) {
                        seen.push((line.to_string(), at_s));
                    }
                }
            }
        }
    }

    /// The highest round counted so far (0 before the first).
    pub fn last_round(&self) -> u64 {
        self.rounds.keys().next_back().copied().unwrap_or(0)
    }

    /// The counted rounds, in order; a round done twice shows its last line.
    pub fn rounds(&self) -> Vec<Round> {
        self.rounds
            .iter()
            .filter_map(|(&round, lines)| {
                let (line, seen_s) = lines.last()?;
                let (got, of) = field(line, "trainers")?.split_once('/')?;
                Some(Round {
                    round,
                    seen_s: *seen_s,
                    trainers: (got.parse().ok()?, of.parse().ok()?),
                    acc: field(line, "acc")?.parse().ok()?,
                })
            })
            .collect()
    }

    /// Rounds that had to be redone or never came, out of `1..=total`: missing (neither seen
    /// in the log nor among the first `counted` rounds of the aggregator's own history: a line
    /// printed on the old host just before a move is in no log the new host serves), counted
    /// twice (a restored state), tried below the quorum, or dropped.
    pub fn lost_rounds(&self, total: u64, counted: u64) -> usize {
        let mut lost: BTreeSet<u64> = (1..=total)
            .filter(|r| !self.rounds.contains_key(r) && *r > counted)
            .collect();
        lost.extend(
            self.rounds
                .iter()
                .filter(|(_, lines)| lines.len() > 1)
                .map(|(r, _)| *r),
        );
        lost.extend(&self.below_quorum);
        lost.extend(&self.dropped);
        lost.len()
    }

    /// The log a [`brume_fedavg::plot::Curves::from_log`] reads: the baseline's line and each
    /// round's last line.
    pub fn plot_text(&self) -> String {
        let mut text = self.central.clone().unwrap_or_default();
        for lines in self.rounds.values() {
            if let Some((line, _)) = lines.last() {
                text.push('\n');
                text.push_str(line);
            }
        }
        text
    }

    /// (federated, centralised) final test accuracy from the `done` line, else from the last
    /// round and the baseline's line.
    pub fn accuracies(&self) -> (Option<f64>, Option<f64>) {
        let num = |l: &Option<String>, k: &str| {
            l.as_deref()
                .and_then(|l| field(l, k))
                .and_then(|v| v.parse::<f64>().ok())
        };
        let fed = num(&self.done, "acc").or_else(|| self.rounds().last().map(|r| r.acc));
        let central = num(&self.done, "central_acc").or_else(|| num(&self.central, "acc"));
        (fed, central)
    }
}

/// Rounds per minute between rounds `from` and `to` (both counted), by when they were seen;
/// `None` if either is missing or they are not apart.
pub fn rate(rounds: &[Round], from: u64, to: u64) -> Option<f64> {
    let at = |r: u64| rounds.iter().find(|x| x.round == r).map(|x| x.seen_s);
    let (a, b) = (at(from)?, at(to)?);
    (to > from && b > a).then(|| (to - from) as f64 / (b - a) * 60.0)
}

/// The gap before each round (seconds since the round before it was seen), from round 2 on:
/// (round, gap).
pub fn gaps(rounds: &[Round]) -> Vec<(u64, f64)> {
    rounds
        .windows(2)
        .filter(|w| w[1].round == w[0].round + 1)
        .map(|w| (w[1].round, w[1].seen_s - w[0].seen_s))
        .collect()
}

/// The pause a move left in the rounds, in ms: over the rounds whose interval (from the round
/// before to it) overlaps the move's window `[start_s, end_s]`, the largest gap beyond
/// `normal_gap_s`, the gap of an undisturbed round; 0 when no gap is longer.
pub fn move_pause_ms(rounds: &[Round], start_s: f64, end_s: f64, normal_gap_s: f64) -> f64 {
    rounds
        .windows(2)
        .filter(|w| w[1].round == w[0].round + 1)
        .filter(|w| w[0].seen_s < end_s && w[1].seen_s > start_s)
        .map(|w| w[1].seen_s - w[0].seen_s - normal_gap_s)
        .fold(0.0, f64::max)
        * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CENTRAL: &str = "central acc=0.9610 loss=0.134480 epochs=50 epochs_per_round=5 \
                           samples=1438 test=359 ms=67 curve=0.9276,0.9359";

    fn round(r: u64, got: u32, acc: &str) -> String {
        format!("round={r}/5 trainers={got}/4 acc={acc} loss=0.5 ms=6 checksum=00{r}")
    }

    #[test]
    fn lines_are_gathered_across_reads_and_keep_their_first_time() {
        let mut log = Log::default();
        log.absorb(
            &format!(
                "{CENTRAL}\nstart round=0/5 acc=0.1\n{}",
                round(1, 4, "0.9164")
            ),
            1.0,
        );
        log.absorb(
            &format!(
                "{CENTRAL}\n{}\n{}",
                round(1, 4, "0.9164"),
                round(2, 4, "0.9387")
            ),
            2.0,
        );
        // After a move the new host's log holds only the later lines.
        log.absorb(
            &format!(
                "{}\nround 4: trainer 1 at x: y; retry 1/5 in 200 ms\n{}",
                round(3, 4, "0.9415"),
                round(4, 3, "0.9471")
            ),
            3.5,
        );
        log.absorb(
            &format!(
                "{}\ndone round=5/5 acc=0.9443 central_acc=0.9610 loss=0.2",
                round(5, 4, "0.9443")
            ),
            4.0,
        );
        let rounds = log.rounds();
        assert_eq!(rounds.len(), 5);
        assert_eq!(rounds[0].seen_s, 1.0);
        assert_eq!(rounds[1].seen_s, 2.0);
        assert_eq!(rounds[3].trainers, (3, 4));
        assert_eq!(log.lost_rounds(5, 0), 0);
        assert_eq!(log.accuracies(), (Some(0.9443), Some(0.9610)));
        assert_eq!(rate(&rounds, 1, 5), Some(4.0 / 3.0 * 60.0));
        assert_eq!(rate(&rounds, 1, 9), None);
        let curves = brume_fedavg::plot::Curves::from_log(&log.plot_text());
        assert_eq!(curves.federated.len(), 5);
        assert_eq!(curves.central_final, Some(0.9610));
    }

    #[test]
    fn missing_redone_and_below_quorum_rounds_are_lost() {
        let mut log = Log::default();
        log.absorb(
            &format!("{}\n{}", round(1, 4, "0.9"), round(2, 4, "0.91")),
            1.0,
        );
        // Round 2 counted again with another result, round 3 below the quorum, 5 never came.
        log.absorb(
            &format!(
                "{}\nround=3/5 trainers=1/4 below MIN_TRAINERS=3: trying again\n{}",
                round(2, 3, "0.92"),
                round(4, 4, "0.93")
            ),
            2.0,
        );
        log.absorb("round=4 dropped: the state was restored meanwhile", 3.0);
        // 2 redone, 3 below quorum (and never counted), 4 dropped, 5 missing.
        assert_eq!(log.lost_rounds(5, 0), 4);
        // Round 5 in the aggregator's own history: not lost, only unseen.
        assert_eq!(log.lost_rounds(5, 5), 3);
        assert_eq!(
            log.rounds()[1].acc,
            0.92,
            "a redone round shows its last line"
        );
    }

    #[test]
    fn the_move_pause_is_the_longest_gap_beyond_normal_across_the_move() {
        let at = |r: u64, s: f64| Round {
            round: r,
            seen_s: s,
            trainers: (4, 4),
            acc: 0.9,
        };
        // Rounds every 1.1 s, then round 5 comes 1.6 s after round 4 (the freeze).
        let rounds = [
            at(1, 1.0),
            at(2, 2.1),
            at(3, 3.2),
            at(4, 4.3),
            at(5, 5.9),
            at(6, 7.0),
        ];
        let pause = move_pause_ms(&rounds, 3.3, 5.5, 1.1);
        assert!((pause - 500.0).abs() < 1e-6, "{pause}");
        // A window no round interval overlaps beyond normal: no pause.
        assert_eq!(move_pause_ms(&rounds, 1.5, 2.0, 1.1), 0.0);
        let g = gaps(&rounds);
        assert_eq!(g.len(), 5);
        assert!((g[3].1 - 1.6).abs() < 1e-9);
    }
}
