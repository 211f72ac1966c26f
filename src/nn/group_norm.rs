//! GroupNorm, optionally followed by SiLU, in one pass forward and one pass backward.
//!
//! candle-nn builds GroupNorm out of a dozen small tensor ops (reshape, mean, subtract, square,
//! mean, sqrt, divide, multiply, add), each a pass over memory with its own backward; here each
//! direction is one pass per group. Stable Diffusion's ResnetBlock2D always applies
//! `silu(group_norm(x))`, so the activation is fused in as well. When a gradient will be asked
//! for, the forward pass keeps each group's mean and `1 / std` and, with SiLU, every
//! `sigmoid(z)` it computed, so the backward pass neither re-reads x for its statistics nor
//! evaluates an exponential again.
//! Checked against candle-nn's GroupNorm and finite differences in `tests/conv.rs`.

use std::sync::OnceLock;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::ops::contiguous_f32;

use super::fastmath::{sigmoid, sum, sum_map, sum_zip, wide_kernels};

/// Sizes of a (N, C, ...) input split into `groups` groups of channels.
#[derive(Clone, Copy)]
struct Groups {
    c: usize,
    groups: usize,
    /// Elements per channel (the product of the spatial dims).
    s: usize,
}

impl Groups {
    fn new(dims: &[usize], groups: usize, params: usize) -> Result<Self> {
        if dims.len() < 2 || groups == 0 || dims[1] % groups != 0 || params != dims[1] {
            bail!(
                "group_norm: input {dims:?} needs (N, C, ...) with C divisible by {groups} groups \
                 and {params} = C affine parameters"
            );
        }
        if dims.contains(&0) {
            bail!("group_norm: input {dims:?} must not have a dimension of size 0");
        }
        Ok(Self {
            c: dims[1],
            groups,
            s: dims[2..].iter().product(),
        })
    }

    fn channels_per_group(&self) -> usize {
        self.c / self.groups
    }

    fn segment(&self) -> usize {
        self.channels_per_group() * self.s
    }

    /// The channels of segment `i` (segments are (sample, group) in memory order).
    fn channels(&self, i: usize) -> std::ops::Range<usize> {
        let c0 = (i % self.groups) * self.channels_per_group();
        c0..c0 + self.channels_per_group()
    }
}

/// Mean and `1 / sqrt(var + eps)` of one group (two passes, for accuracy).
#[inline(always)]
fn stats(seg: &[f32], eps: f32) -> (f32, f32) {
    let m = seg.len() as f32;
    let mean = sum(seg) / m;
    let var = sum_map(seg, |v| (v - mean) * (v - mean)) / m;
    (mean, 1.0 / (var + eps).sqrt())
}

