//! `exp` and `sigmoid` in plain f32 arithmetic that the compiler can vectorise (libm's `expf`
//! is a function call per element, which keeps the fused GroupNorm + SiLU loops scalar).

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
const ROUND: f32 = 12_582_912.0;

/// `e^x` to about 2 ulp (Cephes' `expf`): `x = n ln2 + r` with `|r| <= ln2 / 2`,
/// `e^r` by a degree-6 polynomial, `2^n` from the exponent bits. Inputs are clamped to
/// [-87, 88], where the result stays a normal float.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let shifted = x.mul_add(LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let p: f32 = 1.987_569_1e-4;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let e_r = (p * r).mul_add(r, r) + 1.0;
    // n as an integer, read from the bits of `shifted` (in [2^23, 2^24) one unit is one ulp).
    // `n as i32` would give the same value, but Rust's saturating float-to-int cast keeps the
    // loop scalar.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    e_r * f32::from_bits(n_int.wrapping_add(127) << 23)
}

/// `sigmoid(x) = 1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Independent partial sums, so reductions vectorise (a plain `iter().sum()` over f32 is one
/// dependent add per element: the compiler may not reorder float additions).
const LANES: usize = 16;

/// `sum_i f(x_i)` with 16 partial sums.
#[inline(always)]
pub fn sum_map(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum_i x_i` with 16 partial sums.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    sum_map(xs, |v| v)
}

/// `sum_i f(x_i, y_i)` over two equally long slices, with 16 partial sums.
#[inline(always)]
pub fn sum_zip(xs: &[f32], ys: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (cx, cy) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    let tail: f32 = cx
        .remainder()
        .iter()
        .zip(cy.remainder())
        .map(|(&a, &b)| f(a, b))
        .sum();
    for (a, b) in cx.zip(cy) {
        for ((s, &u), &v) in acc.iter_mut().zip(a).zip(b) {
            *s += f(u, v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `max_i x_i` with 16 partial maxima (-inf for an empty slice).
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// Compiles each function inside for AVX-512 and for AVX2 besides baseline x86-64, and picks
/// the widest the CPU has on each call (the `multiversion` crate; a cached feature test).
///
/// The crate is built for baseline x86-64 (SSE2: 4 lanes of f32), so that one build runs on any
/// x86-64 machine; the matrix products already choose their kernels at run time (the `gemm`
/// crate). Our element-wise loops get the same here, with 16 lanes (or 8) instead of 4. The
/// arithmetic is the same operations in the same order (Rust never fuses a multiply and an add
/// on its own, and the reductions above keep 16 fixed partial sums), so every path gives the
/// same bits. Where a kernel wants a fused multiply-add (the polynomials of `exp`, attention's
/// dot products) it asks for one, `f32::mul_add`, which rounds once on every path: one `vfmadd`
/// instruction in the two wide versions, a call to libm's `fmaf` in the baseline one (slow, but
/// only a CPU without AVX2 and FMA, older than about 2013, runs it). Functions called from a
/// kernel should be `#[inline(always)]`, so that they are compiled into each version.
macro_rules! wide_kernels {
    ($($item:item)*) => {
        $(
            #[multiversion::multiversion(targets(
                "x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma",
                "x86_64+avx2+fma",
            ))]
            $item
        )*
    };
}
pub(crate) use wide_kernels;

wide_kernels! {
    /// `dst += src`, element by element.
    pub fn add_assign(dst: &mut [f32], src: &[f32]) {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
    }

    /// `dst = src + b`, element by element, into memory not yet written.
    pub fn add_scalar(dst: &mut [std::mem::MaybeUninit<f32>], src: &[f32], b: f32) {
        dst.iter_mut().zip(src).for_each(|(d, s)| _ = d.write(s + b));
    }

    /// [`sum`], compiled wide.
    pub fn sum_wide(xs: &[f32]) -> f32 {
        sum(xs)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lane_sums_match_plain_sums() {
        let xs: Vec<f32> = (0..1037).map(|i| (i as f32 * 0.37).sin()).collect();
        let ys: Vec<f32> = (0..1037).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = xs.iter().map(|&v| f64::from(v)).sum();
        assert!((f64::from(super::sum(&xs)) - plain).abs() < 1e-3);
        let dot: f64 = xs.iter().zip(&ys).map(|(&a, &b)| f64::from(a * b)).sum();
        assert!((f64::from(super::sum_zip(&xs, &ys, |a, b| a * b)) - dot).abs() < 1e-3);
        assert_eq!(super::sum(&[1.0, 2.0, 3.0]), 6.0);
        let plain_max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(super::max(&xs), plain_max);
        assert_eq!(super::max(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn exp_matches_libm_to_a_few_ulp() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (super::exp(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(super::sigmoid(0.0), 0.5);
        assert!(super::sigmoid(-200.0) >= 0.0 && super::sigmoid(200.0) == 1.0);
    }
}
