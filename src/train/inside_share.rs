//! The grounding loss's `inside` ([`super::grounding`]), fused: how much of each word's
//! cross-attention falls inside its object, forward and backward in one parallel pass each.
//!
//! ```text
//! A[b, u, t]      = (1/H) sum_h P[b, h, u, t]                 mean over heads
//! inside[b, t]    = sum_u A M / (sum_u A + 1e-8)              M: the object's coverage
//! d inside / d P  = (M[b, u, t] - inside[b, t]) / ((sum_u A + 1e-8) H)
//! ```
//!
//! Written with candle's ops it was five reductions and products over every recorded map and
//! as many again backward, all on one core: 3% of a `train all` UNet step with the other
//! core waiting. Checked against that composition (values and gradients) in `tests/unet.rs`.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::nn::ops::{contiguous_f32, written_by};

/// Added to the denominator, as in the composed formula.
const EPS: f32 = 1e-8;

/// `inside` (B, T) of attention probabilities `probs` (B, H, U, T) and coverage `mask`
/// (B, U, T) (a constant: no gradient flows to it).
pub fn inside_share(probs: &Tensor, mask: &Tensor) -> Result<Tensor> {
    probs
        .contiguous()?
        .apply_op2(&mask.contiguous()?, InsideShare)
}

/// (B, H, U, T) and (B, U, T), or an error naming `op`.
fn dims(l1: &Layout, l2: &Layout, op: &str) -> Result<(usize, usize, usize, usize)> {
    let (b, h, u, t) = l1.shape().dims4()?;
    if l2.shape().dims3()? != (b, u, t) {
        bail!(
            "{op}: probabilities {:?} and mask {:?} do not match",
            l1.dims(),
            l2.dims()
        );
    }
    Ok((b, h, u, t))
}

/// `(sum_u A M, sum_u A)` per token of one sample: `p` (H, U, T), `m` (U, T).
fn sums(p: &[f32], m: &[f32], (h, u, t): (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let (mut num, mut den) = (vec![0f32; t], vec![0f32; t]);
    let mut a = vec![0f32; t];
    for cell in 0..u {
        a.fill(0.0);
        for head in 0..h {
            let row = &p[(head * u + cell) * t..][..t];
            a.iter_mut().zip(row).for_each(|(a, &p)| *a += p);
        }
        let m_row = &m[cell * t..][..t];
        for k in 0..t {
            let a_k = a[k] / h as f32;
            den[k] += a_k;
            num[k] += a_k * m_row[k];
        }
    }
    (num, den)
}

struct InsideShare;

impl CustomOp2 for InsideShare {
    fn name(&self) -> &'static str {
        "inkdrop-inside-share"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, u, t) = dims(l1, l2, self.name())?;
        let p = contiguous_f32(s1, l1, self.name())?;
        let m = contiguous_f32(s2, l2, self.name())?;
        let mut out = vec![0f32; b * t];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), Shape::from((b, t))));
        }
        out.par_chunks_mut(t).enumerate().for_each(|(i, out)| {
            let (num, den) = sums(&p[i * h * u * t..], &m[i * u * t..], (h, u, t));
            for k in 0..t {
                out[k] = num[k] / (den[k] + EPS);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, t))))
    }

    fn bwd(
        &self,
        probs: &Tensor,
        mask: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dp = probs.apply_op3_no_bwd(mask, &grad.contiguous()?, &InsideShareBackward)?;
        Ok((Some(dp), None))
    }
}

/// `dP[b, h, u, t] = g[b, t] (M[b, u, t] - inside[b, t]) / ((sum_u A + 1e-8) H)`.
struct InsideShareBackward;

impl CustomOp3 for InsideShareBackward {
    fn name(&self) -> &'static str {
        "inkdrop-inside-share-backward"
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
        let (b, h, u, t) = dims(l1, l2, self.name())?;
        if l3.shape().dims2()? != (b, t) {
            bail!(
                "{}: gradient {:?}, expected ({b}, {t})",
                self.name(),
                l3.dims()
            );
        }
        let p = contiguous_f32(s1, l1, self.name())?;
        let m = contiguous_f32(s2, l2, self.name())?;
        let g = contiguous_f32(s3, l3, self.name())?;
        let per = h * u * t;
        if b * per == 0 {
            return Ok((CpuStorage::F32(vec![]), l1.shape().clone()));
        }
        // SAFETY: each sample's task writes all of its (H, U, T) block.
        let (dp, ()) = unsafe {
            written_by(b * per, |dp| {
                dp.par_chunks_mut(per).enumerate().for_each(|(i, dp)| {
                    let m = &m[i * u * t..][..u * t];
                    let (num, den) = sums(&p[i * per..], m, (h, u, t));
                    // inside and g / ((den + eps) H) per token.
                    let inside: Vec<f32> = (0..t).map(|k| num[k] / (den[k] + EPS)).collect();
                    let scale: Vec<f32> = (0..t)
                        .map(|k| g[i * t + k] / ((den[k] + EPS) * h as f32))
                        .collect();
                    for (row, dp_row) in dp.chunks_exact_mut(t).enumerate() {
                        let m_row = &m[(row % u) * t..][..t];
                        for k in 0..t {
                            dp_row[k].write(scale[k] * (m_row[k] - inside[k]));
                        }
                    }
                })
            })
        };
        Ok((CpuStorage::F32(dp), l1.shape().clone()))
    }
}
