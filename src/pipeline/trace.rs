//! The record of one generation: every step's tensors and numbers, kept so that chapters, the
//! book and the terminal UI can show any step without running the model again.

use candle_core::Tensor;

use crate::schedulers::SamplerKind;
use crate::unet::attention::AttentionMap;

/// One denoising step.
#[derive(Clone, Debug)]
pub struct TraceStep {
    /// 0 for the first (noisiest) step.
    pub index: usize,
    /// The training timestep the UNet was told (fractional for Euler with `linspace`).
    pub t: f64,
    /// alpha_bar_t: the share of the clean latent's variance still in x_t.
    pub alpha_bar: f64,
    /// sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t).
    pub sigma: f64,
    /// x_t as the UNet sees it, sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps: (B, 4, h, w).
    pub latents: Tensor,
    /// The UNet's noise prediction given the negative (empty) prompt; None without guidance.
    /// (A `v_prediction` UNet's outputs are recorded as the noise they imply,
    /// eps = sqrt(ab) v + sqrt(1 - ab) x_t.)
    pub eps_uncond: Option<Tensor>,
    /// The noise prediction given the prompt.
    pub eps_cond: Tensor,
    /// The guided prediction the scheduler used, eps_uncond + s (eps_cond - eps_uncond).
    pub eps: Tensor,
    /// The clean latent x0 this step's prediction implies.
    pub pred_x0: Tensor,
    /// Wall time of the step (UNet and scheduler).
    pub seconds: f64,
    /// Cross-attention maps, when requested.
    pub attention: Vec<AttentionMap>,
}

/// Every step of one generation, and its settings.
#[derive(Clone, Debug)]
pub struct Trace {
    pub prompt: String,
    pub negative_prompt: String,
    pub sampler: SamplerKind,
    pub guidance_scale: f64,
    pub seed: u64,
    pub text_seconds: f64,
    pub decode_seconds: f64,
    pub total_seconds: f64,
    pub steps: Vec<TraceStep>,
}

impl Trace {
    /// Root-mean-square of a tensor (the "size" of a noise prediction per element).
    pub fn rms(t: &Tensor) -> f64 {
        t.sqr()
            .and_then(|s| s.mean_all())
            .and_then(|m| m.to_scalar::<f32>())
            .map_or(f64::NAN, |m| f64::from(m).sqrt())
    }

    /// Per step: (t, |eps_uncond|, |eps_cond|, |eps_cond - eps_uncond|) as RMS values, the
    /// numbers behind classifier-free guidance.
    pub fn guidance_norms(&self) -> Vec<(f64, f64, f64, f64)> {
        self.steps
            .iter()
            .map(|s| {
                let u = s.eps_uncond.as_ref().map_or(f64::NAN, Self::rms);
                let diff = s
                    .eps_uncond
                    .as_ref()
                    .and_then(|u| (&s.eps_cond - u).ok())
                    .map_or(f64::NAN, |d| Self::rms(&d));
                (s.t, u, Self::rms(&s.eps_cond), diff)
            })
            .collect()
    }
}
