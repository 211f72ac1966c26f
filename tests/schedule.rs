//! The noise schedule against diffusers' own numbers, and the invariants every schedule obeys.

use inkdrop::{BetaSchedule, NoiseSchedule, ScheduleConfig};
use serde_json::Value;

fn golden() -> Value {
    let text = include_str!("fixtures/diffusers_schedulers.json");
    serde_json::from_str(text).expect("golden file parses")
}

fn config_of(entry: &Value) -> ScheduleConfig {
    let c = &entry["config"];
    let beta_schedule: BetaSchedule = c["beta_schedule"].as_str().unwrap().parse().unwrap();
    let (usual_start, usual_end) = (0.0001, 0.02); // diffusers' DDPMScheduler defaults
    ScheduleConfig {
        beta_schedule,
        num_train_timesteps: c["num_train_timesteps"].as_u64().unwrap() as usize,
        beta_start: c["beta_start"].as_f64().unwrap_or(usual_start),
        beta_end: c["beta_end"].as_f64().unwrap_or(usual_end),
        rescale_betas_zero_snr: c["rescale_betas_zero_snr"].as_bool().unwrap_or(false),
    }
}

fn max_rel_err(ours: &[f64], theirs: &[Value]) -> (f64, usize) {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .enumerate()
        .map(|(i, (a, b))| {
            let b = b.as_f64().unwrap();
            let err = if b == 0.0 {
                a.abs()
            } else {
                ((a - b) / b).abs()
            };
            (err, i)
        })
        .fold((0.0, 0), |m, e| if e.0 > m.0 { e } else { m })
}

#[test]
fn every_schedule_matches_diffusers_to_1e5_relative() {
    let g = golden();
    let schedules = g["schedules"].as_array().unwrap();
    assert_eq!(
        schedules.len(),
        4,
        "linear, scaled_linear, cosine, zero-SNR"
    );
    for entry in schedules {
        let name = entry["name"].as_str().unwrap();
        let s = NoiseSchedule::new(config_of(entry)).unwrap();
        let golden_betas = entry["betas"].as_array().unwrap();
        let (e_ab, i_ab) = max_rel_err(
            &s.alphas_cumprod,
            entry["alphas_cumprod"].as_array().unwrap(),
        );
        let (e_beta, i_beta) = max_rel_err(&s.betas, golden_betas);
        println!("{name}: alphas_cumprod max rel err {e_ab:.2e} at t={i_ab}, betas {e_beta:.2e} at t={i_beta}");
        assert!(
            e_ab <= 1e-5,
            "{name}: alphas_cumprod differ from diffusers by {e_ab:e} at t={i_ab}"
        );
        if s.config.rescale_betas_zero_snr {
            // Rescaling recovers beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, a difference of two
            // numbers near 1: a 1-ulp difference in one float32 alpha_bar_t (PyTorch's vectorised
            // kernels and ours round 3 of 1000 values differently) becomes ~1e-4 relative in two
            // betas of size ~0.004. So: alpha_t = 1 - beta_t to 1e-5, and nearly all betas exact.
            let alphas: Vec<Value> = golden_betas
                .iter()
                .map(|b| (1.0 - b.as_f64().unwrap()).into())
                .collect();
            let (e_alpha, i_alpha) = max_rel_err(&s.alphas, &alphas);
            assert!(
                e_alpha <= 1e-5,
                "{name}: alphas differ by {e_alpha:e} at t={i_alpha}"
            );
            let exact = s
                .betas
                .iter()
                .zip(golden_betas)
                .filter(|(a, b)| **a == b.as_f64().unwrap())
                .count();
            println!("{name}: {exact} of 1000 betas bit-exact");
            assert!(
                exact >= 994,
                "{name}: only {exact} of 1000 betas equal diffusers' exactly"
            );
        } else {
            assert!(
                e_beta <= 1e-5,
                "{name}: betas differ from diffusers by {e_beta:e} at t={i_beta}"
            );
        }
    }
}

fn all_configs() -> Vec<ScheduleConfig> {
    let mut v: Vec<ScheduleConfig> = BetaSchedule::ALL
        .into_iter()
        .map(ScheduleConfig::for_schedule)
        .collect();
    v.push(ScheduleConfig {
        rescale_betas_zero_snr: true,
        ..ScheduleConfig::default()
    });
    v.push(ScheduleConfig {
        num_train_timesteps: 50,
        ..ScheduleConfig::default()
    });
    v
}

