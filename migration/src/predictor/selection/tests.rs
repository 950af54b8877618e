use super::*;

/// A deterministic noise in [−0.5, 0.5) (splitmix64 of the index and a salt): no seed to
/// forget, the same on every machine, and independent across salts.
fn noise(i: usize, salt: usize) -> f64 {
    let mut z = (i as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((salt as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

/// Rows `[1, x1, x2, x3, x4]`: `y = 1 + 2·x1 + 3·x2 + noise`, x3 unrelated noise, x4 a copy of
/// x1 up to a tiny wobble (collinear).
fn data(n: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let x1 = (i % 17) as f64;
            let x2 = noise(i, 1) * 10.0;
            vec![1.0, x1, x2, noise(i, 2), x1 + 1e-3 * noise(i, 3)]
        })
        .collect();
    let y = rows
        .iter()
        .enumerate()
        .map(|(i, r)| 1.0 + 2.0 * r[1] + 3.0 * r[2] + 0.5 * noise(i, 4))
        .collect();
    (rows, y)
}

fn refs(rows: &[Vec<f64>]) -> Vec<&[f64]> {
    rows.iter().map(|r| &r[..]).collect()
}

#[test]
fn keeps_what_drives_the_duration_and_drops_the_collinear_and_the_unrelated() {
    let (rows, y) = data(200);
    let s = Selection::default();
    // x4 is x1 again: VIF drops it (x1 is kept); x3 is noise: its p-value drops it.
    assert_eq!(
        select(&refs(&rows), &y, &[0, 1, 2, 3, 4], &[0, 1], &s),
        vec![0, 1, 2]
    );
    // Not kept, x1 or its copy goes by VIF and the other stays: one of the two.
    let free = select(&refs(&rows), &y, &[0, 1, 2, 3, 4], &[0], &s);
    assert!(free == vec![0, 1, 2] || free == vec![0, 2, 4], "{free:?}");
}

#[test]
fn too_few_samples_keep_only_the_kept_features() {
    let (rows, y) = data(19);
    let s = Selection::default();
    assert_eq!(
        select(&refs(&rows), &y, &[0, 1, 2, 3, 4], &[0, 1], &s),
        vec![0, 1]
    );
    let (rows, y) = data(20);
    assert!(select(&refs(&rows), &y, &[0, 1, 2, 3, 4], &[0, 1], &s).contains(&2));
}

/// `data(100)` with feature `j` set to `value` in every row.
fn constant(j: usize, value: f64) -> (Vec<Vec<f64>>, Vec<f64>) {
    let (mut rows, y) = data(100);
    for r in &mut rows {
        r[j] = value;
    }
    (rows, y)
}

#[test]
fn a_constant_feature_is_never_selected_and_a_constant_kept_one_stops_nothing() {
    let s = Selection::default();
    // x3 never varies: it says nothing.
    let (rows, y) = constant(3, 7.0);
    assert_eq!(
        select(&refs(&rows), &y, &[0, 1, 2, 3], &[0, 1], &s),
        vec![0, 1, 2]
    );
    // One task shape: rss (kept, x1) is the same in every sample; the noise x3 still goes.
    let (rows, y) = constant(1, 0.5);
    assert_eq!(
        select(&refs(&rows), &y, &[0, 1, 2, 3], &[0, 1], &s),
        vec![0, 1, 2]
    );
}

#[test]
fn p_values_are_small_for_a_real_effect_and_large_for_none() {
    let (rows, y) = data(200);
    let p = p_values(&refs(&rows), &y, &[0, 1, 2, 3]).expect("a regular system");
    assert!(p[1] < 1e-6 && p[2] < 1e-6, "{p:?}");
    assert!(p[3] > 0.05, "{p:?}");
    // Two-sided t-test of one mean: y = t-distributed around 0 by construction. Samples
    // {−1, 1, 3}: mean 1, sd 2, se 2/√3, t = √3/2 ≈ 0.866 on 2 degrees of freedom: p ≈ 0.4778.
    let one = [vec![1.0], vec![1.0], vec![1.0]];
    let p = p_values(&refs(&one), &[-1.0, 1.0, 3.0], &[0]).expect("a regular system");
    assert!((p[0] - 0.4778).abs() < 1e-3, "{p:?}");
    // Known values: t = 2.228 on 10 degrees of freedom is the 5% two-sided point.
    assert!((two_sided_p(2.228, 10.0) - 0.05).abs() < 5e-4);
    assert_eq!(
        (two_sided_p(f64::INFINITY, 3.0), two_sided_p(f64::NAN, 3.0)),
        (0.0, 1.0)
    );
    // No degree of freedom left.
    assert!(p_values(&refs(&one), &[-1.0, 1.0, 3.0], &[0, 0, 0]).is_none());
}
