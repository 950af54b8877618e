//! The data: the UCI optical handwritten digits (1797 8x8 images, 10 classes), embedded in the
//! binaries, and how they are cut into a held-out test set and the trainers' private shares.
//!
//! The file is `data/digits.csv` (scikit-learn 1.6.1's copy; its source and licence are in
//! `data/README.md`): one image a line, 64 pixel counts 0..16 then the label. It is embedded with
//! `include_str!` so the `FROM scratch` images need no file and no download. Pixels are scaled
//! to [0, 1].
//!
//! The cut, all seeded by `DATA_SEED` so every program computes the same one on its own:
//! - [`split`]: a stratified held-out test set, [`TEST_FRACTION`] of each class, which only the
//!   aggregator scores on; the rest is the training pool.
//! - [`partition`]: the pool split across the trainers with label skew, per class a
//!   Dirichlet(alpha) draw of how much of that class each trainer gets (alpha 0.5 by default:
//!   most trainers see a few classes mostly). Trainer `BRUME_REPLICA` takes its share.
//!
//! The centralised baseline trains on the whole pool.

use std::fmt;

use crate::rng::SplitMix64;

/// Pixels per image (8 x 8), the model's inputs.
pub const FEATURES: usize = 64;
/// Digits 0 to 9.
pub const CLASSES: usize = 10;
/// The largest pixel count in the file; pixels are divided by it.
pub const PIXEL_MAX: f64 = 16.0;
/// Share of each class held out for the aggregator's test set.
pub const TEST_FRACTION: f64 = 0.2;
/// The Dirichlet concentration of the label skew unless `ALPHA` says otherwise.
pub const DEFAULT_ALPHA: f64 = 0.5;

/// The embedded file.
pub const DIGITS_CSV: &str = include_str!("../data/digits.csv");

const TEST_STREAM: u64 = u64::MAX;
const PARTITION_STREAM: u64 = u64::MAX - 1;

/// Images and their labels: `x[i]` shows the digit `y[i]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    pub x: Vec<[f64; FEATURES]>,
    pub y: Vec<usize>,
}

/// Why the embedded file could not be read: only a damaged build can see one.
#[derive(Debug, Clone, PartialEq)]
pub struct DataError {
    pub line: usize,
    pub what: String,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data/digits.csv line {}: {}", self.line, self.what)
    }
}

impl std::error::Error for DataError {}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The samples at `rows`, in that order.
    pub fn subset(&self, rows: &[usize]) -> Dataset {
        Dataset {
            x: rows.iter().map(|&i| self.x[i]).collect(),
            y: rows.iter().map(|&i| self.y[i]).collect(),
        }
    }

    /// How many samples of each class.
    pub fn class_counts(&self) -> [usize; CLASSES] {
        let mut counts = [0; CLASSES];
        for &y in &self.y {
            counts[y] += 1;
        }
        counts
    }

    /// Parses lines of 64 pixel counts (0..=16) and a label (0..=9), comma-separated.
    pub fn parse_csv(text: &str) -> Result<Dataset, DataError> {
        let mut data = Dataset::default();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let err = |what: String| DataError { line: n + 1, what };
            let values: Vec<&str> = line.trim().split(',').collect();
            if values.len() != FEATURES + 1 {
                return Err(err(format!(
                    "{} values, want {} pixels and a label",
                    values.len(),
                    FEATURES
                )));
            }
            let mut x = [0.0; FEATURES];
            for (px, v) in x.iter_mut().zip(&values) {
                let count: u8 = v
                    .parse()
                    .ok()
                    .filter(|c| f64::from(*c) <= PIXEL_MAX)
                    .ok_or_else(|| err(format!("pixel \"{v}\" is not 0 to 16")))?;
                *px = f64::from(count) / PIXEL_MAX;
            }
            let label = values[FEATURES];
            let y: usize = label
                .parse()
                .ok()
                .filter(|y| *y < CLASSES)
                .ok_or_else(|| err(format!("label \"{label}\" is not 0 to 9")))?;
            data.x.push(x);
            data.y.push(y);
        }
        Ok(data)
    }
}

