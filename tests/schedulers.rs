//! The schedulers against diffusers' own numbers (`fixtures/diffusers_schedulers.json`, made by
//! diffusers 0.42.1): timesteps exactly, sigmas and whole sampling loops to 1e-5 relative.

use candle_core::{Device, Tensor};
use inkdrop::schedulers::{
    DDIMScheduler, SamplerKind, Scheduler, SchedulerConfig, TimestepSpacing,
};
use inkdrop::{BetaSchedule, ScheduleConfig};
use serde_json::Value;

fn golden() -> Value {
    let text = include_str!("fixtures/diffusers_schedulers.json");
    serde_json::from_str(text).expect("golden file parses")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn kind_of(name: &str) -> SamplerKind {
    match name {
        "ddpm" => SamplerKind::Ddpm,
        "ddim" => SamplerKind::Ddim,
        "euler" => SamplerKind::Euler,
        "euler_a" => SamplerKind::EulerAncestral,
        "dpmpp_2m" => SamplerKind::DpmSolverPP2M,
        other => panic!("unknown scheduler {other} in the golden file"),
    }
}

/// The sampler, step count and config of one golden entry.
fn sampler_of(entry: &Value) -> (SamplerKind, usize, SchedulerConfig) {
    (
        kind_of(entry["scheduler"].as_str().unwrap()),
        entry["num_inference_steps"].as_u64().unwrap() as usize,
        config_of(entry),
    )
}

fn config_of(entry: &Value) -> SchedulerConfig {
    let c = &entry["config"];
    assert_eq!(c["beta_schedule"], "scaled_linear");
    let spacing = match c["timestep_spacing"].as_str().unwrap() {
        "leading" => TimestepSpacing::Leading,
        "trailing" => TimestepSpacing::Trailing,
        "linspace" => TimestepSpacing::Linspace,
        other => panic!("unknown spacing {other}"),
    };
    SchedulerConfig {
        schedule: ScheduleConfig {
            beta_schedule: BetaSchedule::ScaledLinear,
            num_train_timesteps: c["num_train_timesteps"].as_u64().unwrap() as usize,
            beta_start: c["beta_start"].as_f64().unwrap(),
            beta_end: c["beta_end"].as_f64().unwrap(),
            rescale_betas_zero_snr: false,
        },
        timestep_spacing: spacing,
        steps_offset: c["steps_offset"].as_u64().unwrap() as usize,
        ..SchedulerConfig::default()
    }
}

/// Largest |a - b| / max(|b|, floor): relative, except for values near zero.
fn max_rel_err(ours: &[f64], theirs: &[f64], floor: f64) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs() / b.abs().max(floor))
        .fold(0.0, f64::max)
}

#[test]
fn timesteps_sigmas_and_init_noise_sigma_match_diffusers() {
    let g = golden();
    let entries = g["timesteps"].as_array().unwrap();
    assert_eq!(entries.len(), 30);
    for e in entries {
        let (kind, n, cfg) = sampler_of(e);
        let label = format!("{kind} {:?} {n}", cfg.timestep_spacing);
        let s = kind.build(cfg, n).unwrap();
        assert_eq!(s.timesteps(), floats(&e["timesteps"]).as_slice(), "{label}");
        let want = e["init_noise_sigma"].as_f64().unwrap();
        assert!(
            (s.init_noise_sigma() - want).abs() <= 1e-5 * want,
            "{label}: init_noise_sigma {} vs {want}",
            s.init_noise_sigma()
        );
        if let Some(sig) = e.get("sigmas") {
            let ours = sigmas_of(kind, cfg, n);
            let err = max_rel_err(&ours, &floats(sig), 1e-6);
            assert!(err < 1e-5, "{label}: sigmas differ by {err:e} relative");
        }
    }
}

fn sigmas_of(kind: SamplerKind, cfg: SchedulerConfig, n: usize) -> Vec<f64> {
    use inkdrop::schedulers::*;
    match kind {
        SamplerKind::Euler => {
            let mut s = EulerDiscreteScheduler::new(cfg).unwrap();
            s.set_timesteps(n).unwrap();
            s.sigmas().to_vec()
        }
        SamplerKind::EulerAncestral => {
            let mut s = EulerAncestralDiscreteScheduler::new(cfg).unwrap();
            s.set_timesteps(n).unwrap();
            s.sigmas().to_vec()
        }
        SamplerKind::DpmSolverPP2M => {
            let mut s = DPMSolverMultistepScheduler::new(cfg).unwrap();
            s.set_timesteps(n).unwrap();
            s.sigmas().to_vec()
        }
        _ => panic!("{kind} has no sigmas"),
    }
}

