//! The picture of a run: test accuracy per round, federated against centralised, as a
//! hand-written SVG (no plotting crate: the binaries stay std-only), with events such as a
//! move or a kill marked as vertical lines.
//!
//! The aggregator writes it itself when `PLOT_SVG` names a file (after every round, so a run cut
//! short still leaves a picture), taking markers from `PLOT_MARKERS`. Other code (a bench, a
//! demo script) can draw the same picture from an aggregator's log with [`Curves::from_log`]
//! and its own [`Marker`]s, e.g. the time a move happened mapped to a round.

use std::collections::BTreeMap;
use std::fmt::Write;

/// An event drawn as a dashed vertical line at `round` (fractional: 3.5 is between rounds 3
/// and 4) with `label` at its top.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub round: f64,
    pub label: String,
}

/// What the picture shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curves {
    /// (round, test accuracy of the global model after it), ascending.
    pub federated: Vec<(u64, f64)>,
    /// The centralised baseline's test accuracy after each of its epochs, placed on the round
    /// axis by passes over the data: epoch `e` of `E` per round sits at round `e / E`.
    pub central: Vec<(f64, f64)>,
    /// The centralised baseline's final accuracy, drawn across the whole plot.
    pub central_final: Option<f64>,
}

/// Parses `PLOT_MARKERS`: `round:label` items, comma-separated (`3.5:move,6:kill`). Labels may
/// not hold commas.
pub fn parse_markers(text: &str) -> Result<Vec<Marker>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (round, label) = item
                .split_once(':')
                .ok_or_else(|| format!("marker \"{item}\" is not round:label"))?;
            let round: f64 = round
                .trim()
                .parse()
                .ok()
                .filter(|r: &f64| r.is_finite() && *r >= 0.0)
                .ok_or_else(|| format!("marker \"{item}\": \"{round}\" is not a round number"))?;
            Ok(Marker {
                round,
                label: label.trim().to_string(),
            })
        })
        .collect()
}

/// `key=value` out of a line of such words.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

impl Curves {
    /// The curves an aggregator's stdout describes: its `round=<r>/<R> ... acc=<a>` lines (the
    /// last one of a round wins, so a run restored to an earlier round draws what it did after)
    /// and its `central acc=<a> ... curve=<a1,a2,..> epochs_per_round=<E>` line. Other lines
    /// are ignored.
    pub fn from_log(log: &str) -> Curves {
        let mut rounds = BTreeMap::new();
        let mut curves = Curves::default();
        for line in log.lines().map(str::trim) {
            if line.starts_with("round=") {
                let round = field(line, "round").and_then(|r| r.split('/').next()?.parse().ok());
                let acc = field(line, "acc").and_then(|a| a.parse::<f64>().ok());
                if let (Some(round), Some(acc)) = (round, acc) {
                    rounds.insert(round, acc);
                }
            } else if line.starts_with("central ") {
                curves.central_final = field(line, "acc").and_then(|a| a.parse().ok());
                let per_round: f64 = field(line, "epochs_per_round")
                    .and_then(|e| e.parse().ok())
                    .filter(|e: &f64| *e > 0.0)
                    .unwrap_or(1.0);
                curves.central = field(line, "curve")
                    .map(|c| {
                        c.split(',')
                            .filter_map(|a| a.parse::<f64>().ok())
                            .enumerate()
                            .map(|(i, a)| ((i + 1) as f64 / per_round, a))
                            .collect()
                    })
                    .unwrap_or_default();
            }
        }
        curves.federated = rounds.into_iter().collect();
        curves
    }

