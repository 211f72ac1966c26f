//! Image files in and out, and the conversion between pixels and the model's view of an image:
//! a `(C, H, W)` `f32` array in [-1, 1], as in Stable Diffusion (`x = 2 * pixel / 255 - 1`).

use std::io::Cursor;
use std::path::Path;

use image::{imageops, ImageFormat, ImageReader, RgbImage};
use ndarray::Array3;

use super::files::write_atomic;
use crate::{Error, Result};

/// The photograph bundled with inkdrop: astronaut Eileen Collins (NASA, public domain), the
/// `astronaut.png` of scikit-image's sample data. See `data/README.md`.
pub static ASTRONAUT_PNG: &[u8] = include_bytes!("../../data/astronaut.png");

/// Decodes the bundled photograph.
pub fn astronaut() -> Result<RgbImage> {
    decode(ASTRONAUT_PNG, Path::new("data/astronaut.png"))
}

fn decode(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::ImageUnreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if reader.format().is_none() {
        return Err(Error::NotAnImage {
            path: path.to_path_buf(),
            reason: "its contents are not PNG or JPEG".into(),
        });
    }
    let img = reader.decode().map_err(|e| Error::NotAnImage {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(img.to_rgb8())
}

/// Loads a PNG or JPEG file as 8-bit RGB (alpha dropped, grey expanded).
pub fn load_image(path: &Path) -> Result<RgbImage> {
    if !path.exists() {
        return Err(Error::ImageNotFound {
            path: path.to_path_buf(),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| Error::ImageUnreadable {
        path: path.to_path_buf(),
        reason: format!("{e}; check the file's permissions"),
    })?;
    decode(&bytes, path)
}

/// Encodes an image as PNG and writes it atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .map_err(|e| Error::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Crops the largest centred square and resizes it to `size` x `size` (Catmull-Rom filter).
pub fn center_square(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.min(h);
    let cropped = imageops::crop_imm(img, (w - side) / 2, (h - side) / 2, side, side).to_image();
    if side == size {
        cropped
    } else {
        imageops::resize(&cropped, size, size, imageops::FilterType::CatmullRom)
    }
}

/// Pixels to model space: `x = 2 * p / 255 - 1`, shape `(3, H, W)`.
pub fn to_chw(img: &RgbImage) -> Array3<f32> {
    let (w, h) = img.dimensions();
    Array3::from_shape_fn((3, h as usize, w as usize), |(c, y, x)| {
        f32::from(img.get_pixel(x as u32, y as u32)[c]) / 127.5 - 1.0
    })
}

/// Model space to pixels: `p = round((x + 1) * 127.5)`, clamped to [0, 255]. Takes `(3, H, W)`.
pub fn from_chw(x: &Array3<f32>) -> Result<RgbImage> {
    let (c, h, w) = x.dim();
    if c != 3 {
        return Err(Error::Shape {
            what: "image channels",
            expected: vec![3, h, w],
            got: vec![c, h, w],
        });
    }
    Ok(RgbImage::from_fn(w as u32, h as u32, |px, py| {
        image::Rgb(std::array::from_fn(|ch| {
            to_u8(x[[ch, py as usize, px as usize]])
        }))
    }))
}

/// One value in [-1, 1] to a byte.
fn to_u8(v: f32) -> u8 {
    ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

/// Enlarges an image `k` times with nearest-neighbour sampling, so small pictures keep their
/// pixels visible in figures.
pub fn enlarge(img: &RgbImage, k: u32) -> RgbImage {
    imageops::resize(
        img,
        img.width() * k,
        img.height() * k,
        imageops::FilterType::Nearest,
    )
}
