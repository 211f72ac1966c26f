//! Labelled image grids: tiles in rows, a caption of one or more lines under each tile, an
//! optional title on top. Text is drawn with plotters and the bundled font.

use image::{imageops, Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::fonts;
use crate::{Error, Result};

/// One picture in a grid with the lines printed under it.
#[derive(Clone, Debug)]
pub struct Tile {
    pub image: RgbImage,
    pub caption: Vec<String>,
}

const PAD: u32 = 8;
const LINE: u32 = 18;
const CAPTION_FONT: f64 = 14.0;
const TITLE: u32 = 32;
const TITLE_FONT: f64 = 20.0;
const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const INK: RGBColor = RGBColor(30, 30, 30);

/// Lays `tiles` out in `cols` columns (all tiles must share one size) with captions under each
/// and `title` above, on a white background.
pub fn labelled_grid(tiles: &[Tile], cols: usize, title: Option<&str>) -> Result<RgbImage> {
    let first = tiles.first().ok_or_else(|| Error::Plot {
        name: title.unwrap_or("grid").to_string(),
        reason: "no tiles to lay out".into(),
    })?;
    let (tw, th) = first.image.dimensions();
    let cols = cols.clamp(1, tiles.len());
    let rows = tiles.len().div_ceil(cols);
    let lines = tiles.iter().map(|t| t.caption.len()).max().unwrap_or(0) as u32;
    let cell_h = th + lines * LINE + PAD;
    let top = if title.is_some() { TITLE } else { PAD };
    let width = cols as u32 * (tw + PAD) + PAD;
    let height = top + rows as u32 * cell_h + PAD;

    let mut canvas = RgbImage::from_pixel(width, height, BACKGROUND);
    for (i, tile) in tiles.iter().enumerate() {
        let (x, y) = cell_origin(i, cols, tw, cell_h, top);
        let img = if tile.image.dimensions() == (tw, th) {
            tile.image.clone()
        } else {
            imageops::resize(&tile.image, tw, th, imageops::FilterType::Nearest)
        };
        imageops::replace(&mut canvas, &img, i64::from(x), i64::from(y));
    }

    let mut texts: Vec<(String, (i32, i32), f64)> = Vec::new();
    if let Some(t) = title {
        texts.push((t.to_string(), ((width / 2) as i32, 6), TITLE_FONT));
    }
    for (i, tile) in tiles.iter().enumerate() {
        let (x, y) = cell_origin(i, cols, tw, cell_h, top);
        for (l, line) in tile.caption.iter().enumerate() {
            let pos = ((x + tw / 2) as i32, (y + th + 3 + l as u32 * LINE) as i32);
            texts.push((line.clone(), pos, CAPTION_FONT));
        }
    }
    draw_texts(&mut canvas, &texts, title.unwrap_or("grid"))?;
    Ok(canvas)
}

/// `text` spread word by word over the captions of `tiles` neighbouring tiles, at most
/// `width` characters under each, so that a sentence longer than one tile reads left to right
/// under its row instead of being cut (a word longer than `width` gets a tile of its own;
/// what does not fit under the last tile ends in "...").
pub fn spread_words(text: &str, tiles: usize, width: usize) -> Vec<String> {
    let mut out = vec![String::new(); tiles.max(1)];
    let mut i = 0;
    for word in text.split_whitespace() {
        let full = !out[i].is_empty() && out[i].chars().count() + 1 + word.chars().count() > width;
        if full && i + 1 == out.len() {
            out[i].push_str(" ...");
            break;
        }
        if full {
            i += 1;
        }
        if !out[i].is_empty() {
            out[i].push(' ');
        }
        out[i].push_str(word);
    }
    out
}

/// Images side by side with no labels or padding (for terminal previews).
pub fn plain_strip(images: &[RgbImage]) -> RgbImage {
    let w: u32 = images.iter().map(|i| i.width()).sum();
    let h = images.iter().map(|i| i.height()).max().unwrap_or(0);
    let mut strip = RgbImage::from_pixel(w, h, BACKGROUND);
    let mut x = 0;
    for img in images {
        imageops::replace(&mut strip, img, i64::from(x), 0);
        x += img.width();
    }
    strip
}

fn cell_origin(i: usize, cols: usize, tw: u32, cell_h: u32, top: u32) -> (u32, u32) {
    let (r, c) = ((i / cols) as u32, (i % cols) as u32);
    (PAD + c * (tw + PAD), top + r * cell_h)
}

/// Draws centred text lines onto an RGB image in place.
pub(crate) fn draw_texts(
    canvas: &mut RgbImage,
    texts: &[(String, (i32, i32), f64)],
    name: &str,
) -> Result<()> {
    fonts::register();
    let (w, h) = canvas.dimensions();
    let plot_err = |e: String| Error::Plot {
        name: name.to_string(),
        reason: e,
    };
    {
        let root = BitMapBackend::with_buffer(canvas.as_mut(), (w, h)).into_drawing_area();
        for (text, pos, size) in texts {
            let style = TextStyle::from((fonts::FAMILY, *size).into_font())
                .color(&INK)
                .pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(text.as_str(), *pos, style))
                .map_err(|e| plot_err(e.to_string()))?;
        }
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    Ok(())
}

/// Same-size images in `cols` columns, each enlarged `scale` times (nearest), 2-pixel white
/// gaps, no labels: for quick looks such as training snapshots.
pub fn image_grid(images: &[RgbImage], cols: usize, scale: u32) -> RgbImage {
    const GAP: u32 = 2;
    let (w, h) = images.first().map_or((1, 1), |i| i.dimensions());
    let (tw, th) = (w * scale, h * scale);
    let cols = cols.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(cols) as u32;
    let mut canvas = RgbImage::from_pixel(
        cols as u32 * (tw + GAP) + GAP,
        rows * (th + GAP) + GAP,
        BACKGROUND,
    );
    for (i, img) in images.iter().enumerate() {
        let big = imageops::resize(img, tw, th, imageops::FilterType::Nearest);
        let (c, r) = ((i % cols) as u32, (i / cols) as u32);
        imageops::replace(
            &mut canvas,
            &big,
            i64::from(GAP + c * (tw + GAP)),
            i64::from(GAP + r * (th + GAP)),
        );
    }
    canvas
}