/// Replays one recorded loop: the same initial sample and dummy model
/// `eps = 0.1 * scale_model_input(x, t) + 0.05 * sin(t / 100)`; every step's prev_sample (and
/// pred_original_sample where recorded) must agree.
fn replay(entry: &Value, mut s: Box<dyn Scheduler>) -> f64 {
    let shape: Vec<usize> = entry["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let init: Vec<f32> = floats(&entry["initial_sample_before_init_noise_sigma"])
        .iter()
        .map(|&v| v as f32)
        .collect();
    let mut x = (Tensor::from_vec(init, shape.as_slice(), &Device::Cpu).unwrap()
        * s.init_noise_sigma())
    .unwrap();
    let mut rng = inkdrop::support::seeded_rng(0);
    let steps = entry["steps"].as_array().unwrap();
    assert_eq!(s.timesteps().len(), steps.len());
    let mut worst = 0f64;
    for (i, rec) in steps.iter().enumerate() {
        let t = s.timesteps()[i];
        assert_eq!(t, rec["t"].as_f64().unwrap());
        let scaled = s.scale_model_input(&x, t).unwrap();
        let eps = ((scaled * 0.1).unwrap() + 0.05 * (t / 100.0).sin()).unwrap();
        let out = s.step(&eps, t, &x, &mut rng).unwrap();
        let flat = |t: &Tensor| -> Vec<f64> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect()
        };
        worst = worst.max(max_rel_err(
            &flat(&out.prev_sample),
            &floats(&rec["prev_sample"]),
            1e-3,
        ));
        if let Some(x0) = rec.get("pred_original_sample") {
            worst = worst.max(max_rel_err(
                &flat(&out.pred_original_sample),
                &floats(x0),
                1e-3,
            ));
        }
        x = out.prev_sample;
    }
    worst
}

#[test]
fn sampling_loops_match_diffusers_to_1e5() {
    let g = golden();
    let loops = g["loops"].as_array().unwrap();
    assert_eq!(loops.len(), 6);
    for e in loops {
        let (kind, n, cfg) = sampler_of(e);
        if kind == SamplerKind::Ddim {
            assert_eq!(e["config"]["set_alpha_to_one"], false);
        }
        let err = replay(e, kind.build(cfg, n).unwrap());
        eprintln!(
            "{kind} {:?}: max relative error {err:.1e}",
            cfg.timestep_spacing
        );
        assert!(
            err < 1e-5,
            "{kind} {:?}: loop differs from diffusers by {err:e} relative",
            cfg.timestep_spacing
        );
    }
}