wide_kernels! {
    /// The forward pass over one group of one sample: `xs` holds its `gamma.len()` channels one
    /// after another, `ys` receives `act((x - mean) * rstd * gamma_c + beta_c)`, and `sg` (if not
    /// empty) each `sigmoid(z)`. Returns the group's (mean, rstd).
    fn forward_group(
        ys: &mut [f32],
        sg: &mut [f32],
        xs: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        silu: bool,
    ) -> (f32, f32) {
        let (mean, rstd) = stats(xs, eps);
        let s = xs.len() / gamma.len();
        for (j, (yc, xc)) in ys.chunks_mut(s).zip(xs.chunks(s)).enumerate() {
            let scale = rstd * gamma[j];
            let shift = beta[j] - mean * scale;
            // Separate loops, not one with a branch inside: a branch keeps the loop scalar.
            let affine = yc
                .iter_mut()
                .zip(xc)
                .map(|(yv, &xv)| (yv, xv * scale + shift));
            if silu && !sg.is_empty() {
                let sc = &mut sg[j * s..(j + 1) * s];
                affine.zip(sc).for_each(|((yv, z), sv)| {
                    *sv = sigmoid(z);
                    *yv = z * *sv;
                });
            } else if silu {
                affine.for_each(|(yv, z)| *yv = z * sigmoid(z));
            } else {
                affine.for_each(|(yv, z)| *yv = z);
            }
        }
        (mean, rstd)
    }

    /// The backward pass over one group of one sample (see [`GroupNormBackward`]), from the
    /// forward pass's (mean, rstd) and `sigmoid(z)`: writes `dx` into `dxs` and returns each
    /// channel's `(dgamma, dbeta)`.
    #[expect(clippy::too_many_arguments, reason = "one group's slices, affine and statistics")]
    fn backward_group(
        dxs: &mut [f32],
        xs: &[f32],
        dys: &[f32],
        sg: &[f32],
        gamma: &[f32],
        beta: &[f32],
        (mean, rstd): (f32, f32),
        silu: bool,
    ) -> Vec<(f32, f32)> {
        let cpg = gamma.len();
        let s = xs.len() / cpg;
        // Pass 1: dz = dy * act'(z) into dxs, and per channel sum(dz), sum(dz * xhat).
        let mut sums = vec![(0f32, 0f32); cpg];
        for j in 0..cpg {
            let (ga, be) = (gamma[j], beta[j]);
            let range = j * s..(j + 1) * s;
            let (dzs, xc, gc) = (&mut dxs[range.clone()], &xs[range.clone()], &dys[range.clone()]);
            if silu {
                // d(z sigmoid(z))/dz = sigmoid(z) (1 + z (1 - sigmoid(z))).
                let sc = &sg[range];
                for (((dz, &xv), &g), &sv) in dzs.iter_mut().zip(xc).zip(gc).zip(sc) {
                    let z = (xv - mean) * rstd * ga + be;
                    *dz = g * sv * (1.0 + z * (1.0 - sv));
                }
            } else {
                dzs.copy_from_slice(gc);
            }
            let sum_dz = sum(dzs);
            let sum_dz_xhat = sum_zip(dzs, xc, |dz, xv| dz * (xv - mean) * rstd);
            sums[j] = (sum_dz_xhat, sum_dz);
        }
        // Pass 2: with h = dz * gamma, dx = rstd * (h - mean(h) - xhat * mean(h xhat)).
        let m = xs.len() as f32;
        let mean_h = (0..cpg).map(|j| gamma[j] * sums[j].1).sum::<f32>() / m;
        let mean_hx = (0..cpg).map(|j| gamma[j] * sums[j].0).sum::<f32>() / m;
        for ((dc, xc), &ga) in dxs.chunks_mut(s).zip(xs.chunks(s)).zip(gamma) {
            for (d, &xv) in dc.iter_mut().zip(xc) {
                let xhat = (xv - mean) * rstd;
                *d = rstd * (*d * ga - mean_h - xhat * mean_hx);
            }
        }
        sums
    }
}

/// `y = act((x - mean_g) / sqrt(var_g + eps) * gamma_c + beta_c)`, statistics over each group
/// of channels of each sample, `act` = SiLU or identity.
struct GroupNormOp {
    groups: usize,
    eps: f32,
    silu: bool,
    /// Whether a backward pass can follow (an input is a variable or depends on one).
    keep: bool,
    /// Set once by the forward pass when `keep`.
    saved: OnceLock<Saved>,
}

