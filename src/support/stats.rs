//! Summary statistics of pixel values, measured next to what theory predicts.

use ndarray::{Array, Dimension};

/// Mean and (population) standard deviation of all values.
pub fn mean_std<D: Dimension>(x: &Array<f32, D>) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

/// Pearson correlation between two arrays of the same shape.
pub fn correlation<D: Dimension>(a: &Array<f32, D>, b: &Array<f32, D>) -> f64 {
    let (ma, sa) = mean_std(a);
    let (mb, sb) = mean_std(b);
    let n = a.len().max(1) as f64;
    let cov = a
        .iter()
        .zip(b.iter())
        .map(|(&x, &y)| (f64::from(x) - ma) * (f64::from(y) - mb))
        .sum::<f64>()
        / n;
    cov / (sa * sb)
}

/// Histogram as a density: `bins` equal bins over `[lo, hi]`, returned as (bin centre, density)
/// so that the curve integrates to the fraction of values inside the range.
pub fn density<'a>(
    values: impl IntoIterator<Item = &'a f32>,
    lo: f64,
    hi: f64,
    bins: usize,
) -> Vec<(f64, f64)> {
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    let mut n = 0usize;
    for &v in values {
        n += 1;
        let v = f64::from(v);
        if v >= lo && v < hi {
            counts[((v - lo) / width) as usize] += 1;
        }
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            (
                lo + (i as f64 + 0.5) * width,
                c as f64 / (n.max(1) as f64 * width),
            )
        })
        .collect()
}

/// The standard normal density, 1/sqrt(2 pi) exp(-x^2 / 2).
pub fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Projects points (N rows of D values) onto their first two principal components (power
/// iteration on the D x D covariance; deterministic, signs fixed so the largest loading is
/// positive). Returns (pc1, pc2) per point and the share of variance each explains.
pub fn pca_2d(points: &[Vec<f32>]) -> (Vec<(f64, f64)>, [f64; 2]) {
    let n = points.len();
    let d = points.first().map_or(0, Vec::len);
    if n == 0 || d == 0 {
        return (Vec::new(), [0.0; 2]);
    }
    let mean: Vec<f64> = (0..d)
        .map(|j| points.iter().map(|p| f64::from(p[j])).sum::<f64>() / n as f64)
        .collect();
    let centered: Vec<Vec<f64>> = points
        .iter()
        .map(|p| (0..d).map(|j| f64::from(p[j]) - mean[j]).collect())
        .collect();
    let mut cov = vec![vec![0f64; d]; d];
    for p in &centered {
        for i in 0..d {
            for j in 0..d {
                cov[i][j] += p[i] * p[j] / n as f64;
            }
        }
    }
    let total: f64 = (0..d).map(|i| cov[i][i]).sum();
    let mut components: Vec<Vec<f64>> = Vec::new();
    let mut explained = [0.0; 2];
    for (k, share) in explained.iter_mut().enumerate() {
        let mut v: Vec<f64> = (0..d).map(|i| 1.0 + (i + k) as f64 * 1e-3).collect();
        for _ in 0..500 {
            let mut w: Vec<f64> = (0..d)
                .map(|i| (0..d).map(|j| cov[i][j] * v[j]).sum())
                .collect();
            for c in &components {
                let dot: f64 = w.iter().zip(c).map(|(a, b)| a * b).sum();
                w.iter_mut().zip(c).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
            v = w.iter().map(|x| x / norm).collect();
        }
        let largest = v
            .iter()
            .copied()
            .fold(0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        if largest < 0.0 {
            v.iter_mut().for_each(|x| *x = -*x);
        }
        let lambda: f64 = (0..d)
            .map(|i| v[i] * (0..d).map(|j| cov[i][j] * v[j]).sum::<f64>())
            .sum();
        *share = if total > 0.0 { lambda / total } else { 0.0 };
        components.push(v);
    }
    let proj = centered
        .iter()
        .map(|p| {
            let dot = |c: &Vec<f64>| p.iter().zip(c).map(|(a, b)| a * b).sum::<f64>();
            (dot(&components[0]), dot(&components[1]))
        })
        .collect();
    (proj, explained)
}
