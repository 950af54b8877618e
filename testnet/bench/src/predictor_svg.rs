//! The learning curve of `brume bench predictor` as a hand-written SVG (no plotting crate):
//! two panels over the dumps seen, the trailing mean lost computation (log scale) and the
//! trailing late rate, one line per model, with the late-rate target marked.

use std::fmt::Write;

use brume_migration::predictor::evaluate::Report;

const W: f64 = 900.0;
const PANEL_H: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;
const COLORS: [&str; 6] = [
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f", "#ff7f0e",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document.
pub fn render(reports: &[Report], window: usize, target_pct: f64) -> String {
    let n = reports.iter().map(Report::n).max().unwrap_or(0).max(2);
    let plot_w = W - LEFT - RIGHT;
    let x_of = |i: usize| LEFT + plot_w * i as f64 / (n - 1) as f64;
    let curves: Vec<_> = reports.iter().map(|r| r.curve(window)).collect();
    // Log scale for lost computation: from the smallest positive value to the largest.
    let positive = curves
        .iter()
        .flatten()
        .map(|p| p.mean_lost)
        .filter(|v| *v > 0.0 && v.is_finite());
    let (lo, hi) = positive.fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo.log10().floor(), hi.log10().ceil())
    } else {
        (-3.0, 1.0)
    };
    let top2 = TOP + PANEL_H + GAP;
    let y_lost = |v: f64| {
        let l = v.max(10f64.powf(lo)).log10();
        TOP + PANEL_H * (1.0 - (l - lo) / (hi - lo))
    };
    let y_late = |r: f64| top2 + PANEL_H * (1.0 - r);
    let h = top2 + PANEL_H + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="14">Online learning on the trace: trailing {window} predictions, seed 000's lost computation and late rate</text>"#
    );
    for (top, label) in [
        (TOP, "mean lost computation (s, log)"),
        (top2, "late predictions (%)"),
    ] {
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">{label}</text>"#,
            top + PANEL_H / 2.0,
            top + PANEL_H / 2.0
        );
    }
    // Axes: decades for the lost panel, 0-100% for the late one, dumps on x.
    let mut d = lo;
    while d <= hi {
        let y = y_lost(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">1e{d}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0
        );
        d += 1.0;
    }
    for pct in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let y = y_late(pct / 100.0);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{pct}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let yt = y_late(target_pct / 100.0);
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" x2="{}" y1="{yt:.1}" y2="{yt:.1}" stroke="#000" stroke-dasharray="5,4"/><text x="{}" y="{:.1}">target {target_pct}%</text>"##,
        LEFT + plot_w,
        LEFT + plot_w + 6.0,
        yt + 4.0
    );
    let ticks = 10.min(n - 1).max(1);
    for k in 0..=ticks {
        let i = (n - 1) * k / ticks;
        let x = x_of(i);
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{i}</text>"#,
            top2 + PANEL_H + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">dumps learned before the prediction</text>"#,
        LEFT + plot_w / 2.0,
        top2 + PANEL_H + 36.0
    );
    for (k, (r, c)) in reports.iter().zip(&curves).enumerate() {
        let color = COLORS[k % COLORS.len()];
        let width = if r.name == "pbmlr+conformal" {
            2.5
        } else {
            1.3
        };
        for panel in 0..2 {
            let pts: Vec<String> = c
                .iter()
                .map(|p| {
                    let y = if panel == 0 {
                        y_lost(p.mean_lost)
                    } else {
                        y_late(p.late_rate)
                    };
                    format!("{:.1},{:.1}", x_of(p.seen), y)
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{}"/>"#,
                pts.join(" ")
            );
        }
        let ly = TOP + 16.0 + 18.0 * k as f64;
        let lx = LEFT + plot_w + 12.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="{width}"/><text x="{}" y="{}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            esc(r.name)
        );
    }
    s.push_str("</svg>\n");
    s
}
