//! Latency models that the simulator draws RTTs from.
//!
//! The mapping protocol is judged on thousands of nodes, which only a simulation can provide, and a
//! simulation is only as honest as its latencies. Two sources are offered behind one trait:
//!
//! * [`SyntheticInternet`]: an Internet-like model written here. Nodes sit in cities grouped in
//!   continents on a plane (distances in ms of RTT), so RTTs are small inside a city, medium
//!   inside a continent and large across; every node adds its own access delay (last mile); and a
//!   controlled fraction of pairs is routed badly (their RTT inflated), which creates the
//!   triangle-inequality violations that real measurements show and that trip Vivaldi. It is seeded
//!   and computes RTTs on demand, so 10,000 nodes cost no N x N matrix.
//! * [`RttMatrix`]: an N x N matrix read from a file, the format public measurement datasets use,
//!   so results can be checked against measured latencies, not only against a model we wrote.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Something that knows the RTT between any two of `len()` nodes, in milliseconds.
pub trait LatencyModel {
    /// RTT between nodes `a` and `b` in ms; `None` when unknown (unmeasured) or out of range.
    /// `rtt(a, a)` is `Some(0.0)`. Models are symmetric: `rtt(a, b) == rtt(b, a)`.
    fn rtt(&self, a: usize, b: usize) -> Option<f64>;
    /// Number of nodes.
    fn len(&self) -> usize;
    /// Whether the model has no node.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parameters of the synthetic Internet-like model. All distances are RTT milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    pub nodes: usize,
    pub continents: usize,
    pub cities_per_continent: usize,
    /// Continent centres are uniform in a square of this side.
    pub world_ms: f64,
    /// Cities are uniform in a disc of this radius around their continent's centre.
    pub continent_radius_ms: f64,
    /// Nodes are uniform in a disc of this radius around their city.
    pub city_radius_ms: f64,
    /// Per-node access delay, uniform in this range; it is added once per endpoint.
    pub access_ms: (f64, f64),
    /// Fraction of node pairs whose path is badly routed (their RTT is multiplied by a factor
    /// drawn from `tiv_inflation`), creating triangle-inequality violations.
    pub tiv_fraction: f64,
    pub tiv_inflation: (f64, f64),
    pub seed: u64,
}

impl SyntheticConfig {
    /// A world of 5 continents with 8 cities each, 5 % badly routed pairs.
    pub fn internet(nodes: usize, seed: u64) -> Self {
        SyntheticConfig {
            nodes,
            continents: 5,
            cities_per_continent: 8,
            world_ms: 200.0,
            continent_radius_ms: 30.0,
            city_radius_ms: 2.0,
            access_ms: (0.2, 3.0),
            tiv_fraction: 0.05,
            tiv_inflation: (1.3, 2.5),
            seed,
        }
    }
}

impl SyntheticConfig {
    /// A differently clustered world: 3 continents of 20 wide metro areas (5 ms across) in
    /// bigger continents, slower and more varied access links, and twice the badly routed
    /// pairs. A second model to check that results do not hang on the first one's shape.
    pub fn metro(nodes: usize, seed: u64) -> Self {
        SyntheticConfig {
            nodes,
            continents: 3,
            cities_per_continent: 20,
            world_ms: 160.0,
            continent_radius_ms: 45.0,
            city_radius_ms: 5.0,
            access_ms: (0.5, 8.0),
            tiv_fraction: 0.10,
            tiv_inflation: (1.2, 3.0),
            seed,
        }
    }
}

/// The synthetic Internet-like latency model (see the module documentation).
#[derive(Debug, Clone)]
pub struct SyntheticInternet {
    config: SyntheticConfig,
    pos: Vec<(f64, f64)>,
    access: Vec<f64>,
    city: Vec<usize>,
}