/// What the forward pass leaves for the backward one.
struct Saved {
    /// (mean, rstd) of each (sample, group), in memory order.
    stats: Vec<(f32, f32)>,
    /// `sigmoid(z)` of every element, with SiLU (else empty).
    sigmoid: Vec<f32>,
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "inkdrop-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "group_norm input")?;
        let gamma = contiguous_f32(s2, l2, "group_norm weight")?;
        let beta = contiguous_f32(s3, l3, "group_norm bias")?;
        let gs = Groups::new(l1.dims(), self.groups, gamma.len())?;
        let seg = gs.segment();
        let group = |i: usize, ys: &mut [f32], sg: &mut [f32], xs: &[f32]| {
            let channels = gs.channels(i);
            let (g, b) = (&gamma[channels.clone()], &beta[channels]);
            forward_group(ys, sg, xs, g, b, self.eps, self.silu)
        };
        let mut y = vec![0f32; x.len()];
        let mut sigmoid = vec![0f32; if self.keep && self.silu { x.len() } else { 0 }];
        let stats: Vec<(f32, f32)> = if sigmoid.is_empty() {
            y.par_chunks_mut(seg)
                .zip(x.par_chunks(seg))
                .enumerate()
                .map(|(i, (ys, xs))| group(i, ys, &mut [], xs))
                .collect()
        } else {
            y.par_chunks_mut(seg)
                .zip(sigmoid.par_chunks_mut(seg))
                .zip(x.par_chunks(seg))
                .enumerate()
                .map(|(i, ((ys, sg), xs))| group(i, ys, sg, xs))
                .collect()
        };
        if self.keep && self.saved.set(Saved { stats, sigmoid }).is_err() {
            bail!("group_norm: one operation ran its forward pass twice");
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let affine = Tensor::stack(&[gamma, beta], 0)?; // (2, C)
        let Some(saved) = self.saved.get() else {
            bail!("group_norm: backward pass without its forward pass's statistics");
        };
        let backward = GroupNormBackward {
            groups: self.groups,
            silu: self.silu,
            saved,
        };
        let flat = x.apply_op3_no_bwd(&affine, &dy.contiguous()?, &backward)?;
        let (n, c) = (x.elem_count(), gamma.elem_count());
        let dx = flat.narrow(0, 0, n)?.reshape(x.shape())?;
        let dgamma = flat.narrow(0, n, c)?.reshape(gamma.shape())?;
        let dbeta = flat.narrow(0, n + c, c)?.reshape(beta.shape())?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The gradients of [`GroupNormOp`] from (x, [gamma; beta], dy) as one flat buffer
/// `[dx, dgamma, dbeta]`. With `dz = dy * act'(z)` and `h = dz * gamma`, per group:
/// `dx = rstd * (h - mean(h) - xhat * mean(h * xhat))`, `dgamma = sum dz * xhat`,
/// `dbeta = sum dz`.
struct GroupNormBackward<'a> {
    groups: usize,
    silu: bool,
    saved: &'a Saved,
}

impl CustomOp3 for GroupNormBackward<'_> {
    fn name(&self) -> &'static str {
        "inkdrop-group-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "group_norm input")?;
        let affine = contiguous_f32(s2, l2, "group_norm affine parameters")?;
        let dy = contiguous_f32(s3, l3, "group_norm output gradient")?;
        let (gamma, beta) = affine.split_at(affine.len() / 2);
        let gs = Groups::new(l1.dims(), self.groups, gamma.len())?;
        let c = gs.c;
        let mut out = vec![0f32; x.len() + 2 * c];
        let (dx, affine_grads) = out.split_at_mut(x.len());
        let (stats, sigmoid) = (&self.saved.stats, &self.saved.sigmoid);
        if stats.len() != x.len() / gs.segment() || (self.silu && sigmoid.len() != x.len()) {
            bail!("group_norm: backward pass without its forward pass's statistics");
        }
        // Per segment: the (dgamma, dbeta) of its channels, summed over samples afterwards.
        let segments = x.par_chunks(gs.segment()).zip(dy.par_chunks(gs.segment()));
        let partial: Vec<Vec<(f32, f32)>> = dx
            .par_chunks_mut(gs.segment())
            .zip(segments)
            .enumerate()
            .map(|(i, (dxs, (xs, dys)))| {
                let channels = gs.channels(i);
                let sg = if self.silu {
                    &sigmoid[i * gs.segment()..][..gs.segment()]
                } else {
                    &[]
                };
                let (g, b) = (&gamma[channels.clone()], &beta[channels]);
                backward_group(dxs, xs, dys, sg, g, b, stats[i], self.silu)
            })
            .collect();
        for (i, sums) in partial.iter().enumerate() {
            for (ch, (dg, db)) in gs.channels(i).zip(sums) {
                affine_grads[ch] += dg;
                affine_grads[c + ch] += db;
            }
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// GroupNorm of `x` (N, C, ...) over `groups` groups of channels, with per-channel `gamma` and
/// `beta` (C,): `y = (x - mean_g) / sqrt(var_g + eps) * gamma + beta`; with `silu`, then
/// `y * sigmoid(y)`. Fused, f32, differentiable in all three inputs.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        GroupNormOp {
            groups,
            eps: eps as f32,
            silu,
            keep: x.track_op() || gamma.track_op() || beta.track_op(),
            saved: OnceLock::new(),
        },
    )
}
