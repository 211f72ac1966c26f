//! Matrices as pictures: one coloured cell per entry with its value written in, optional image
//! thumbnails as row labels, numbered columns with a legend underneath.

use image::{imageops, Rgb, RgbImage};

use super::grid::draw_texts;
use crate::Result;

/// What to draw.
pub struct Heatmap<'a> {
    pub title: &'a str,
    /// Row-major values, `rows x cols`.
    pub values: &'a [Vec<f32>],
    /// Value range mapped to the colour scale (low = white, high = dark blue).
    pub range: (f32, f32),
    /// Optional thumbnails shown left of each row.
    pub row_images: Option<&'a [RgbImage]>,
    /// Text left of each row (when there are no thumbnails) or under them.
    pub row_labels: &'a [String],
    /// Column captions, listed under the matrix as "1: ...".
    pub col_labels: &'a [String],
    /// Print the value in each cell with this many decimals (`None`: no numbers).
    pub decimals: Option<usize>,
}

const CELL: u32 = 56;
const PAD: u32 = 10;
const LEGEND_LINE: u32 = 18;

/// The colour for a value in [0, 1]: white to a mid blue (dark enough to read, light enough for
/// black numbers on top).
pub fn blues(t: f32) -> Rgb<u8> {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f32, b: f32| (a + (b - a) * t).round() as u8;
    Rgb([lerp(247.0, 66.0), lerp(251.0, 146.0), lerp(255.0, 198.0)])
}

/// Renders the heat map.
pub fn render_heatmap(h: &Heatmap) -> Result<RgbImage> {
    let rows = h.values.len() as u32;
    let cols = h.values.first().map_or(0, Vec::len) as u32;
    let label_w = if h.row_images.is_some() {
        CELL + PAD
    } else {
        9 * h.row_labels.iter().map(|s| s.len()).max().unwrap_or(0) as u32 + PAD
    };
    let top = 34 + 20;
    let width = PAD + label_w + cols * CELL + PAD;
    let height = top + rows * CELL + PAD + LEGEND_LINE * h.col_labels.len() as u32 + PAD;
    let title_w = 10 * h.title.chars().count() as u32 + 2 * PAD; // about 10 px per character at 18 pt
    let mut img = RgbImage::from_pixel(width.max(title_w), height, Rgb([255, 255, 255]));
    let x0 = PAD + label_w;
    let mut texts: Vec<(String, (i32, i32), f64)> =
        vec![(h.title.to_string(), ((img.width() / 2) as i32, 8), 18.0)];
    let (lo, hi) = h.range;
    for (r, row) in h.values.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let t = (v - lo) / (hi - lo).max(1e-12);
            let color = blues(t);
            let (cx, cy) = (x0 + c as u32 * CELL, top + r as u32 * CELL);
            for y in cy + 1..cy + CELL - 1 {
                for x in cx + 1..cx + CELL - 1 {
                    img.put_pixel(x, y, color);
                }
            }
            if let Some(d) = h.decimals {
                texts.push((
                    format!("{v:.d$}"),
                    ((cx + CELL / 2) as i32, (cy + CELL / 2 - 8) as i32),
                    13.0,
                ));
            }
        }
        let cy = top + r as u32 * CELL;
        match h.row_images {
            Some(images) => {
                if let Some(im) = images.get(r) {
                    let thumb =
                        imageops::resize(im, CELL - 4, CELL - 4, imageops::FilterType::Nearest);
                    imageops::replace(&mut img, &thumb, i64::from(PAD), i64::from(cy + 2));
                }
            }
            None => {
                if let Some(l) = h.row_labels.get(r) {
                    texts.push((
                        l.clone(),
                        ((PAD + label_w / 2) as i32, (cy + CELL / 2 - 8) as i32),
                        13.0,
                    ));
                }
            }
        }
    }
    for c in 0..cols {
        texts.push((
            (c + 1).to_string(),
            ((x0 + c * CELL + CELL / 2) as i32, (top - 20) as i32),
            14.0,
        ));
    }
    for (i, l) in h.col_labels.iter().enumerate() {
        let y = top + rows * CELL + PAD + i as u32 * LEGEND_LINE;
        texts.push((
            format!("{}: {l}", i + 1),
            ((img.width() / 2) as i32, y as i32),
            13.0,
        ));
    }
    draw_texts(&mut img, &texts, h.title)?;
    Ok(img)
}
