//! A file's recipe sent as a diff against the recipe the same file had in the previous round.
//!
//! Why: a full recipe names every 4 KiB chunk with 36 bytes, so a 512 MiB image's recipe is
//! 4.7 MB: 0.4 s at 100 Mbit/s, paid again in every round and, worst, in the final one while the
//! task is frozen. CRIU lays pages out in the same order dump after dump, so most positions hold
//! the chunk they held last time; the diff names only the positions that changed and costs a
//! few bytes for each run of unchanged ones. The target applies the same diff to its copy of
//! the previous recipe, and rewrites only the changed positions of its staged file.

use crate::chunks::Recipe;

use super::wire::RecipeOp;

/// The most chunks one file's recipe may name (a 64 GiB file).
pub const MAX_CHUNKS: usize = 1 << 24;

/// The ops that turn `prev` (none for a file new in this round) into `cur`.
pub fn diff(prev: Option<&Recipe>, cur: &Recipe) -> Vec<RecipeOp> {
    let prev = prev.map(|p| p.chunks.as_slice()).unwrap_or(&[]);
    let mut ops = Vec::new();
    let mut i = 0;
    while i < cur.chunks.len() {
        let same = |j: usize| prev.get(j) == Some(&cur.chunks[j]);
        let start = i;
        if same(i) {
            while i < cur.chunks.len() && same(i) {
                i += 1;
            }
            ops.push(RecipeOp::Same((i - start) as u32));
        } else {
            while i < cur.chunks.len() && !same(i) {
                i += 1;
            }
            ops.push(RecipeOp::Refs(cur.chunks[start..i].to_vec()));
        }
    }
    ops
}

/// Why a recipe diff cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecipeError {
    #[error("file {name}: the diff reuses chunks {from}..{to} but the previous recipe has {have}: the source and target disagree on the previous round")]
    BeyondPrevious {
        name: String,
        from: usize,
        to: usize,
        have: usize,
    },
    #[error("file {name}: the recipe names more than {MAX_CHUNKS} chunks: refused")]
    TooManyChunks { name: String },
    #[error("file {name}: its chunks add up to {actual} bytes but it should have {expected}")]
    WrongLength {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("file {name}: chunk {index} is short ({len} bytes) but not the last one")]
    ShortChunk {
        name: String,
        index: usize,
        len: u32,
    },
}

/// Applies `ops` to `prev`, giving the file's recipe in this round. Every chunk but the last must
/// be full, so chunk `i` always starts at byte `i * 4096` (what the target's in-place rewrite
/// relies on).
pub fn apply(
    name: &str,
    prev: Option<&Recipe>,
    len: u64,
    ops: &[RecipeOp],
) -> Result<Recipe, RecipeError> {
    let prev = prev.map(|p| p.chunks.as_slice()).unwrap_or(&[]);
    let mut chunks = Vec::new();
    for op in ops {
        match op {
            RecipeOp::Same(n) => {
                let from = chunks.len();
                let to = from.saturating_add(*n as usize);
                let slice = prev.get(from..to).ok_or(RecipeError::BeyondPrevious {
                    name: name.to_string(),
                    from,
                    to,
                    have: prev.len(),
                })?;
                chunks.extend_from_slice(slice);
            }
            RecipeOp::Refs(refs) => chunks.extend_from_slice(refs),
        }
        if chunks.len() > MAX_CHUNKS {
            return Err(RecipeError::TooManyChunks {
                name: name.to_string(),
            });
        }
    }
    let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    if total != len {
        return Err(RecipeError::WrongLength {
            name: name.to_string(),
            expected: len,
            actual: total,
        });
    }
    let last = chunks.len().saturating_sub(1);
    if let Some((index, c)) = chunks
        .iter()
        .enumerate()
        .find(|(i, c)| *i < last && c.len as usize != crate::chunks::CHUNK_SIZE)
    {
        return Err(RecipeError::ShortChunk {
            name: name.to_string(),
            index,
            len: c.len,
        });
    }
    Ok(Recipe { len, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(pages: &[u8], tail: usize) -> Vec<u8> {
        let mut v: Vec<u8> = pages.iter().flat_map(|&b| vec![b; 4096]).collect();
        v.extend(vec![0xee; tail]);
        v
    }

    #[test]
    fn unchanged_positions_cost_one_op_and_changes_are_named() {
        let a = Recipe::of(&image(&[1, 2, 3, 4, 5, 6], 10));
        let b = Recipe::of(&image(&[1, 2, 9, 4, 5, 7, 8], 0));
        let ops = diff(Some(&a), &b);
        assert_eq!(ops.len(), 4, "{ops:?}");
        assert_eq!(ops[0], RecipeOp::Same(2));
        assert!(matches!(&ops[1], RecipeOp::Refs(r) if r.len() == 1));
        assert_eq!(ops[2], RecipeOp::Same(2));
        assert!(matches!(&ops[3], RecipeOp::Refs(r) if r.len() == 2));
        assert_eq!(apply("f", Some(&a), b.len, &ops).unwrap(), b);
        // A new file is named in full.
        let ops = diff(None, &a);
        assert_eq!(apply("f", None, a.len, &ops).unwrap(), a);
        assert_eq!(diff(Some(&a), &a), vec![RecipeOp::Same(7)]);
    }

    #[test]
    fn a_diff_that_does_not_fit_is_refused() {
        let a = Recipe::of(&image(&[1, 2], 0));
        let b = Recipe::of(&image(&[1, 2, 3], 0));
        assert!(matches!(
            apply("f", Some(&a), b.len, &[RecipeOp::Same(3)]),
            Err(RecipeError::BeyondPrevious { .. })
        ));
        assert!(matches!(
            apply("f", Some(&a), 1, &[RecipeOp::Same(2)]),
            Err(RecipeError::WrongLength { .. })
        ));
        let short = Recipe::of(&[7u8; 100]);
        let ops = vec![
            RecipeOp::Refs(short.chunks.clone()),
            RecipeOp::Refs(short.chunks.clone()),
        ];
        assert!(matches!(
            apply("f", None, 200, &ops),
            Err(RecipeError::ShortChunk { .. })
        ));
    }
}
