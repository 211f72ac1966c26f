//! The words under the timeline: what this phase of denoising does, and the sampler's update
//! for this step written out with its actual coefficients.

use crate::schedule::{NoiseSchedule, ScheduleConfig};
use crate::schedulers::SamplerKind;

/// What the model is busy with at signal share `alpha_bar` (the part of x_t's variance that is
/// picture rather than noise).
pub fn phase(alpha_bar: f64) -> &'static str {
    if alpha_bar < 0.05 {
        "Early: x_t is almost pure noise. The model's guess of x0 is a blur, but this is where the layout is decided: where the object goes and roughly what colour."
    } else if alpha_bar < 0.5 {
        "Middle: the noise and the picture are about as strong as each other. Shapes firm up; the guess of x0 stops changing much from step to step."
    } else {
        "Late: x_t is mostly picture. The steps only sharpen edges and clean up colour; the composition is settled."
    }
}

/// alpha_bar of the timestep a step lands on: the next step's, or after the last step what
/// each sampler ends on (DDIM: alpha_bar at t = 0, SD's `set_alpha_to_one = false`; the others:
/// the clean picture, alpha_bar = 1).
pub fn alpha_bar_prev(sampler: SamplerKind, next: Option<f64>) -> f64 {
    match (next, sampler) {
        (Some(a), _) => a,
        (None, SamplerKind::Ddim) => {
            NoiseSchedule::new(ScheduleConfig::default()).map_or(1.0, |s| s.alpha_bar(0))
        }
        (None, _) => 1.0,
    }
}

/// The update of one step with its numbers. `ab` is alpha_bar_t, `ab_prev` what the step lands
/// on, `ab_before` the previous step's alpha_bar (for DPM-Solver++'s second-order correction).
pub fn update(sampler: SamplerKind, ab: f64, ab_prev: f64, ab_before: Option<f64>) -> String {
    let sigma = |a: f64| ((1.0 - a) / a).max(0.0).sqrt();
    let kind = match sampler {
        SamplerKind::Ddim | SamplerKind::Euler | SamplerKind::DpmSolverPP2M => "deterministic",
        SamplerKind::Ddpm | SamplerKind::EulerAncestral => "stochastic",
    };
    let formula = match sampler {
        SamplerKind::Ddim => format!(
            "DDIM: x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev)·ε̂ = {:.3}·x̂0 + {:.3}·ε̂",
            ab_prev.sqrt(),
            (1.0 - ab_prev).max(0.0).sqrt()
        ),
        SamplerKind::Ddpm => {
            // Posterior q(x_prev | x_t, x0) of the strided chain (Ho et al. eq. 7).
            let alpha = ab / ab_prev;
            let beta = 1.0 - alpha;
            let c0 = ab_prev.sqrt() * beta / (1.0 - ab);
            let ct = alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab);
            let var = ((1.0 - ab_prev) / (1.0 - ab) * beta).max(0.0);
            format!(
                "DDPM: x_prev = {c0:.3}·x̂0 + {ct:.3}·x_t + {:.3}·z   (posterior mean + fresh noise z)",
                var.sqrt()
            )
        }
        SamplerKind::Euler => {
            let (s, s_next) = (sigma(ab), sigma(ab_prev));
            format!(
                "Euler: x(σ_next) = x(σ) + (σ_next − σ)·ε̂ = x + ({:.3})·ε̂   (σ {s:.3} → {s_next:.3}, x = x_t·√(1+σ²))",
                s_next - s
            )
        }
        SamplerKind::EulerAncestral => {
            let (s, s_next) = (sigma(ab), sigma(ab_prev));
            let up = (s_next * s_next * (s * s - s_next * s_next) / (s * s))
                .max(0.0)
                .sqrt();
            let down = (s_next * s_next - up * up).max(0.0).sqrt();
            format!(
                "Euler-a: x_next = x + (σ_down − σ)·ε̂ + σ_up·z = x + ({:.3})·ε̂ + {up:.3}·z   (σ {s:.3} → {down:.3}, then noise back to {s_next:.3})",
                down - s
            )
        }
        SamplerKind::DpmSolverPP2M => {
            // lambda = log(alpha / sigma) in the VP parameterisation.
            let lambda = |a: f64| 0.5 * (a / (1.0 - a).max(1e-12)).ln();
            let s_t = (1.0 - ab).sqrt();
            let (a_p, s_p) = (ab_prev.sqrt(), (1.0 - ab_prev).max(0.0).sqrt());
            if ab_prev >= 1.0 {
                return "DPM++ 2M, last step (first order, to σ = 0): x_prev = x̂0".into();
            }
            let h = lambda(ab_prev) - lambda(ab);
            let d = match ab_before {
                Some(b) => {
                    let r = (lambda(ab) - lambda(b)) / h;
                    format!(
                        "D = {:.3}·x̂0 − {:.3}·x̂0(previous step)",
                        1.0 + 1.0 / (2.0 * r),
                        1.0 / (2.0 * r)
                    )
                }
                None => "D = x̂0 (first step: first order)".into(),
            };
            format!(
                "DPM++ 2M: x_prev = (σ_prev/σ_t)·x_t − α_prev(e^(−h) − 1)·D = {:.3}·x_t + {:.3}·D, h = {h:.3}; {d}",
                s_p / s_t,
                -a_p * ((-h).exp() - 1.0),
            )
        }
    };
    format!("{formula}   [{kind}]")
}