#[test]
fn alpha_bar_strictly_decreases_inside_0_1() {
    for c in all_configs() {
        let s = NoiseSchedule::new(c).unwrap();
        let ab = &s.alphas_cumprod;
        let last = ab.len() - 1;
        for t in 1..ab.len() {
            assert!(
                ab[t] < ab[t - 1],
                "{}: alpha_bar not decreasing at t={t}",
                c.label()
            );
        }
        assert!(
            ab[0] < 1.0 && ab[0] > 0.99,
            "{}: alpha_bar_0 = {}",
            c.label(),
            ab[0]
        );
        if c.rescale_betas_zero_snr {
            assert_eq!(ab[last], 0.0, "zero terminal SNR must end at exactly 0");
            assert_eq!(s.betas[last], 1.0);
            assert!(ab[..last].iter().all(|&a| a > 0.0));
        } else {
            assert!(
                ab.iter().all(|&a| a > 0.0 && a < 1.0),
                "{}: alpha_bar leaves (0, 1)",
                c.label()
            );
        }
    }
}

#[test]
fn snr_decreases_and_derived_tables_agree() {
    for c in all_configs() {
        let s = NoiseSchedule::new(c).unwrap();
        let snr = s.snrs();
        for t in 1..snr.len() {
            assert!(
                snr[t] < snr[t - 1],
                "{}: SNR not decreasing at t={t}",
                c.label()
            );
        }
        for t in [0, s.num_train_timesteps() / 2, s.num_train_timesteps() - 2] {
            let ab = s.alpha_bar(t);
            assert!(
                (s.sqrt_alpha_bar(t).powi(2) + s.sqrt_one_minus_alpha_bar(t).powi(2) - 1.0).abs()
                    < 1e-12
            );
            assert!((s.sigma(t) - 1.0 / snr[t].sqrt()).abs() <= 1e-9 * s.sigma(t));
            assert!((s.log_snr(t) - (ab / (1.0 - ab)).ln()).abs() < 1e-12);
            assert!((s.snr_db(t) - 10.0 * snr[t].log10()).abs() < 1e-9);
            assert!((s.alphas[t] - (1.0 - s.betas[t])).abs() < 1e-7);
        }
    }
}

#[test]
fn known_endpoints() {
    // Stable Diffusion: beta runs from 0.00085 to 0.012 (squared float32 square roots, so up to
    // an ulp off).
    let sd = NoiseSchedule::default();
    assert!(
        (sd.betas[0] / 0.00085 - 1.0).abs() < 2e-7,
        "{}",
        sd.betas[0]
    );
    assert!(
        (sd.betas[999] / 0.012 - 1.0).abs() < 2e-7,
        "{}",
        sd.betas[999]
    );
    // alpha_bar_999 = 0.0047 for SD: about 7% of the signal amplitude survives at the last step.
    assert!((sd.alpha_bar(999) - 0.004_660_095).abs() < 1e-8);
    let lin = NoiseSchedule::for_schedule(BetaSchedule::Linear);
    assert_eq!(lin.betas[0], f64::from(1e-4f32));
    assert_eq!(lin.betas[999], f64::from(0.02f32));
    // The cosine schedule caps beta at 0.999: its last beta is the cap.
    let cos = NoiseSchedule::for_schedule(BetaSchedule::SquaredcosCapV2);
    assert_eq!(cos.betas[999], f64::from(0.999f32));
}

#[test]
fn cosine_schedule_is_not_degenerate() {
    // candle-transformers' version divides integers and adds almost no noise; ours must follow
    // alpha_bar(t) = cos^2(((t+1)/T + 0.008) / 1.008 * pi/2) / cos^2(0.008/1.008 * pi/2).
    let s = NoiseSchedule::for_schedule(BetaSchedule::SquaredcosCapV2);
    let f = |x: f64| {
        ((x + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    for t in [0usize, 100, 250, 500, 750, 900] {
        let expected = f((t + 1) as f64 / 1000.0) / f(0.0);
        assert!(
            (s.alpha_bar(t) - expected).abs() < 1e-5 * expected.max(1e-3),
            "t={t}: {} vs {expected}",
            s.alpha_bar(t)
        );
    }
    assert!(
        (s.alpha_bar(499) - 0.5).abs() < 0.02,
        "half the signal variance is gone half way"
    );
    assert!(s.alpha_bar(999) < 1e-6 && s.betas.iter().all(|&b| b > 1e-6));
}

#[test]
fn bad_configs_are_rejected_with_a_fix() {
    let err = NoiseSchedule::new(ScheduleConfig {
        num_train_timesteps: 1,
        ..ScheduleConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("at least 2"), "{err}");
    let err = NoiseSchedule::new(ScheduleConfig {
        beta_start: 0.02,
        beta_end: 0.01,
        ..ScheduleConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("beta_start"), "{err}");
    let err = "cosine".parse::<BetaSchedule>().unwrap_err();
    assert!(err.to_string().contains("squaredcos_cap_v2"), "{err}");
    let err = NoiseSchedule::default().check_timestep(1000).unwrap_err();
    assert!(err.to_string().contains("outside [0, 1000)"), "{err}");
}
