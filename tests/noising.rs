//! The forward process: endpoints, the Markov chain against the closed form (statistically), and
//! the candle path against the ndarray path.

use candle_core::{Device, Tensor};
use inkdrop::noising::{
    add_noise, add_noise_tensor, expected_stats, markov_chain, markov_step, measured_stats, randn,
};
use inkdrop::support::seeded_rng;
use inkdrop::{BetaSchedule, NoiseSchedule, ScheduleConfig};
use ndarray::{Array1, Array3};

fn image() -> Array3<f32> {
    // A smooth test image in [-1, 1], (3, 16, 16).
    Array3::from_shape_fn((3, 16, 16), |(c, y, x)| {
        (x as f32 * 0.4 + y as f32 * 0.3 + c as f32).sin() * 0.9
    })
}

#[test]
fn add_noise_at_t0_is_almost_the_image() {
    let s = NoiseSchedule::default();
    let x0 = image();
    let eps = randn(x0.raw_dim(), &mut seeded_rng(1));
    let x_t = add_noise(&s, &x0, &eps, 0).unwrap();
    // sqrt(alpha_bar_0) = 0.99957, sqrt(1 - alpha_bar_0) = 0.0292: at most a few percent of noise.
    let max_diff = (&x_t - &x0).iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(max_diff < 0.15, "x_0 and x_t at t=0 differ by {max_diff}");
    let expected = &x0 * s.sqrt_alpha_bar(0) as f32 + &eps * s.sqrt_one_minus_alpha_bar(0) as f32;
    assert_eq!(x_t, expected);
}

#[test]
fn add_noise_at_last_t_is_almost_pure_noise() {
    for c in [
        ScheduleConfig::default(),
        ScheduleConfig {
            rescale_betas_zero_snr: true,
            ..ScheduleConfig::default()
        },
    ] {
        let s = NoiseSchedule::new(c).unwrap();
        let x0 = image();
        let eps = randn(x0.raw_dim(), &mut seeded_rng(2));
        let x_t = add_noise(&s, &x0, &eps, 999).unwrap();
        let corr_noise = inkdrop::support::stats::correlation(&x_t, &eps);
        assert!(
            corr_noise > 0.995,
            "{}: x_999 should be mostly eps, corr {corr_noise}",
            c.label()
        );
        if c.rescale_betas_zero_snr {
            assert_eq!(x_t, eps, "zero terminal SNR: x_999 is exactly the noise");
        }
    }
}

#[test]
fn markov_step_preserves_unit_variance() {
    let s = NoiseSchedule::for_schedule(BetaSchedule::Linear);
    let mut rng = seeded_rng(3);
    let x = randn(200_000, &mut rng);
    let y = markov_step(&s, &x, &randn(200_000, &mut rng), 999).unwrap(); // beta = 0.02
    let (_, sd) = inkdrop::support::stats::mean_std(&y);
    assert!((sd - 1.0).abs() < 0.01, "std after one step {sd}");
}

/// t chained Markov steps and the closed form give the same distribution: mean
/// sqrt(alpha_bar_t) x_0 and variance 1 - alpha_bar_t, within 5 standard errors.
#[test]
fn chain_matches_closed_form_statistically() {
    for schedule in BetaSchedule::ALL {
        let s = NoiseSchedule::for_schedule(schedule);
        for (t, x0v) in [(0usize, 0.8f32), (50, -0.6), (300, 1.0), (999, 0.5)] {
            let n = 4000;
            let x0 = Array1::from_elem(n, x0v); // n independent chains
            let x_t = markov_chain(&s, &x0, t, &mut seeded_rng(t as u64 + 10)).unwrap();
            let (m, sd) = inkdrop::support::stats::mean_std(&x_t);
            let ab = s.alpha_bar(t);
            let (m_th, v_th) = (ab.sqrt() * f64::from(x0v), 1.0 - ab);
            let z_m = (m - m_th) / (v_th / n as f64).sqrt();
            let z_v = (sd * sd - v_th) / (v_th * (2.0 / (n as f64 - 1.0)).sqrt());
            assert!(
                z_m.abs() < 5.0 && z_v.abs() < 5.0,
                "{schedule} t={t}: mean {m} vs {m_th} (z {z_m:.1}), var {} vs {v_th} (z {z_v:.1})",
                sd * sd
            );
        }
    }
}

