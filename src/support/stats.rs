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
