//! 2-D point clouds as pictures: dots, arrows (a vector field) and paths (trajectories), in small
//! square panels side by side, for the toy diffusion of chapter 2.

use std::path::Path;

use image::RgbImage;
use plotters::prelude::*;

use super::fonts;
use super::image_io::save_png;
use super::plot::PALETTE;
use crate::{Error, Result};

/// One square panel over [-extent, extent]^2.
#[derive(Clone, Debug, Default)]
pub struct CloudPanel {
    pub title: String,
    /// Dots, drawn small and half-transparent.
    pub points: Vec<[f32; 2]>,
    /// Arrows from `start` by `delta`.
    pub arrows: Vec<([f32; 2], [f32; 2])>,
    /// Polylines (one colour each, from the palette), with a dot at their end.
    pub paths: Vec<Vec<[f32; 2]>>,
}

/// Draws `panels` side by side, each `size` pixels square, over [-extent, extent]^2.
pub fn save_clouds(path: &Path, panels: &[CloudPanel], extent: f64, size: u32) -> Result<()> {
    fonts::register();
    let name = path.display().to_string();
    let err = |e: String| Error::Plot {
        name: name.clone(),
        reason: e,
    };
    let (w, h) = (size * panels.len().max(1) as u32, size);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let areas = root.split_evenly((1, panels.len().max(1)));
        let draw = || -> std::result::Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            for (area, p) in areas.iter().zip(panels) {
                let mut chart = ChartBuilder::on(area)
                    .caption(&p.title, (fonts::FAMILY, 16))
                    .margin(8)
                    .x_label_area_size(22)
                    .y_label_area_size(28)
                    .build_cartesian_2d(-extent..extent, -extent..extent)?;
                chart
                    .configure_mesh()
                    .label_style((fonts::FAMILY, 11))
                    .light_line_style(RGBColor(240, 240, 240))
                    .draw()?;
                let dot = PALETTE[0].mix(0.35).filled();
                chart.draw_series(
                    p.points
                        .iter()
                        .map(|q| Circle::new((f64::from(q[0]), f64::from(q[1])), 1, dot)),
                )?;
                let arrow = RGBColor(213, 94, 0);
                for (s, d) in &p.arrows {
                    let (x0, y0) = (f64::from(s[0]), f64::from(s[1]));
                    let (x1, y1) = (x0 + f64::from(d[0]), y0 + f64::from(d[1]));
                    chart.draw_series([PathElement::new(
                        vec![(x0, y0), (x1, y1)],
                        arrow.stroke_width(1),
                    )])?;
                    chart.draw_series([Circle::new((x1, y1), 1, arrow.filled())])?;
                }
                for (i, path) in p.paths.iter().enumerate() {
                    let c = PALETTE[(i + 1) % PALETTE.len()];
                    let pts: Vec<(f64, f64)> = path
                        .iter()
                        .map(|q| (f64::from(q[0]), f64::from(q[1])))
                        .collect();
                    chart.draw_series([PathElement::new(pts.clone(), c.stroke_width(2))])?;
                    if let Some(&end) = pts.last() {
                        chart.draw_series([Circle::new(end, 4, c.filled())])?;
                    }
                }
            }
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| err(e.to_string()))?;
    }
    let img = RgbImage::from_raw(w, h, buf).ok_or_else(|| err("buffer size mismatch".into()))?;
    save_png(&img, path)
}