#[test]
fn measured_stats_follow_theory_on_a_large_image() {
    let s = NoiseSchedule::default();
    let x0 = Array3::from_shape_fn((3, 128, 128), |(c, y, x)| {
        ((x + 2 * y + c) % 7) as f32 / 3.5 - 0.9
    });
    let eps = randn(x0.raw_dim(), &mut seeded_rng(4));
    let (m0, s0) = inkdrop::support::stats::mean_std(&x0);
    for t in [0, 200, 600, 999] {
        let got = measured_stats(&add_noise(&s, &x0, &eps, t).unwrap(), &x0);
        let want = expected_stats(&s, t, m0, s0).unwrap();
        assert!(
            (got.mean - want.mean).abs() < 0.02,
            "t={t} mean {got:?} vs {want:?}"
        );
        assert!(
            (got.std - want.std).abs() < 0.02,
            "t={t} std {got:?} vs {want:?}"
        );
        assert!(
            (got.corr - want.corr).abs() < 0.02,
            "t={t} corr {got:?} vs {want:?}"
        );
    }
}

#[test]
fn candle_add_noise_matches_ndarray_per_sample() {
    let s = NoiseSchedule::default();
    let mut rng = seeded_rng(5);
    let x0 = randn((2, 3, 4, 4), &mut rng);
    let eps = randn((2, 3, 4, 4), &mut rng);
    let ts = [7usize, 850];
    let dev = Device::Cpu;
    let to_t = |a: &ndarray::Array4<f32>| {
        Tensor::from_vec(a.iter().copied().collect::<Vec<_>>(), (2, 3, 4, 4), &dev).unwrap()
    };
    let got = add_noise_tensor(&s, &to_t(&x0), &to_t(&eps), &ts).unwrap();
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    for (b, &t) in ts.iter().enumerate() {
        let x0b = x0.index_axis(ndarray::Axis(0), b).to_owned();
        let epsb = eps.index_axis(ndarray::Axis(0), b).to_owned();
        let want = add_noise(&s, &x0b, &epsb, t).unwrap();
        let got_b = &got[b * 48..(b + 1) * 48];
        for (g, w) in got_b.iter().zip(want.iter()) {
            assert!((g - w).abs() < 1e-6, "sample {b}, t={t}: {g} vs {w}");
        }
    }
}

#[test]
fn bad_timesteps_and_shapes_are_errors() {
    let s = NoiseSchedule::default();
    let x0 = image();
    let eps = randn(x0.raw_dim(), &mut seeded_rng(6));
    let err = add_noise(&s, &x0, &eps, 1000).unwrap_err().to_string();
    assert!(err.contains("timestep 1000 is outside [0, 1000)"), "{err}");
    let small = randn((3, 8, 8), &mut seeded_rng(6));
    let err = add_noise(&s, &x0, &small, 5).unwrap_err().to_string();
    assert!(err.contains("shape mismatch"), "{err}");
    let t = Tensor::zeros((2, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = add_noise_tensor(&s, &t, &t, &[1]).unwrap_err().to_string();
    assert!(err.contains("timesteps vs batch"), "{err}");
}

#[test]
fn same_seed_same_noise() {
    let a = randn((3, 8, 8), &mut seeded_rng(42));
    let b = randn((3, 8, 8), &mut seeded_rng(42));
    let c = randn((3, 8, 8), &mut seeded_rng(43));
    assert_eq!(a, b);
    assert_ne!(a, c);
}
