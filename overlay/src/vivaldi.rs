//! Vivaldi network coordinates (Dabek, Cox, Kaashoek, Morris, SIGCOMM 2004), 2-D plus height.
//!
//! A node cannot ping every peer it might forward a map request to or place a task on, so it keeps
//! a synthetic coordinate whose distances predict RTTs. The model is the paper's "height vector":
//! a point in the plane (the core of the Internet) plus a non-negative height (the access link),
//! so the predicted RTT between two nodes is their euclidean distance plus both heights.
//!
//! Each RTT sample to a peer moves the local coordinate along the spring between the two, with the
//! paper's adaptive timestep: `w = e_local / (e_local + e_remote)`, the relative sample error
//! `es = |dist - rtt| / rtt` updates the local error `e = es * ce * w + e * (1 - ce * w)`, and the
//! node moves by `delta = cc * w` times the spring's displacement. Confident nodes (small error)
//! move little when they hear from unconfident ones, which keeps the system stable while nodes join.
//!
//! Pure and deterministic: when two coordinates coincide the direction is drawn from a small
//! generator seeded at construction, never from global randomness or the clock.

use serde::{Deserialize, Serialize};

/// The paper's tuning constant for the timestep (cc = 0.25).
pub const CC: f64 = 0.25;
/// The paper's tuning constant for the error moving average (ce = 0.25).
pub const CE: f64 = 0.25;
/// A new node knows nothing: its error starts at 1 (100 %).
pub const INITIAL_ERROR: f64 = 1.0;
/// Heights never go below this (ms): a zero height would let the plane absorb access delays.
pub const MIN_HEIGHT: f64 = 0.01;

/// A Vivaldi coordinate: a point in the plane plus a height, all in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Coord {
    pub x: f64,
    pub y: f64,
    pub height: f64,
}

impl Coord {
    /// The origin with the minimum height.
    pub fn origin() -> Self {
        Coord {
            x: 0.0,
            y: 0.0,
            height: MIN_HEIGHT,
        }
    }

    /// Predicted RTT between two coordinates: euclidean distance in the plane plus both heights.
    pub fn predicted_rtt(&self, other: &Coord) -> f64 {
        self.plane_distance(other) + self.height + other.height
    }

    fn plane_distance(&self, other: &Coord) -> f64 {
        ((self.x - other.x).powi(2) + (self.y - other.y).powi(2)).sqrt()
    }

    /// Whether every component is a finite number (a coordinate from the network may not be).
    pub fn is_finite(&self) -> bool {
        self.x.is_finite() && self.y.is_finite() && self.height.is_finite()
    }
}

/// One node's Vivaldi state: its coordinate and how much it trusts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vivaldi {
    coord: Coord,
    error: f64,
    rng: u64,
    updates: u64,
}

impl Vivaldi {
    /// A fresh node at the origin with error 1. `seed` only picks directions for coincident points.
    pub fn new(seed: u64) -> Self {
        Vivaldi {
            coord: Coord::origin(),
            error: INITIAL_ERROR,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            updates: 0,
        }
    }

    /// The current coordinate.
    pub fn coord(&self) -> Coord {
        self.coord
    }

    /// The local error estimate (a relative error; 1 means "no idea").
    pub fn error(&self) -> f64 {
        self.error
    }

    /// How many samples have moved this coordinate.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Predicted RTT from this node to a remote coordinate.
    pub fn predict(&self, remote: &Coord) -> f64 {
        self.coord.predicted_rtt(remote)
    }