#[test]
fn ddim_with_eta_zero_is_deterministic_and_eta_one_is_not() {
    let cfg = SchedulerConfig::default();
    let x = Tensor::ones((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let eps = (&x * 0.3).unwrap();
    let run = |eta: f64, seed: u64| {
        let mut s = DDIMScheduler::new(cfg).unwrap();
        s.eta = eta;
        s.set_timesteps(10).unwrap();
        let t = s.timesteps()[3];
        let mut rng = inkdrop::support::seeded_rng(seed);
        s.step(&eps, t, &x, &mut rng)
            .unwrap()
            .prev_sample
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(run(0.0, 1), run(0.0, 2));
    assert_ne!(run(1.0, 1), run(1.0, 2));
}

#[test]
fn every_sampler_turns_a_perfect_noise_prediction_into_the_clean_sample() {
    // If the model predicted the true noise exactly, x0_hat is exact at every step and every
    // deterministic sampler lands on x0.
    let dev = Device::Cpu;
    let x0 = Tensor::from_vec(vec![0.5f32, -1.0, 0.25, 2.0], (1, 1, 2, 2), &dev).unwrap();
    let noise = Tensor::from_vec(vec![1.0f32, 0.3, -0.7, -1.2], (1, 1, 2, 2), &dev).unwrap();
    for kind in [
        SamplerKind::Ddim,
        SamplerKind::Euler,
        SamplerKind::DpmSolverPP2M,
    ] {
        let mut s = kind.build(SchedulerConfig::default(), 20).unwrap();
        let t0 = s.timesteps()[0];
        let mut x = s.add_noise(&x0, &noise, t0).unwrap();
        let mut rng = inkdrop::support::seeded_rng(0);
        for t in s.timesteps().to_vec() {
            // The noise that takes x0 to the current x, in the UNet's (VP) parameterisation.
            let inp = s.scale_model_input(&x, t).unwrap();
            let ab = s.alpha_bar(t);
            let eps = ((inp - (&x0 * ab.sqrt()).unwrap()).unwrap() / (1.0 - ab).sqrt()).unwrap();
            x = s.step(&eps, t, &x, &mut rng).unwrap().prev_sample;
        }
        // DDIM ends at alpha_bar_0 (set_alpha_to_one = false): x0 plus a sliver of noise.
        let err = (x - &x0)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(err < 0.06, "{kind}: ends {err} away from x0");
    }
}

#[test]
fn with_zero_terminal_snr_and_v_prediction_every_sampler_stays_finite_and_lands_on_x0() {
    // Lin et al. 2024's setting: alpha_bar is 0 at t = 999, so sigma there is infinite and
    // x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) divides by zero; a v model and (for the sigma
    // samplers) alpha_bar_999 = 2^-24, as diffusers does, keep every step finite.
    let dev = Device::Cpu;
    let x0 = Tensor::from_vec(vec![0.5f32, -1.0, 0.25, 2.0], (1, 1, 2, 2), &dev).unwrap();
    let noise = Tensor::from_vec(vec![1.0f32, 0.3, -0.7, -1.2], (1, 1, 2, 2), &dev).unwrap();
    let config = |spacing| SchedulerConfig {
        schedule: ScheduleConfig {
            rescale_betas_zero_snr: true,
            ..ScheduleConfig::default()
        },
        timestep_spacing: spacing,
        prediction_type: inkdrop::schedulers::PredictionType::VPrediction,
        ..SchedulerConfig::default()
    };
    for kind in SamplerKind::ALL {
        for spacing in [
            TimestepSpacing::Leading,
            TimestepSpacing::Trailing,
            TimestepSpacing::Linspace,
        ] {
            let mut s = kind.build(config(spacing), 20).unwrap();
            assert!(s.init_noise_sigma().is_finite(), "{kind} {spacing:?}");
            let t0 = s.timesteps()[0];
            let mut x = s.add_noise(&x0, &noise, t0).unwrap();
            let mut rng = inkdrop::support::seeded_rng(0);
            for t in s.timesteps().to_vec() {
                // The true v for the current x: v = sqrt(ab) eps - sqrt(1 - ab) x0.
                let inp = s.scale_model_input(&x, t).unwrap();
                let ab = s.alpha_bar(t);
                let eps = if ab > 0.0 {
                    ((&inp - (&x0 * ab.sqrt()).unwrap()).unwrap() / (1.0 - ab).sqrt()).unwrap()
                } else {
                    inp.clone()
                };
                let v = ((eps * ab.sqrt()).unwrap() - (&x0 * (1.0 - ab).sqrt()).unwrap()).unwrap();
                let out = s.step(&v, t, &x, &mut rng).unwrap();
                let worst = out
                    .prev_sample
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(worst.is_finite(), "{kind} {spacing:?} at t = {t}: {worst}");
                x = out.prev_sample;
            }
            let err = (x - &x0)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // (DDIM steps to t - T/n, which `linspace` timesteps do not land on, as in
            // diffusers: that spacing drifts a little even with a perfect model.)
            let bound = if spacing == TimestepSpacing::Linspace {
                0.15
            } else {
                0.06
            };
            assert!(err < bound, "{kind} {spacing:?}: ends {err} away from x0");
        }
    }
}

#[test]
fn bad_settings_are_refused_with_a_fix() {
    for steps in [0, 1001] {
        let err = SamplerKind::Ddim
            .build(SchedulerConfig::default(), steps)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("between 1 and 1000"), "{err}");
    }
    let err = "plms".parse::<SamplerKind>().unwrap_err().to_string();
    assert!(err.contains("ddim") && err.contains("dpm++2m"), "{err}");
    let mut s = SamplerKind::Euler
        .build(SchedulerConfig::default(), 10)
        .unwrap();
    let x = Tensor::zeros((1, 1, 1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut rng = inkdrop::support::seeded_rng(0);
    let err = s.step(&x, 500.5, &x, &mut rng).err().unwrap().to_string();
    assert!(err.contains("500.5"), "{err}");
}