/// The 1797 digits of the embedded file.
pub fn digits() -> Result<Dataset, DataError> {
    Dataset::parse_csv(DIGITS_CSV)
}

/// Row numbers of the held-out test set and of the training pool, each ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

/// A stratified split: of each class, [`TEST_FRACTION`] (rounded) of its rows, drawn with the
/// seed, go to the test set.
pub fn split(data: &Dataset, seed: u64) -> Split {
    let mut r = SplitMix64::stream(seed, TEST_STREAM);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for rows in rows_by_class(data, 0..data.len()) {
        let mut rows = rows;
        r.shuffle(&mut rows);
        let held = (rows.len() as f64 * TEST_FRACTION).round() as usize;
        test.extend_from_slice(&rows[..held]);
        train.extend_from_slice(&rows[held..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Split { train, test }
}

/// The training pool's rows cut into `trainers` shares with label skew: for each class in turn
/// a Dirichlet(`alpha`) draw gives the fraction of that class's rows (shuffled) each trainer
/// gets, cut at the rounded cumulative fractions so every row goes to exactly one trainer. A
/// share can be small or empty; that is what the skew means. Each share is ascending.
pub fn partition(
    data: &Dataset,
    pool: &[usize],
    seed: u64,
    trainers: usize,
    alpha: f64,
) -> Vec<Vec<usize>> {
    let mut shares = vec![Vec::new(); trainers];
    if trainers == 0 {
        return shares;
    }
    let mut r = SplitMix64::stream(seed, PARTITION_STREAM);
    for mut rows in rows_by_class(data, pool.iter().copied()) {
        let p = r.dirichlet(alpha, trainers);
        r.shuffle(&mut rows);
        let n = rows.len() as f64;
        let (mut cum, mut start) = (0.0, 0);
        for (t, share) in p.iter().enumerate() {
            cum += share;
            let end = if t + 1 == trainers {
                rows.len()
            } else {
                ((cum * n).round() as usize).clamp(start, rows.len())
            };
            shares[t].extend_from_slice(&rows[start..end]);
            start = end;
        }
    }
    for s in &mut shares {
        s.sort_unstable();
    }
    shares
}

/// The given rows grouped by class, each group in the order given.
fn rows_by_class(data: &Dataset, rows: impl Iterator<Item = usize>) -> Vec<Vec<usize>> {
    let mut by_class = vec![Vec::new(); CLASSES];
    for i in rows {
        by_class[data.y[i]].push(i);
    }
    by_class
}

/// Everything a program needs of the data for one seed: the digits, the split, and (for a
/// trainer) its share.
#[derive(Debug, Clone)]
pub struct Cut {
    pub train: Dataset,
    pub test: Dataset,
}

/// The pooled training data and the test set for `seed`.
pub fn cut(seed: u64) -> Result<Cut, DataError> {
    let all = digits()?;
    let s = split(&all, seed);
    Ok(Cut {
        train: all.subset(&s.train),
        test: all.subset(&s.test),
    })
}

/// Trainer `replica`'s private data: its share of the pool cut among `trainers` trainers.
/// A replica index of `trainers` or more wraps around (so a fifth replica of four would
/// duplicate the first rather than train on nothing).
pub fn for_trainer(
    seed: u64,
    replica: u64,
    trainers: usize,
    alpha: f64,
) -> Result<Dataset, DataError> {
    let all = digits()?;
    let s = split(&all, seed);
    let shares = partition(&all, &s.train, seed, trainers.max(1), alpha);
    let mine = (replica % shares.len() as u64) as usize;
    Ok(all.subset(&shares[mine]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_file_is_the_whole_dataset() {
        let d = digits().expect("parses");
        assert_eq!(d.len(), 1797);
        // The class sizes scikit-learn documents for load_digits.
        assert_eq!(
            d.class_counts(),
            [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
        );
        assert!(d.x.iter().flatten().all(|p| (0.0..=1.0).contains(p)));
        assert!(d.x.iter().flatten().any(|p| *p == 1.0));
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let good = format!("{}9", "0,".repeat(FEATURES));
        assert_eq!(Dataset::parse_csv(&good).expect("parses").y, [9]);
        let short = format!("{good}\n1,2,3");
        assert_eq!(Dataset::parse_csv(&short).expect_err("short").line, 2);
        let label = format!("{}10", "0,".repeat(FEATURES));
        assert!(Dataset::parse_csv(&label)
            .expect_err("label")
            .what
            .contains("label"));
        let pixel = format!("17,{}1", "0,".repeat(FEATURES - 1));
        assert!(Dataset::parse_csv(&pixel)
            .expect_err("pixel")
            .what
            .contains("pixel"));
    }

    #[test]
    fn the_split_is_stratified_disjoint_and_seeded() {
        let d = digits().expect("parses");
        let s = split(&d, 0);
        assert_eq!(s.train.len() + s.test.len(), d.len());
        let mut all: Vec<usize> = s.train.iter().chain(&s.test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..d.len()).collect::<Vec<_>>(), "every row once");
        let test = d.subset(&s.test).class_counts();
        for (c, n) in d.class_counts().iter().enumerate() {
            assert_eq!(
                test[c],
                (*n as f64 * TEST_FRACTION).round() as usize,
                "class {c}"
            );
        }
        assert_eq!(split(&d, 0), s);
        assert_ne!(split(&d, 1).test, s.test);
    }

    #[test]
    fn the_partition_covers_the_pool_with_label_skew() {
        let d = digits().expect("parses");
        let s = split(&d, 0);
        let shares = partition(&d, &s.train, 0, 4, DEFAULT_ALPHA);
        let mut all: Vec<usize> = shares.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, s.train, "every pool row goes to exactly one trainer");
        assert_eq!(shares, partition(&d, &s.train, 0, 4, DEFAULT_ALPHA));
        // Label skew: every trainer's class mix is far from the pool's. Total variation distance
        // between a trainer's class distribution and the pool's; IID shares would be near 0.
        let pool = d.subset(&s.train).class_counts();
        let pool_n = s.train.len() as f64;
        for (t, share) in shares.iter().enumerate() {
            let counts = d.subset(share).class_counts();
            let n = share.len().max(1) as f64;
            let tv: f64 = (0..CLASSES)
                .map(|c| (counts[c] as f64 / n - pool[c] as f64 / pool_n).abs())
                .sum::<f64>()
                / 2.0;
            assert!(
                tv > 0.2,
                "trainer {t}: {counts:?} is close to IID (tv {tv})"
            );
        }
        // A large alpha is close to IID: the same measure is small for every trainer.
        for share in partition(&d, &s.train, 0, 4, 1000.0) {
            let counts = d.subset(&share).class_counts();
            let n = share.len() as f64;
            let tv: f64 = (0..CLASSES)
                .map(|c| (counts[c] as f64 / n - pool[c] as f64 / pool_n).abs())
                .sum::<f64>()
                / 2.0;
            assert!(tv < 0.1, "{counts:?} (tv {tv})");
        }
    }

    #[test]
    fn a_trainer_takes_its_own_share() {
        let d = digits().expect("parses");
        let s = split(&d, 3);
        let shares = partition(&d, &s.train, 3, 5, DEFAULT_ALPHA);
        let t2 = for_trainer(3, 2, 5, DEFAULT_ALPHA).expect("data");
        assert_eq!(t2, d.subset(&shares[2]));
        assert_eq!(
            for_trainer(3, 7, 5, DEFAULT_ALPHA).expect("data"),
            t2,
            "wraps"
        );
        let c = cut(3).expect("data");
        assert_eq!(c.train.len(), s.train.len());
        assert_eq!(c.test, d.subset(&s.test));
    }
}