    /// Feeds one RTT sample (ms) to a peer whose coordinate and error are `remote`/`remote_error`.
    /// Samples that are not finite and positive, or remote data that is not finite, are ignored
    /// (they come from the network and must not corrupt the coordinate).
    pub fn update(&mut self, remote: &Coord, remote_error: f64, rtt_ms: f64) {
        if !(rtt_ms.is_finite() && rtt_ms > 0.0 && remote.is_finite() && remote_error.is_finite()) {
            return;
        }
        let remote_error = remote_error.clamp(1e-6, INITIAL_ERROR);
        let local_error = self.error.max(1e-6);
        let w = local_error / (local_error + remote_error);
        let dist = self.coord.predicted_rtt(remote);
        let sample_error = ((dist - rtt_ms).abs() / rtt_ms).min(INITIAL_ERROR);
        self.error = (sample_error * CE * w + self.error * (1.0 - CE * w)).min(INITIAL_ERROR);
        let delta = CC * w;
        let force = delta * (rtt_ms - dist);

        // Unit vector of (self - remote) in the height model: [x - x', h + h'] / ||.||.
        let mut dx = self.coord.x - remote.x;
        let mut dy = self.coord.y - remote.y;
        let mut plane = (dx * dx + dy * dy).sqrt();
        if plane < 1e-9 {
            let angle = self.next_unit() * std::f64::consts::TAU;
            dx = angle.cos();
            dy = angle.sin();
            plane = 1.0;
        }
        let dh = self.coord.height + remote.height;
        let norm = plane + dh;
        if norm > 0.0 {
            self.coord.x += force * dx / norm;
            self.coord.y += force * dy / norm;
            self.coord.height = (self.coord.height + force * dh / norm).max(MIN_HEIGHT);
        }
        self.updates = self.updates.saturating_add(1);
    }

    /// A number in [0, 1) from a splitmix64 generator (only for coincident coordinates).
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }

    #[test]
    fn predicted_rtt_is_distance_plus_heights() {
        let a = Coord {
            x: 0.0,
            y: 0.0,
            height: 1.0,
        };
        let b = Coord {
            x: 3.0,
            y: 4.0,
            height: 2.0,
        };
        assert!((a.predicted_rtt(&b) - 8.0).abs() < 1e-12);
    }

    #[test]
    fn coincident_nodes_separate() {
        let mut a = Vivaldi::new(1);
        let b = Vivaldi::new(2);
        a.update(&b.coord(), b.error(), 50.0);
        assert!(a.predict(&b.coord()) > 1.0);
    }

    #[test]
    fn garbage_samples_are_ignored() {
        let mut a = Vivaldi::new(1);
        let before = a.clone();
        let bad = Coord {
            x: f64::NAN,
            y: 0.0,
            height: 1.0,
        };
        a.update(&bad, 0.5, 10.0);
        a.update(&Coord::origin(), 0.5, -1.0);
        a.update(&Coord::origin(), f64::NAN, 10.0);
        assert_eq!(a, before);
    }

    /// Points in a plane with access heights are exactly embeddable: Vivaldi should converge.
    #[test]
    fn converges_on_a_synthetic_metric() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 30;
        let truth: Vec<Coord> = (0..n)
            .map(|_| Coord {
                x: rng.random_range(0.0..100.0),
                y: rng.random_range(0.0..100.0),
                height: rng.random_range(1.0..5.0),
            })
            .collect();
        let mut nodes: Vec<Vivaldi> = (0..n).map(|i| Vivaldi::new(i as u64)).collect();
        for _ in 0..300 {
            for i in 0..n {
                let j = rng.random_range(0..n);
                if i == j {
                    continue;
                }
                let rtt = truth[i].predicted_rtt(&truth[j]);
                let (rc, re) = (nodes[j].coord(), nodes[j].error());
                nodes[i].update(&rc, re, rtt);
            }
        }
        let mut errs = Vec::new();
        for i in 0..n {
            for j in (i + 1)..n {
                let rtt = truth[i].predicted_rtt(&truth[j]);
                errs.push((nodes[i].predict(&nodes[j].coord()) - rtt).abs() / rtt);
            }
        }
        let med = median(errs);
        assert!(med < 0.10, "median relative error {med}");
        assert!(nodes.iter().all(|v| v.error() < 0.2));
    }
}
