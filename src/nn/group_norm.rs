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

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::ops::{contiguous_f32, written_by};

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
    /// after another, every element of `ys` receives `act((x - mean) * rstd * gamma_c + beta_c)`,
    /// and of `sg` (if not empty) `sigmoid(z)`. Returns the group's (mean, rstd).
    fn forward_group(
        ys: &mut [MaybeUninit<f32>],
        sg: &mut [MaybeUninit<f32>],
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
                    yv.write(z * *sv.write(sigmoid(z)));
                });
            } else if silu {
                affine.for_each(|(yv, z)| _ = yv.write(z * sigmoid(z)));
            } else {
                affine.for_each(|(yv, z)| _ = yv.write(z));
            }
        }
        (mean, rstd)
    }

    /// The backward pass over one group of one sample (see [`GroupNormBackward`]), from the
    /// forward pass's (mean, rstd) and `sigmoid(z)`: writes every element of `dxs`, and each
    /// channel's `(dgamma, dbeta)` into `sums`. `dzs` is scratch of the group's size (used with SiLU).
    #[expect(clippy::too_many_arguments, reason = "one group's slices, affine and statistics")]
    fn backward_group(
        dxs: &mut [MaybeUninit<f32>],
        sums: &mut [(f32, f32)],
        dzs: &mut [f32],
        xs: &[f32],
        dys: &[f32],
        sg: &[f32],
        gamma: &[f32],
        beta: &[f32],
        (mean, rstd): (f32, f32),
        silu: bool,
    ) {
        let cpg = gamma.len();
        let s = xs.len() / cpg;
        // Pass 1: dz = dy * act'(z) (into the scratch `dzs` with SiLU; dy itself without), and
        // per channel sum(dz), sum(dz * xhat).
        if silu {
            for j in 0..cpg {
                let (ga, be) = (gamma[j], beta[j]);
                let range = j * s..(j + 1) * s;
                let zc = &mut dzs[range.clone()];
                let (xc, gc, sc) = (&xs[range.clone()], &dys[range.clone()], &sg[range]);
                // d(z sigmoid(z))/dz = sigmoid(z) (1 + z (1 - sigmoid(z))).
                for (((dz, &xv), &g), &sv) in zc.iter_mut().zip(xc).zip(gc).zip(sc) {
                    let z = (xv - mean) * rstd * ga + be;
                    *dz = g * sv * (1.0 + z * (1.0 - sv));
                }
            }
        }
        let dzs: &[f32] = if silu { dzs } else { dys };
        for (j, (zc, xc)) in dzs.chunks(s).zip(xs.chunks(s)).enumerate() {
            let sum_dz = sum(zc);
            let sum_dz_xhat = sum_zip(zc, xc, |dz, xv| dz * (xv - mean) * rstd);
            sums[j] = (sum_dz_xhat, sum_dz);
        }
        // Pass 2: with h = dz * gamma, dx = rstd * (h - mean(h) - xhat * mean(h xhat)).
        let m = xs.len() as f32;
        let mean_h = (0..cpg).map(|j| gamma[j] * sums[j].1).sum::<f32>() / m;
        let mean_hx = (0..cpg).map(|j| gamma[j] * sums[j].0).sum::<f32>() / m;
        let channels = dxs.chunks_mut(s).zip(dzs.chunks(s)).zip(xs.chunks(s)).zip(gamma);
        for (((dc, zc), xc), &ga) in channels {
            for ((d, &dz), &xv) in dc.iter_mut().zip(zc).zip(xc) {
                let xhat = (xv - mean) * rstd;
                d.write(rstd * (dz * ga - mean_h - xhat * mean_hx));
            }
        }
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
        let group = |i: usize, ys: &mut [_], sg: &mut [_], xs: &[f32]| {
            let channels = gs.channels(i);
            let (g, b) = (&gamma[channels.clone()], &beta[channels]);
            forward_group(ys, sg, xs, g, b, self.eps, self.silu)
        };
        let sigmoid_len = if self.keep && self.silu { x.len() } else { 0 };
        // SAFETY: `forward_group` writes every element of its segment of `y` and, when kept,
        // of `sigmoid`; the segments cover both.
        let (y, (sigmoid, stats)) = unsafe {
            written_by(x.len(), |y| {
                written_by(sigmoid_len, |sigmoid| -> Vec<(f32, f32)> {
                    if sigmoid.is_empty() {
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
                    }
                })
            })
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
        let (c, seg) = (gs.c, gs.segment());
        let (stats, sigmoid) = (&self.saved.stats, &self.saved.sigmoid);
        if stats.len() != x.len() / seg || (self.silu && sigmoid.len() != x.len()) {
            bail!("group_norm: backward pass without its forward pass's statistics");
        }
        if dy.len() != x.len() {
            bail!(
                "group_norm: output gradient of {} elements for an input of {}",
                dy.len(),
                x.len()
            );
        }
        // Per segment: the (dgamma, dbeta) of its channels, summed over samples afterwards.
        let cpg = gs.channels_per_group();
        let mut partial = vec![(0f32, 0f32); x.len() / seg * cpg];
        let segments = x.par_chunks(seg).zip(dy.par_chunks(seg));
        let segments = segments.zip(partial.par_chunks_mut(cpg));
        // SAFETY: `backward_group` writes every element of its segment of `dx`, and the
        // segments cover it (x and dy have the same length, checked above, so the zip drops
        // none); the affine gradients are zeroed here.
        let (mut out, ()) = unsafe {
            written_by(x.len() + 2 * c, |out| {
                out[x.len()..].fill(MaybeUninit::new(0.0));
                out[..x.len()]
                    .par_chunks_mut(seg)
                    .zip(segments)
                    .enumerate()
                    .for_each_init(
                        || vec![0f32; if self.silu { seg } else { 0 }],
                        |dzs, (i, (dxs, ((xs, dys), sums)))| {
                            let channels = gs.channels(i);
                            let sg = if self.silu {
                                &sigmoid[i * seg..][..seg]
                            } else {
                                &[]
                            };
                            let (g, b) = (&gamma[channels.clone()], &beta[channels]);
                            backward_group(dxs, sums, dzs, xs, dys, sg, g, b, stats[i], self.silu)
                        },
                    )
            })
        };
        let affine_grads = &mut out[x.len()..];
        for (i, sums) in partial.chunks_exact(cpg).enumerate() {
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
