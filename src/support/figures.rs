//! Figure builders for the forward process, shared by `--example forward_noise`, chapter 1 and
//! the book, so that each picture is drawn by one piece of code.

use ndarray::Array3;

use super::grid::Tile;
use super::image_io::from_chw;
use super::plot::{Panel, Series};
use super::stats::{density, normal_pdf};
use crate::noising::add_noise;
use crate::schedule::{NoiseSchedule, ScheduleConfig};
use crate::Result;

/// `x0` followed by x_t for each t (all from the same `noise`), captioned with t, alpha_bar_t
/// and the SNR in dB.
pub fn noising_tiles(
    schedule: &NoiseSchedule,
    x0: &Array3<f32>,
    noise: &Array3<f32>,
    timesteps: &[usize],
) -> Result<Vec<Tile>> {
    let mut tiles = vec![Tile {
        image: from_chw(x0)?,
        caption: vec![
            "x_0 (clean)".into(),
            "alpha_bar = 1".into(),
            "SNR = +inf dB".into(),
        ],
    }];
    for &t in timesteps {
        let x_t = add_noise(schedule, x0, noise, t)?; // (3, H, W)
        tiles.push(Tile {
            image: from_chw(&x_t)?,
            caption: vec![
                format!("t = {t}"),
                format!("alpha_bar = {:.4}", schedule.alpha_bar(t)),
                format!("SNR = {}", fmt_db(schedule.snr_db(t))),
            ],
        });
    }
    Ok(tiles)
}

/// Measured and predicted pixel statistics of x_t as table cells:
/// mean, its theory, std, its theory, corr(x_t, x_0), its theory.
pub fn stats_cells(
    schedule: &NoiseSchedule,
    x0: &Array3<f32>,
    noise: &Array3<f32>,
    t: usize,
) -> Result<Vec<String>> {
    let (m0, s0) = super::stats::mean_std(x0);
    let x_t = add_noise(schedule, x0, noise, t)?; // (3, H, W)
    let got = crate::noising::measured_stats(&x_t, x0);
    let want = crate::noising::expected_stats(schedule, t, m0, s0)?;
    Ok(vec![
        format!("{:+.3}", got.mean),
        format!("{:+.3}", want.mean),
        format!("{:.3}", got.std),
        format!("{:.3}", want.std),
        format!("{:.3}", got.corr),
        format!("{:.3}", want.corr),
    ])
}

/// An SNR in decibels with its sign, `-inf dB` at zero SNR.
pub fn fmt_db(db: f64) -> String {
    if db.is_finite() {
        format!("{db:+.1} dB")
    } else if db < 0.0 {
        "-inf dB".into()
    } else {
        "+inf dB".into()
    }
}

/// Two panels: alpha_bar_t against t, and log SNR(t) against t, one curve per schedule.
pub fn schedule_panels(configs: &[ScheduleConfig]) -> Result<Vec<Panel>> {
    let mut alpha_bar = Panel {
        title: "alpha_bar_t: the share of x_0's variance left".into(),
        x_label: "timestep t".into(),
        y_label: "alpha_bar_t".into(),
        y_range: Some((0.0, 1.02)),
        ..Panel::default()
    };
    let mut log_snr = Panel {
        title: "log SNR(t) = ln(alpha_bar / (1 - alpha_bar))".into(),
        x_label: "timestep t".into(),
        y_label: "log SNR".into(),
        ..Panel::default()
    };
    for (i, &config) in configs.iter().enumerate() {
        let s = NoiseSchedule::new(config)?;
        let label = config.label();
        let ts = 0..s.num_train_timesteps();
        alpha_bar.series.push(Series::new(
            &label,
            ts.clone().map(|t| (t as f64, s.alpha_bar(t))).collect(),
            i,
        ));
        log_snr.series.push(Series::new(
            &label,
            ts.map(|t| (t as f64, s.log_snr(t))).collect(),
            i,
        ));
    }
    Ok(vec![alpha_bar, log_snr])
}

/// The density of x_t's pixel values at each t, with N(0, 1) dashed: the forward process drags
/// any image's histogram onto the standard normal.
pub fn histogram_panel(
    schedule: &NoiseSchedule,
    x0: &Array3<f32>,
    noise: &Array3<f32>,
    timesteps: &[usize],
) -> Result<Panel> {
    let (lo, hi, bins) = (-4.0, 4.0, 80);
    let mut panel = Panel {
        title: "Pixel values of x_t drift to N(0, 1)".into(),
        x_label: "pixel value".into(),
        y_label: "density".into(),
        x_range: Some((lo, hi)),
        ..Panel::default()
    };
    panel
        .series
        .push(Series::new("x_0", density(x0.iter(), lo, hi, bins), 0));
    for (i, &t) in timesteps.iter().enumerate() {
        let x_t = add_noise(schedule, x0, noise, t)?;
        panel.series.push(Series::new(
            format!("t = {t}"),
            density(x_t.iter(), lo, hi, bins),
            i + 1,
        ));
    }
    let normal = (0..=200)
        .map(|i| lo + (hi - lo) * i as f64 / 200.0)
        .map(|x| (x, normal_pdf(x)));
    let mut n01 = Series::new("N(0, 1)", normal.collect(), 0).dashed();
    n01.color = plotters::style::RGBColor(0, 0, 0);
    panel.series.push(n01);
    Ok(panel)
}
