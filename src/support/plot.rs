//! Line charts with plotters: one or more panels side by side, each with titled axes, several
//! labelled series and a legend. Rendered in memory and written as PNG with the bundled font.

use std::path::Path;

use image::RgbImage;
use plotters::prelude::*;

use super::fonts;
use super::image_io::save_png;
use crate::{Error, Result};

/// Colours for series, in order (colour-blind friendly, after Okabe & Ito).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(150, 90, 40),
];

/// One labelled curve.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    /// Drawn dashed: for theory next to measurement.
    pub dashed: bool,
}

impl Series {
    /// A solid series in the `i`-th palette colour.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>, i: usize) -> Self {
        Series {
            label: label.into(),
            points,
            color: PALETTE[i % PALETTE.len()],
            dashed: false,
        }
    }

    /// The same series drawn dashed.
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// One chart: axes, titles and its series.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Axis ranges; `None` fits the data.
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
}

/// Renders `panels` side by side, each `panel_size` pixels, into an RGB image.
pub fn render_panels(panels: &[Panel], panel_size: (u32, u32), name: &str) -> Result<RgbImage> {
    fonts::register();
    let (pw, ph) = panel_size;
    let width = pw * panels.len().max(1) as u32;
    let mut buf = vec![255u8; (width * ph * 3) as usize];
    let err = |e: String| Error::Plot {
        name: name.to_string(),
        reason: e,
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, ph)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            draw_panel(panel, area).map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    RgbImage::from_raw(width, ph, buf).ok_or_else(|| err("buffer size mismatch".into()))
}

/// Renders `panels` and writes them to `path` as PNG.
pub fn save_panels(path: &Path, panels: &[Panel], panel_size: (u32, u32)) -> Result<()> {
    let name = path.display().to_string();
    save_png(&render_panels(panels, panel_size, &name)?, path)
}

fn fit_range(panel: &Panel, axis: fn(&(f64, f64)) -> f64) -> (f64, f64) {
    let (lo, hi) = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(axis))
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi - lo < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        let m = 0.03 * (hi - lo);
        (lo - m, hi + m)
    }
}

/// Tick labels without trailing zeros: `100`, `0.25`, `-5`.
fn fmt_tick(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_panel(panel: &Panel, area: &Area) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (x0, x1) = panel.x_range.unwrap_or_else(|| fit_range(panel, |p| p.0));
    let (y0, y1) = panel.y_range.unwrap_or_else(|| fit_range(panel, |p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (fonts::FAMILY, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .x_label_formatter(&|v| fmt_tick(*v))
        .y_label_formatter(&|v| fmt_tick(*v))
        .label_style((fonts::FAMILY, 13))
        .axis_desc_style((fonts::FAMILY, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for s in &panel.series {
        let style = s.color.stroke_width(2);
        let points = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        let color = s.color;
        let anno = if s.dashed {
            chart.draw_series(DashedLineSeries::new(points, 6, 4, style))?
        } else {
            chart.draw_series(LineSeries::new(points, style))?
        };
        anno.label(&s.label).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
        });
    }
    if panel.series.iter().any(|s| !s.label.is_empty()) {
        chart
            .configure_series_labels()
            .label_font((fonts::FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    Ok(())
}

/// One labelled point of a scatter plot.
#[derive(Clone, Debug)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub label: String,
    pub color: RGBColor,
    /// 0 circle, 1 square, 2 triangle, 3 cross (e.g. the Shapes World shape).
    pub marker: usize,
}

/// A scatter plot of labelled points, written as PNG.
pub fn save_scatter(
    path: &Path,
    title: &str,
    axes: (&str, &str),
    points: &[Point],
    size: (u32, u32),
) -> Result<()> {
    fonts::register();
    let name = path.display().to_string();
    let err = |e: String| Error::Plot {
        name: name.clone(),
        reason: e,
    };
    let (w, h) = size;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let panel = Panel {
            series: vec![Series::new(
                "",
                points.iter().map(|p| (p.x, p.y)).collect(),
                0,
            )],
            ..Panel::default()
        };
        let (x0, x1) = fit_range(&panel, |p| p.0);
        let (y0, y1) = fit_range(&panel, |p| p.1);
        let pad = |lo: f64, hi: f64| (lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo));
        let ((x0, x1), (y0, y1)) = (pad(x0, x1), pad(y0, y1));
        let draw = || -> std::result::Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, (fonts::FAMILY, 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(x0..x1, y0..y1)?;
            chart
                .configure_mesh()
                .x_desc(axes.0)
                .y_desc(axes.1)
                .x_label_formatter(&|v| fmt_tick(*v))
                .y_label_formatter(&|v| fmt_tick(*v))
                .label_style((fonts::FAMILY, 13))
                .axis_desc_style((fonts::FAMILY, 14))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()?;
            let outline = RGBColor(60, 60, 60);
            for p in points {
                let fill = p.color.filled();
                let c = (p.x, p.y);
                match p.marker {
                    0 => chart.draw_series([
                        Circle::new(c, 7, fill),
                        Circle::new(c, 7, outline.stroke_width(1)),
                    ])?,
                    1 => chart.draw_series([
                        EmptyElement::at(c) + Rectangle::new([(-6, -6), (6, 6)], fill),
                        EmptyElement::at(c)
                            + Rectangle::new([(-6, -6), (6, 6)], outline.stroke_width(1)),
                    ])?,
                    2 => chart.draw_series([TriangleMarker::new(c, 9, fill)])?,
                    _ => chart.draw_series([
                        Cross::new(c, 7, p.color.stroke_width(3)),
                        Cross::new(c, 7, p.color.stroke_width(3)),
                    ])?,
                };
                chart.draw_series([EmptyElement::at(c)
                    + Text::new(p.label.clone(), (10, -7), (fonts::FAMILY, 12).into_font())])?;
            }
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| err(e.to_string()))?;
    }
    let img = RgbImage::from_raw(w, h, buf).ok_or_else(|| err("buffer size mismatch".into()))?;
    save_png(&img, path)
}
