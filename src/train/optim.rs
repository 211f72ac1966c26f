//! AdamW with state we can save (candle's cannot), the learning-rate schedule, and gradient
//! clipping: what every training loop in inkdrop shares.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

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
    m: Tensor,
    v: Tensor,
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
            .map(|(name, var)| {
                Ok(Slot {
                    decay: decays(&name, &var),
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    name,
                    var,
                })
            })
            .collect::<Result<_>>()?;
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
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            // Gradients carry the step's whole computation graph; detach the moments so each
            // step's graph is freed instead of being chained into the next one.
            let g = g.detach();
            s.m = ((&s.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?.detach();
            s.v = ((&s.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?.detach();
            let m_hat = (&s.m / bc1)?;
            let v_hat = (&s.v / bc2)?;
            let mut step = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            if s.decay {
                step = (step + (s.var.as_tensor() * c.weight_decay)?)?;
            }
            s.var.set(&(s.var.as_tensor() - (step * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`adamw.m.NAME`, `adamw.v.NAME`), for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("adamw.m.{}", s.name), s.m.clone()),
                    (format!("adamw.v.{}", s.name), s.v.clone()),
                ]
            })
            .collect()
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
                    s.m = m.clone();
                    s.v = v.clone();
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
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = total.sqrt();
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = (g * scale)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}
