//! Reading a picture back: which coloured objects it shows and what shape each one has, using
//! only the Shapes World palette. This is how generated images are checked against their prompt
//! (no trained model involved, so the check cannot share the generator's mistakes).
//!
//! - Colour: every pixel goes to the nearest palette colour (objects' or background's) if it is
//!   close enough; each object colour's pixels form a mask.
//! - Shape: the mask's outline as a function of angle around its centre, r(theta), has 3 bumps
//!   for a triangle, 4 for a square, 5 for a star and none for a circle; the strongest of the
//!   Fourier harmonics 3, 4 and 5 of r(theta) names the shape, a flat profile means a circle.

use image::RgbImage;

use super::scene::{Background, Color, Shape};

/// One object found in a picture.
#[derive(Clone, Debug, PartialEq)]
pub struct Detected {
    pub color: Color,
    pub shape: Shape,
    /// Pixels of the object's colour.
    pub pixels: usize,
    /// Centre of those pixels, in canvas units (x right, y down, [0, 1]).
    pub center: [f32; 2],
}

/// Largest squared RGB distance for a pixel to count as a palette colour.
const MAX_DIST2: i32 = 45 * 45;
/// Fewer pixels than this is noise, not an object.
const MIN_PIXELS: usize = 8;
/// Below this relative harmonic strength the outline counts as round.
const ROUND: f32 = 0.03;

fn dist2(a: [u8; 3], b: [u8; 3]) -> i32 {
    (0..3)
        .map(|k| (i32::from(a[k]) - i32::from(b[k])).pow(2))
        .sum()
}

/// The background colour: the palette background nearest to the mean of the border pixels.
pub fn background(img: &RgbImage) -> Background {
    let (w, h) = img.dimensions();
    let border: Vec<[u8; 3]> = img
        .enumerate_pixels()
        .filter(|(x, y, _)| *x == 0 || *y == 0 || *x + 1 == w || *y + 1 == h)
        .map(|(_, _, p)| p.0)
        .collect();
    let n = border.len().max(1) as u32;
    let mean: [u8; 3] =
        std::array::from_fn(|k| (border.iter().map(|p| u32::from(p[k])).sum::<u32>() / n) as u8);
    *Background::ALL
        .iter()
        .min_by_key(|b| dist2(b.rgb(), mean))
        .unwrap_or(&Background::Gray)
}

/// The pixels of each object colour, read with the palette: a pixel belongs to the nearest
/// object colour if it is close enough and closer than the background.
pub fn color_masks(img: &RgbImage) -> Vec<(Color, Vec<(u32, u32)>)> {
    let bg = background(img);
    let mut masks: Vec<(Color, Vec<(u32, u32)>)> =
        Color::ALL.iter().map(|&c| (c, Vec::new())).collect();
    for (x, y, p) in img.enumerate_pixels() {
        let to_bg = dist2(p.0, bg.rgb());
        let nearest = Color::ALL
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| dist2(p.0, c.rgb()));
        if let Some((i, c)) = nearest {
            let d = dist2(p.0, c.rgb());
            if d < MAX_DIST2 && d < to_bg && c.rgb() != bg.rgb() {
                masks[i].1.push((x, y));
            }
        }
    }
    masks
}

/// The objects in `img`, largest first.
pub fn detect(img: &RgbImage) -> Vec<Detected> {
    let (w, h) = img.dimensions();
    let mut found: Vec<Detected> = color_masks(img)
        .into_iter()
        .filter(|(_, m)| m.len() >= MIN_PIXELS)
        .map(|(color, m)| {
            let n = m.len() as f32;
            let cx = m.iter().map(|p| p.0 as f32 + 0.5).sum::<f32>() / n;
            let cy = m.iter().map(|p| p.1 as f32 + 0.5).sum::<f32>() / n;
            Detected {
                color,
                shape: shape_of(&m, [cx, cy]),
                pixels: m.len(),
                center: [cx / w as f32, cy / h as f32],
            }
        })
        .collect();
    found.sort_by_key(|d| std::cmp::Reverse(d.pixels));
    found
}

/// Classifies a mask by the harmonics of its outline r(theta) around `center` (pixels).
fn shape_of(mask: &[(u32, u32)], center: [f32; 2]) -> Shape {
    const BINS: usize = 36;
    let mut r = [0f32; BINS];
    for &(x, y) in mask {
        // The pixel's far corner from the centre, so a pixel counts with its whole extent.
        let (dx, dy) = (x as f32 + 0.5 - center[0], y as f32 + 0.5 - center[1]);
        let d = (dx * dx + dy * dy).sqrt() + 0.5;
        let theta = dy.atan2(dx);
        let b = (((theta + std::f32::consts::PI) / std::f32::consts::TAU) * BINS as f32) as usize
            % BINS;
        r[b] = r[b].max(d);
    }
    // Fill empty bins (small masks) from their neighbours.
    for i in 0..BINS {
        if r[i] == 0.0 {
            r[i] = r[(i + BINS - 1) % BINS].max(r[(i + 1) % BINS]);
        }
    }
    let mean = r.iter().sum::<f32>() / BINS as f32;
    let harmonic = |k: usize| {
        let (mut re, mut im) = (0f32, 0f32);
        for (b, &v) in r.iter().enumerate() {
            let a = std::f32::consts::TAU * (k * b) as f32 / BINS as f32;
            re += (v - mean) * a.cos();
            im += (v - mean) * a.sin();
        }
        (re * re + im * im).sqrt() / (BINS as f32 * mean.max(1e-6))
    };
    let (h3, h4, h5) = (harmonic(3), harmonic(4), harmonic(5));
    if h3.max(h4).max(h5) < ROUND {
        Shape::Circle
    } else if h3 >= h4 && h3 >= h5 {
        Shape::Triangle
    } else if h4 >= h5 {
        Shape::Square
    } else {
        Shape::Star
    }
}
