//! AdamW with state we can save (candle's cannot), the learning-rate schedule, and gradient
//! clipping: what every training loop in inkdrop shares.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, Var};
use rayon::prelude::*;

use crate::nn::fastmath::wide_kernels;

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// CLIP's choices: beta2 = 0.98, eps = 1e-6, weight decay 0.1.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.1,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    /// First and second moments, flat, in the variable's element order.
    m: Vec<f32>,
    v: Vec<f32>,
    decay: bool,
}

/// AdamW (Loshchilov & Hutter 2019), one step per call:
///
/// ```text
/// m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
/// theta -= lr * ( (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * theta )
/// ```
///
/// Weight decay applies to matrices only, not to biases, norm gains, embeddings or the
/// temperature (decaying those hurts and is not what CLIP or diffusers do).
///
/// The update is one fused pass per variable, in place ([`AdamWStep`]); written with candle ops
/// it was a dozen passes, each with a fresh buffer.
pub struct AdamW {
    slots: Vec<Slot>,
    pub step: usize,
    pub config: AdamWConfig,
}

/// Whether a parameter gets weight decay: matrices and conv kernels, but not embeddings.
pub fn decays(name: &str, var: &Var) -> bool {
    var.rank() >= 2 && !name.contains("embedding")
}

impl AdamW {
    /// One slot per variable, in the given (stable) order.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| Slot {
                decay: decays(&name, &var),
                m: vec![0.0; var.elem_count()],
                v: vec![0.0; var.elem_count()],
                name,
                var,
            })
            .collect();
        Ok(AdamW {
            slots,
            step: 0,
            config,
        })
    }

    /// Applies one update with learning rate `lr`. Variables without a gradient are skipped.
    pub fn update(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        // The variables in parallel (most are too small to split), each one's own update
        // split further when it is large: per weight the same arithmetic, so the same bits.
        self.slots.par_iter_mut().try_for_each(|s| {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                return Ok(());
            };
            let g = g.contiguous()?;
            let op = AdamWStep {
                moments: Mutex::new((&mut s.m, &mut s.v)),
                beta1: c.beta1 as f32,
                one_minus_beta1: (1.0 - c.beta1) as f32,
                beta2: c.beta2 as f32,
                one_minus_beta2: (1.0 - c.beta2) as f32,
                inv_bc1: (1.0 / bc1) as f32,
                inv_bc2: (1.0 / bc2) as f32,
                eps: c.eps as f32,
                weight_decay: s.decay.then_some(c.weight_decay as f32),
                lr: lr as f32,
            };
            s.var.as_tensor().inplace_op2(&g, &op)
        })
    }

    /// The moments as named tensors (`adamw.m.NAME`, `adamw.v.NAME`), for checkpoints.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            let (shape, dev) = (s.var.shape(), s.var.device());
            out.push((
                format!("adamw.m.{}", s.name),
                Tensor::from_slice(&s.m, shape, dev)?,
            ));
            out.push((
                format!("adamw.v.{}", s.name),
                Tensor::from_slice(&s.v, shape, dev)?,
            ));
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for s in &mut self.slots {
            let (m, v) = (
                tensors.get(&format!("adamw.m.{}", s.name)),
                tensors.get(&format!("adamw.v.{}", s.name)),
            );
            match (m, v) {
                (Some(m), Some(v)) if m.dims() == s.var.dims() && v.dims() == s.var.dims() => {
                    s.m = m.flatten_all()?.to_vec1()?;
                    s.v = v.flatten_all()?.to_vec1()?;
                }
                _ => candle_core::bail!(
                    "checkpoint has no optimizer state for {} with shape {:?}",
                    s.name,
                    s.var.dims()
                ),
            }
        }
        self.step = step;
        Ok(())
    }
}

/// One AdamW update of one variable, in place on its storage, given its gradient. The
/// arithmetic is the candle-op formulation's, operation for operation in f32, so the weights
/// are the same bits:
///
/// ```text
/// m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g g
/// step = (m / bc1) / (sqrt(v / bc2) + eps)  [+ wd theta];   theta = theta - lr step
/// ```
struct AdamWStep<'a> {
    moments: Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_bc1: f32,
    inv_bc2: f32,
    eps: f32,
    weight_decay: Option<f32>,
    lr: f32,
}

/// The data of an in-place op's destination and source: contiguous f32 of the same length.
fn inplace_slices<'a>(
    s1: &'a mut CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
    op: &str,
) -> Result<(&'a mut [f32], &'a [f32])> {
    let (CpuStorage::F32(dst), CpuStorage::F32(src)) = (s1, s2) else {
        candle_core::bail!("{op}: f32 tensors only");
    };
    let (Some((d0, d1)), Some((s0, s1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
    else {
        candle_core::bail!("{op}: both tensors must be contiguous");
    };
    if d1 - d0 != s1 - s0 {
        candle_core::bail!("{op}: {} vs {} elements", d1 - d0, s1 - s0);
    }
    Ok((&mut dst[d0..d1], &src[s0..s1]))
}

/// Elements per parallel work item of the update.
const UPDATE_CHUNK: usize = 1 << 14;

impl InplaceOp2 for AdamWStep<'_> {
    fn name(&self) -> &'static str {
        "inkdrop-adamw-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (theta, grad) = inplace_slices(s1, l1, s2, l2, self.name())?;
        let mut moments = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("AdamW moments poisoned".into()))?;
        let (m, v) = &mut *moments;
        if m.len() != theta.len() || v.len() != theta.len() {
            candle_core::bail!(
                "{}: {} weights, {} / {} moments",
                self.name(),
                theta.len(),
                m.len(),
                v.len()
            );
        }
        theta
            .par_chunks_mut(UPDATE_CHUNK)
            .zip(grad.par_chunks(UPDATE_CHUNK))
            .zip(m.par_chunks_mut(UPDATE_CHUNK))
            .zip(v.par_chunks_mut(UPDATE_CHUNK))
            .for_each(|(((theta, grad), m), v)| adamw_chunk(theta, grad, m, v, self));
        Ok(())
    }
}