    /// Adds the rounds a log watched from outside missed from the aggregator's own history
    /// (its state line's accuracy per round, round 1 first): a round line printed on the old
    /// host just before a live move is in no log the new host serves. Rounds already drawn
    /// keep their value; how many were added.
    pub fn fill_from_history(&mut self, history: &[f64]) -> usize {
        let mut rounds: BTreeMap<u64, f64> = self.federated.iter().copied().collect();
        let before = rounds.len();
        for (r, acc) in (1u64..).zip(history.iter().copied()) {
            rounds.entry(r).or_insert(acc);
        }
        let added = rounds.len() - before;
        self.federated = rounds.into_iter().collect();
        added
    }
}

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 60.0;
const FED: &str = "#1f77b4";
const CENTRAL: &str = "#d62728";
const MARK: &str = "#555555";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG document: accuracy (0 to 100%) against rounds (0 to the last round or marker).
pub fn svg(c: &Curves, markers: &[Marker], title: &str) -> String {
    let last_round = c.federated.last().map_or(0, |(r, _)| *r) as f64;
    let last_mark = markers.iter().map(|m| m.round).fold(0.0, f64::max);
    let max_x = last_round.max(last_mark).max(1.0).ceil();
    // The y axis starts at the nearest 10% below everything drawn, so the last points (which
    // differ by a point or two) are told apart.
    let lowest = c
        .federated
        .iter()
        .map(|(_, a)| *a)
        .chain(c.central.iter().map(|(_, a)| *a))
        .chain(c.central_final)
        .fold(1.0, f64::min);
    let min_y = ((lowest * 10.0).floor() / 10.0).clamp(0.0, 0.9);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x_of = |r: f64| LEFT + pw * r / max_x;
    let y_of = |a: f64| TOP + ph * (1.0 - (a.clamp(min_y, 1.0) - min_y) / (1.0 - min_y));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    // Grid and labels: every 10% of accuracy (every 2% when the axis spans 20% or less), every
    // round (or every few when there are many).
    let lo_pct = (min_y * 100.0).round() as u32;
    let tick_pct = if lo_pct >= 80 { 2 } else { 10 };
    for pct in (lo_pct..=100).step_by(tick_pct) {
        let y = y_of(f64::from(pct) / 100.0);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{pct}%</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
        );
    }
    let step = (max_x / 20.0).ceil().max(1.0) as u64;
    for r in (0..=max_x as u64).step_by(step as usize) {
        let x = x_of(r as f64);
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{r}</text>"#,
            TOP + ph + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">round (centralised: passes over the data, in rounds' worth)</text>"#,
        LEFT + pw / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{0:.1}" transform="rotate(-90 16 {0:.1})" text-anchor="middle">test accuracy</text>"#,
        TOP + ph / 2.0
    );
    // Centralised: its per-epoch curve (thin) and its final accuracy across the plot (dashed).
    if let Some(a) = c.central_final {
        let y = y_of(a);
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{CENTRAL}" stroke-dasharray="6 4"/>"#,
            LEFT + pw
        );
    }
    if !c.central.is_empty() {
        let pts: Vec<String> = c
            .central
            .iter()
            .copied()
            .filter(|(r, _)| *r <= max_x)
            .map(|(r, a)| format!("{:.1},{:.1}", x_of(r), y_of(a)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{CENTRAL}" stroke-width="1.2" opacity="0.7"/>"#,
            pts.join(" ")
        );
    }
    // Federated: one point per round, joined.
    if !c.federated.is_empty() {
        let pts: Vec<String> = c
            .federated
            .iter()
            .map(|(r, a)| format!("{:.1},{:.1}", x_of(*r as f64), y_of(*a)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{FED}" stroke-width="2"/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{FED}"/>"#);
        }
    }
    for m in markers {
        let x = x_of(m.round);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="{MARK}" stroke-dasharray="3 3"/><text x="{:.1}" y="{:.1}" fill="{MARK}">{}</text>"#,
            TOP + ph,
            x + 3.0,
            TOP + 14.0,
            esc(&m.label)
        );
    }
    // Legend, with the final numbers.
    let fed_last = c
        .federated
        .last()
        .map_or("no round yet".to_string(), |(r, a)| {
            format!("{:.1}% after round {r}", a * 100.0)
        });
    let central_last = c
        .central_final
        .map_or("not computed".to_string(), |a| format!("{:.1}%", a * 100.0));
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="40" x2="{0:.1}" y2="40" stroke="{FED}" stroke-width="2"/><text x="{1:.1}" y="44">federated (FedAvg): {2}</text>"#,
        LEFT + 24.0,
        LEFT + 30.0,
        esc(&fed_last)
    );
    let _ = writeln!(
        s,
        r#"<line x1="{0:.1}" y1="40" x2="{1:.1}" y2="40" stroke="{CENTRAL}" stroke-dasharray="6 4"/><text x="{2:.1}" y="44">centralised: {3}</text>"#,
        LEFT + 330.0,
        LEFT + 354.0,
        LEFT + 360.0,
        esc(&central_last)
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn rounds_missing_from_a_log_are_filled_from_the_history() {
        let mut c = super::Curves::from_log(
            "round=1/4 trainers=4/4 acc=0.5\nround=3/4 trainers=4/4 acc=0.7",
        );
        assert_eq!(c.fill_from_history(&[0.1, 0.6, 0.2, 0.8]), 2);
        assert_eq!(c.federated, [(1, 0.5), (2, 0.6), (3, 0.7), (4, 0.8)]);
        assert_eq!(c.fill_from_history(&[]), 0);
    }

    use super::*;

    const LOG: &str = "\
central acc=0.95 loss=0.2 epochs=4 epochs_per_round=2 samples=1437 ms=10 curve=0.8,0.9,0.93,0.95
start round=0/3 acc=0.1 loss=2.3 checksum=00 trainers=4 min_trainers=1
round=1/3 trainers=4/4 acc=0.7 loss=1.0 ms=5 checksum=01
round=2/3 trainers=4/4 acc=0.8 loss=0.5 ms=5 checksum=02
restored round=1/3 checksum=01
round=2 dropped: the state was restored meanwhile
round=2/3 trainers=3/4 acc=0.75 loss=0.6 ms=5 checksum=03
round=3/3 trainers=4/4 acc=0.9 loss=0.4 ms=5 checksum=04
done round=3/3 acc=0.9 central_acc=0.95 loss=0.4 updates=11 missed=1 checksum=04
";

    #[test]
    fn the_log_gives_both_curves_the_last_line_of_a_round_winning() {
        let c = Curves::from_log(LOG);
        assert_eq!(c.federated, [(1, 0.7), (2, 0.75), (3, 0.9)]);
        assert_eq!(c.central_final, Some(0.95));
        assert_eq!(
            c.central,
            [(0.5, 0.8), (1.0, 0.9), (1.5, 0.93), (2.0, 0.95)]
        );
    }

    #[test]
    fn markers_parse_and_bad_ones_say_why() {
        let m = parse_markers("3.5:move, 6:kill trainer 2,").expect("parses");
        assert_eq!(
            m,
            [
                Marker {
                    round: 3.5,
                    label: "move".into()
                },
                Marker {
                    round: 6.0,
                    label: "kill trainer 2".into()
                }
            ]
        );
        assert_eq!(parse_markers(""), Ok(vec![]));
        assert!(parse_markers("move").unwrap_err().contains("round:label"));
        assert!(parse_markers("x:move").unwrap_err().contains("not a round"));
    }

    #[test]
    fn the_svg_draws_every_round_the_baseline_and_the_markers() {
        let c = Curves::from_log(LOG);
        let markers = parse_markers("1.5:move <A>,2.5:kill").expect("markers");
        let s = svg(&c, &markers, "fedavg & digits");
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches("<circle").count(), 3, "a point per round");
        assert_eq!(
            s.matches("<polyline").count(),
            2,
            "federated and central curves"
        );
        assert!(s.contains("move &lt;A&gt;") && s.contains(">kill<"), "{s}");
        assert!(s.contains("fedavg &amp; digits"));
        assert!(s.contains("90.0% after round 3") && s.contains("centralised: 95.0%"));
        // Nothing yet: still a valid, empty picture.
        let empty = svg(&Curves::default(), &[], "t");
        assert!(empty.contains("no round yet") && empty.ends_with("</svg>\n"));
    }
}