impl SyntheticInternet {
    /// Builds the model; the same config (seed included) always gives the same RTTs.
    pub fn new(config: SyntheticConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let continents: Vec<(f64, f64)> = (0..config.continents.max(1))
            .map(|_| {
                (
                    rng.random_range(0.0..=config.world_ms),
                    rng.random_range(0.0..=config.world_ms),
                )
            })
            .collect();
        let mut cities = Vec::new();
        for &(cx, cy) in &continents {
            for _ in 0..config.cities_per_continent.max(1) {
                cities.push(in_disc(&mut rng, (cx, cy), config.continent_radius_ms));
            }
        }
        let (amin, amax) = config.access_ms;
        let mut pos = Vec::with_capacity(config.nodes);
        let mut access = Vec::with_capacity(config.nodes);
        let mut city = Vec::with_capacity(config.nodes);
        for _ in 0..config.nodes {
            let c = rng.random_range(0..cities.len());
            city.push(c);
            pos.push(in_disc(&mut rng, cities[c], config.city_radius_ms));
            access.push(if amax > amin {
                rng.random_range(amin..amax)
            } else {
                amin
            });
        }
        SyntheticInternet {
            config,
            pos,
            access,
            city,
        }
    }

    /// The city index of a node (cities of continent `k` are `k * cities_per_continent ..`).
    pub fn city_of(&self, node: usize) -> usize {
        self.city[node]
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &SyntheticConfig {
        &self.config
    }

    /// A per-pair uniform number in [0, 1), from the seed and the unordered pair.
    fn pair_unit(&self, a: usize, b: usize, salt: u64) -> f64 {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let mut z = self.config.seed
            ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93)
            ^ ((lo as u64) << 32 | hi as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn in_disc(rng: &mut ChaCha8Rng, centre: (f64, f64), radius: f64) -> (f64, f64) {
    let r = radius * rng.random_range(0.0f64..1.0).sqrt();
    let t = rng.random_range(0.0..std::f64::consts::TAU);
    (centre.0 + r * t.cos(), centre.1 + r * t.sin())
}

impl LatencyModel for SyntheticInternet {
    fn rtt(&self, a: usize, b: usize) -> Option<f64> {
        if a >= self.len() || b >= self.len() {
            return None;
        }
        if a == b {
            return Some(0.0);
        }
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        let (pa, pb) = (self.pos[a], self.pos[b]);
        let base = ((pa.0 - pb.0).powi(2) + (pa.1 - pb.1).powi(2)).sqrt()
            + self.access[a]
            + self.access[b];
        let (lo, hi) = self.config.tiv_inflation;
        let factor = if self.pair_unit(a, b, 1) < self.config.tiv_fraction {
            lo + (hi - lo) * self.pair_unit(a, b, 2)
        } else {
            1.0
        };
        Some(base * factor)
    }

    fn len(&self) -> usize {
        self.pos.len()
    }
}

/// Why an RTT matrix file was refused.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("cannot read RTT matrix {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no rows: an RTT matrix needs N lines of N whitespace-separated numbers (ms)")]
    Empty { path: PathBuf },
    #[error("{path}:{line}:{column}: `{token}` is not a number; every entry must be an RTT in ms (0 or negative = unmeasured)")]
    NotANumber {
        path: PathBuf,
        line: usize,
        column: usize,
        token: String,
    },
    #[error("{path}:{line}: row has {found} entries but the first row has {expected}; every row must have N entries")]
    Ragged {
        path: PathBuf,
        line: usize,
        expected: usize,
        found: usize,
    },
    #[error("{path}: {rows} rows of {cols} entries: the matrix must be square (N x N)")]
    NotSquare {
        path: PathBuf,
        rows: usize,
        cols: usize,
    },
}

/// A symmetric RTT matrix read from a file (see [`RttMatrix::parse`] for the rules).
#[derive(Debug, Clone, PartialEq)]
pub struct RttMatrix {
    n: usize,
    /// Row-major, symmetric; `NaN` marks an unmeasured pair.
    data: Vec<f64>,
}

impl RttMatrix {
    /// Reads and parses a matrix file.
    pub fn from_file(path: &Path) -> Result<Self, MatrixError> {
        let text = std::fs::read_to_string(path).map_err(|source| MatrixError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `path` is only used in error messages.
    ///
    /// Format: one row per line, entries separated by whitespace, row `i` column `j` is the RTT in
    /// ms measured from `i` to `j`. Blank lines and lines starting with `#` are skipped. An entry
    /// that does not parse as a finite number is an error (with its line and column).
    ///
    /// What is done with the values, explicitly:
    /// * an entry `<= 0` means "unmeasured";
    /// * the diagonal is ignored (`rtt(i, i)` is always 0, whatever the file says);
    /// * the matrix is symmetrised: if both `(i, j)` and `(j, i)` are measured, the RTT is their
    ///   mean (both are samples of the same round trip); if only one is, it is used for both;
    /// * if neither is, the pair stays unmeasured and `rtt` returns `None`: the simulator then
    ///   never links the two nodes and leaves the pair out of error statistics. Nothing is
    ///   imputed, so no number we made up is ever compared against a measurement.
    pub fn parse(text: &str, path: &Path) -> Result<Self, MatrixError> {
        let mut rows: Vec<Vec<f64>> = Vec::new();
        for (idx, line) in text.lines().enumerate() {
            let lineno = idx + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut row = Vec::new();
            let mut offset = 0;
            for token in line.split_whitespace() {
                // Column = 1-based character position of the token in the line.
                let start = line[offset..].find(token).map_or(offset, |p| offset + p);
                offset = start + token.len();
                let value: f64 = token
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite())
                    .ok_or_else(|| MatrixError::NotANumber {
                        path: path.to_path_buf(),
                        line: lineno,
                        column: line[..start].chars().count() + 1,
                        token: token.to_string(),
                    })?;
                row.push(value);
            }
            if let Some(first) = rows.first() {
                if first.len() != row.len() {
                    return Err(MatrixError::Ragged {
                        path: path.to_path_buf(),
                        line: lineno,
                        expected: first.len(),
                        found: row.len(),
                    });
                }
            }
            rows.push(row);
        }
        let n = rows.len();
        if n == 0 {
            return Err(MatrixError::Empty {
                path: path.to_path_buf(),
            });
        }
        if rows[0].len() != n {
            return Err(MatrixError::NotSquare {
                path: path.to_path_buf(),
                rows: n,
                cols: rows[0].len(),
            });
        }
        Ok(Self::from_rows(&rows))
    }

    /// Builds a matrix from square rows with the same rules as [`RttMatrix::parse`].
    /// Panics if the rows are not square (only for values built in code).
    pub fn from_rows(rows: &[Vec<f64>]) -> Self {
        let n = rows.len();
        assert!(rows.iter().all(|r| r.len() == n), "rows must be square");
        let mut data = vec![f64::NAN; n * n];
        for i in 0..n {
            data[i * n + i] = 0.0;
            for j in (i + 1)..n {
                let (a, b) = (rows[i][j], rows[j][i]);
                let v = match (a > 0.0, b > 0.0) {
                    (true, true) => (a + b) / 2.0,
                    (true, false) => a,
                    (false, true) => b,
                    (false, false) => f64::NAN,
                };
                data[i * n + j] = v;
                data[j * n + i] = v;
            }
        }
        RttMatrix { n, data }
    }

    /// Number of measured unordered pairs (diagonal excluded).
    pub fn measured_pairs(&self) -> usize {
        (0..self.n)
            .map(|i| {
                ((i + 1)..self.n)
                    .filter(|&j| !self.data[i * self.n + j].is_nan())
                    .count()
            })
            .sum()
    }
}

impl LatencyModel for RttMatrix {
    fn rtt(&self, a: usize, b: usize) -> Option<f64> {
        if a >= self.n || b >= self.n {
            return None;
        }
        let v = self.data[a * self.n + b];
        (!v.is_nan()).then_some(v)
    }

    fn len(&self) -> usize {
        self.n
    }
}

/// Writes any model as a matrix file's text (unmeasured pairs as `-1`), e.g. to export the
/// synthetic model for other tools or to round-trip it through [`RttMatrix::parse`].
pub fn to_matrix_text(model: &dyn LatencyModel) -> String {
    let mut out = String::new();
    for i in 0..model.len() {
        let row: Vec<String> = (0..model.len())
            .map(|j| match model.rtt(i, j) {
                Some(v) => format!("{v:.3}"),
                None => "-1".to_string(),
            })
            .collect();
        out.push_str(&row.join(" "));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("m.txt")
    }

    #[test]
    fn synthetic_is_reproducible_symmetric_and_clustered() {
        let a = SyntheticInternet::new(SyntheticConfig::internet(300, 3));
        let b = SyntheticInternet::new(SyntheticConfig::internet(300, 3));
        let mut same_city = Vec::new();
        let mut other = Vec::new();
        for i in 0..300 {
            assert_eq!(a.rtt(i, i), Some(0.0));
            for j in 0..300 {
                assert_eq!(a.rtt(i, j), b.rtt(i, j));
                assert_eq!(a.rtt(i, j), a.rtt(j, i));
                if i < j {
                    let r = a.rtt(i, j).unwrap();
                    assert!(r > 0.0);
                    if a.city_of(i) == a.city_of(j) {
                        same_city.push(r);
                    } else {
                        other.push(r);
                    }
                }
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&same_city) * 5.0 < mean(&other));
        assert_eq!(a.rtt(0, 300), None);
    }

    #[test]
    fn synthetic_has_triangle_violations_at_the_configured_rate() {
        let m = SyntheticInternet::new(SyntheticConfig::internet(200, 9));
        let (mut inflated, mut pairs, mut violated) = (0usize, 0usize, 0usize);
        for i in 0..200 {
            for j in (i + 1)..200 {
                pairs += 1;
                if m.pair_unit(i, j, 1) < 0.05 {
                    inflated += 1;
                }
                let direct = m.rtt(i, j).unwrap();
                if (0..200).any(|k| m.rtt(i, k).unwrap() + m.rtt(k, j).unwrap() < direct * 0.999) {
                    violated += 1;
                }
            }
        }
        let frac = inflated as f64 / pairs as f64;
        assert!((0.04..0.06).contains(&frac), "inflated fraction {frac}");
        assert!(violated > 0 && violated <= inflated + pairs / 100);
    }

    #[test]
    fn matrix_parses_and_symmetrises() {
        let text = "# demo\n0 10 -1\n12 0 0\n30 -5 0\n\n";
        let m = RttMatrix::parse(text, p()).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m.rtt(0, 1), Some(11.0)); // mean of 10 and 12
        assert_eq!(m.rtt(0, 2), Some(30.0)); // only (2,0) measured
        assert_eq!(m.rtt(2, 0), Some(30.0));
        assert_eq!(m.rtt(1, 2), None); // 0 and -5: unmeasured both ways
        assert_eq!(m.rtt(1, 1), Some(0.0));
        assert_eq!(m.measured_pairs(), 2);
    }

    #[test]
    fn matrix_errors_name_line_and_column() {
        let e = RttMatrix::parse("0 1\n1 x0\n", p()).unwrap_err();
        assert!(
            matches!(
                e,
                MatrixError::NotANumber {
                    line: 2,
                    column: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().starts_with("m.txt:2:3:"), "{e}");
        let e = RttMatrix::parse("0 1 2\n1 0\n2 1 0\n", p()).unwrap_err();
        assert!(matches!(
            e,
            MatrixError::Ragged {
                line: 2,
                expected: 3,
                found: 2,
                ..
            }
        ));
        let e = RttMatrix::parse("0 1 2\n1 0 3\n", p()).unwrap_err();
        assert!(matches!(
            e,
            MatrixError::NotSquare {
                rows: 2,
                cols: 3,
                ..
            }
        ));
        let e = RttMatrix::parse("# nothing\n\n", p()).unwrap_err();
        assert!(matches!(e, MatrixError::Empty { .. }));
        let e = RttMatrix::parse("0 inf\ninf 0\n", p()).unwrap_err();
        assert!(matches!(
            e,
            MatrixError::NotANumber {
                line: 1,
                column: 3,
                ..
            }
        ));
    }

    #[test]
    fn matrix_round_trips_the_synthetic_model() {
        let s = SyntheticInternet::new(SyntheticConfig::internet(20, 1));
        let m = RttMatrix::parse(&to_matrix_text(&s), p()).unwrap();
        for i in 0..20 {
            for j in 0..20 {
                assert!((m.rtt(i, j).unwrap() - s.rtt(i, j).unwrap()).abs() < 1e-3);
            }
        }
    }
}
