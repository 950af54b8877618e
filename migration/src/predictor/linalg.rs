//! The small dense algebra the least-squares fits need (a dozen unknowns), kept here so the
//! crate needs no linear-algebra dependency.

/// Solves `a·x = b` for square `a` by Gaussian elimination with partial pivoting. `None` when
/// `a` is singular to working precision or the sizes disagree.
pub fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    if a.len() != n || a.iter().any(|r| r.len() != n) {
        return None;
    }
    let scale = a
        .iter()
        .flat_map(|r| r.iter())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    if !scale.is_finite() || scale == 0.0 {
        return None;
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() <= scale * 1e-14 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let factor = a[row][col] / a[col][col];
            if factor == 0.0 {
                continue;
            }
            let (upper, lower) = a.split_at_mut(row);
            for (d, s) in lower[0][col..].iter_mut().zip(&upper[col][col..]) {
                *d -= factor * s;
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// The weighted normal equations of `p` unknowns: `A = Σ w_i x_i x_iᵀ`, `b = Σ w_i y_i x_i`
/// (a missing weight counts as 1).
pub fn normal_equations(
    rows: &[&[f64]],
    y: &[f64],
    w: Option<&[f64]>,
    p: usize,
) -> (Vec<Vec<f64>>, Vec<f64>) {
    let mut a = vec![vec![0.0; p]; p];
    let mut b = vec![0.0; p];
    for (k, (x, yi)) in rows.iter().zip(y).enumerate() {
        let wi = w.map_or(1.0, |w| w[k]);
        for i in 0..p {
            let wx = wi * x[i];
            b[i] += wx * yi;
            for j in 0..p {
                a[i][j] += wx * x[j];
            }
        }
    }
    (a, b)
}

/// Weighted ridge least squares: minimises `Σ w_i (x_i·θ − y_i)² + Σ λ_j (θ_j − μ_j)²`.
pub fn weighted_ridge(
    rows: &[&[f64]],
    y: &[f64],
    w: &[f64],
    lambda: &[f64],
    mu: &[f64],
) -> Option<Vec<f64>> {
    let p = mu.len();
    let (mut a, mut b) = normal_equations(rows, y, Some(w), p);
    for j in 0..p {
        a[j][j] += lambda[j];
        b[j] += lambda[j] * mu[j];
    }
    solve(a, b)
}

/// The diagonal of `a⁻¹` (one solve per column). `None` when `a` is singular.
pub fn inverse_diagonal(a: &[Vec<f64>]) -> Option<Vec<f64>> {
    (0..a.len())
        .map(|j| {
            let mut e = vec![0.0; a.len()];
            e[j] = 1.0;
            solve(a.to_vec(), e).map(|x| x[j])
        })
        .collect()
}

/// `x·θ`.
pub fn dot(x: &[f64], theta: &[f64]) -> f64 {
    x.iter().zip(theta).map(|(a, b)| a * b).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_a_small_system_and_refuses_a_singular_one() {
        let x = solve(vec![vec![0.0, 2.0], vec![3.0, 1.0]], vec![4.0, 5.0]).unwrap();
        assert!(
            (x[0] - 1.0).abs() < 1e-12 && (x[1] - 2.0).abs() < 1e-12,
            "{x:?}"
        );
        assert!(solve(vec![vec![1.0, 2.0], vec![2.0, 4.0]], vec![1.0, 2.0]).is_none());
        assert!(solve(vec![vec![1.0]], vec![1.0, 2.0]).is_none());
    }

    #[test]
    fn the_inverse_diagonal_of_a_small_matrix() {
        // [[2, 1], [1, 1]]⁻¹ = [[1, −1], [−1, 2]].
        let d = inverse_diagonal(&[vec![2.0, 1.0], vec![1.0, 1.0]]).unwrap();
        assert!(
            (d[0] - 1.0).abs() < 1e-12 && (d[1] - 2.0).abs() < 1e-12,
            "{d:?}"
        );
        assert!(inverse_diagonal(&[vec![1.0, 2.0], vec![2.0, 4.0]]).is_none());
    }

    #[test]
    fn ridge_recovers_an_exact_line() {
        let rows: Vec<[f64; 2]> = (0..10).map(|i| [1.0, f64::from(i)]).collect();
        let y: Vec<f64> = rows.iter().map(|r| 0.5 + 2.0 * r[1]).collect();
        let refs: Vec<&[f64]> = rows.iter().map(|r| &r[..]).collect();
        let t = weighted_ridge(&refs, &y, &[1.0; 10], &[1e-12; 2], &[0.0; 2]).unwrap();
        assert!(
            (t[0] - 0.5).abs() < 1e-6 && (t[1] - 2.0).abs() < 1e-6,
            "{t:?}"
        );
    }
}