/// `ema = decay * ema + (1 - decay) * w`, in place on `ema`'s storage, in one pass (the same f32
/// operations as `ema * decay + w * (1 - decay)` written with candle ops, so the same bits).
/// `ema` must own its storage: a `detach()`ed view of a variable would update the variable.
pub fn ema_update(ema: &Tensor, w: &Tensor, decay: f64) -> Result<()> {
    ema.inplace_op2(
        &w.contiguous()?,
        &EmaStep {
            decay: decay as f32,
            one_minus_decay: (1.0 - decay) as f32,
        },
    )
}

struct EmaStep {
    decay: f32,
    one_minus_decay: f32,
}

impl InplaceOp2 for EmaStep {
    fn name(&self) -> &'static str {
        "inkdrop-ema-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (ema, w) = inplace_slices(s1, l1, s2, l2, self.name())?;
        ema.par_chunks_mut(UPDATE_CHUNK)
            .zip(w.par_chunks(UPDATE_CHUNK))
            .for_each(|(ema, w)| ema_chunk(ema, w, self.decay, self.one_minus_decay));
        Ok(())
    }
}

wide_kernels! {
    /// [`AdamWStep`] on one chunk of a variable `theta`, its gradient and its moments.
    fn adamw_chunk<'a>(
        theta: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        op: &AdamWStep<'a>,
    ) {
        for (((w, &g), m), v) in theta.iter_mut().zip(grad).zip(m).zip(v) {
            *m = *m * op.beta1 + g * op.one_minus_beta1;
            *v = *v * op.beta2 + g * g * op.one_minus_beta2;
            let m_hat = *m * op.inv_bc1;
            let v_hat = *v * op.inv_bc2;
            let mut step = m_hat / (v_hat.sqrt() + op.eps);
            if let Some(wd) = op.weight_decay {
                step += *w * wd;
            }
            *w -= step * op.lr;
        }
    }

    /// `sum_i x_i^2`, with 16 partial sums.
    fn sum_of_squares_chunk(xs: &[f32]) -> f32 {
        crate::nn::fastmath::sum_map(xs, |v| v * v)
    }

    /// [`EmaStep`] on one chunk: `ema = decay * ema + one_minus_decay * w`.
    fn ema_chunk(ema: &mut [f32], w: &[f32], decay: f32, one_minus_decay: f32) {
        for (e, &w) in ema.iter_mut().zip(w) {
            *e = *e * decay + w * one_minus_decay;
        }
    }
}

/// Linear warmup over `warmup` steps, then cosine decay to 0 at `total`:
/// `lr(s) = base * s / warmup` for s < warmup, else `base * (1 + cos(pi * p)) / 2` with
/// `p = (s - warmup) / (total - warmup)`.
pub fn lr_at(step: usize, total: usize, warmup: usize, base: f64) -> f64 {
    if step < warmup {
        base * (step + 1) as f64 / warmup as f64
    } else {
        let p = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        base * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos())
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm before
/// clipping: `g <- g * min(1, max_norm / |g|)`.
///
/// The variables are taken in parallel (most are small, so one at a time kept a core idle);
/// each one's squares are summed in chunks of a fixed size, and the chunks and the variables
/// in order, so the norm has the same bits on any number of threads.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let present: Vec<(&Var, Tensor)> = vars
        .iter()
        .filter_map(|v| grads.get(v.as_tensor()).map(|g| (v, g.clone())))
        .collect();
    let sums = present
        .par_iter()
        .map(|(_, g)| sum_of_squares(g))
        .collect::<Result<Vec<f64>>>()?;
    let norm = sums.iter().sum::<f64>().sqrt();
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        let scaled = present
            .par_iter()
            .map(|(_, g)| g * scale)
            .collect::<Result<Vec<Tensor>>>()?;
        for ((v, _), g) in present.iter().zip(scaled) {
            grads.insert(v.as_tensor(), g);
        }
    }
    Ok(norm)
}

/// `sum_i g_i^2` over a tensor's elements: per chunk of [`UPDATE_CHUNK`] in f32 (16 partial
/// sums), the chunks added in order in f64.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    let g = g.contiguous()?;
    let (storage, layout) = g.storage_and_layout();
    let data = crate::nn::ops::storage_f32(&storage, layout, "clip_grad_norm")?;
    Ok(data
        .chunks(UPDATE_CHUNK)
        .map(|c| f64::from(sum_of_squares_chunk(c)))
        .sum())
}
