//! Drawing a scene: each pixel is the average of 4x4 sub-samples (supersampling), so edges are
//! anti-aliased and a scene renders the same at 32 px for training and 128 px for figures.

use image::{Rgb, RgbImage};

use super::scene::{Object, Scene, Shape};

/// Sub-samples per pixel along each axis.
const SUPERSAMPLE: u32 = 4;

/// The outline of an object as a polygon in canvas units (`None` for circles).
pub fn polygon(obj: &Object) -> Option<Vec<[f32; 2]>> {
    outline(obj.shape, obj.center, obj.radius(), obj.rotation)
}

/// The outline of `shape` with circumradius `r` around `center`, turned by `rotation` radians,
/// as a polygon (`None` for a circle); in whatever units `center` and `r` are given.
pub fn outline(shape: Shape, center: [f32; 2], r: f32, rotation: f32) -> Option<Vec<[f32; 2]>> {
    let [cx, cy] = center;
    let up = -std::f32::consts::FRAC_PI_2 + rotation;
    let ring = |n: usize, radius: &dyn Fn(usize) -> f32, offset: f32| -> Vec<[f32; 2]> {
        (0..n)
            .map(|i| {
                let a = up + offset + std::f32::consts::TAU * i as f32 / n as f32;
                [cx + radius(i) * a.cos(), cy + radius(i) * a.sin()]
            })
            .collect()
    };
    match shape {
        Shape::Circle => None,
        Shape::Square => Some(ring(4, &|_| r * 0.92, std::f32::consts::FRAC_PI_4)),
        Shape::Triangle => Some(ring(3, &|_| r, 0.0)),
        Shape::Star => Some(ring(10, &|i| if i % 2 == 0 { r } else { r * 0.42 }, 0.0)),
    }
}

/// Even-odd point-in-polygon test.
pub fn inside_polygon(p: [f32; 2], poly: &[[f32; 2]]) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (a, b) = (poly[i], poly[j]);
        if (a[1] > p[1]) != (b[1] > p[1])
            && p[0] < (b[0] - a[0]) * (p[1] - a[1]) / (b[1] - a[1]) + a[0]
        {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// A shape's coverage test at one point, with its polygon precomputed.
struct Coverage {
    center: [f32; 2],
    radius: f32,
    polygon: Option<Vec<[f32; 2]>>,
}

impl Coverage {
    fn new(obj: &Object) -> Self {
        Coverage {
            center: obj.center,
            radius: obj.radius(),
            polygon: polygon(obj),
        }
    }

    fn contains(&self, p: [f32; 2]) -> bool {
        let (dx, dy) = (p[0] - self.center[0], p[1] - self.center[1]);
        if dx * dx + dy * dy > self.radius * self.radius {
            return false;
        }
        match &self.polygon {
            None => true,
            Some(poly) => inside_polygon(p, poly),
        }
    }
}

/// How much of each cell of a `grid` x `grid` partition of the canvas object `index` of `scene`
/// visibly covers (objects drawn after it hide it, as in [`render`]), in [0, 1], row-major,
/// from `sub` x `sub` sub-samples per cell. At the latent grid this is the region the object's
/// words should attend to (`train::grounding`).
pub fn object_coverage(scene: &Scene, index: usize, grid: usize, sub: usize) -> Vec<f32> {
    let covers: Vec<Coverage> = scene.objects.iter().map(Coverage::new).collect();
    let mut out = vec![0f32; grid * grid];
    if index >= covers.len() || sub == 0 {
        return out;
    }
    let step = 1.0 / (grid * sub) as f32;
    for (cell, v) in out.iter_mut().enumerate() {
        let (cx, cy) = (cell % grid, cell / grid);
        let mut hits = 0u32;
        for sy in 0..sub {
            for sx in 0..sub {
                let p = [
                    ((cx * sub + sx) as f32 + 0.5) * step,
                    ((cy * sub + sy) as f32 + 0.5) * step,
                ];
                let seen = covers.iter().rposition(|c| c.contains(p));
                hits += u32::from(seen == Some(index));
            }
        }
        *v = hits as f32 / (sub * sub) as f32;
    }
    out
}

/// The tight bounding box [x_min, y_min, x_max, y_max] of an object in canvas units.
pub fn bounding_box(obj: &Object) -> [f32; 4] {
    match polygon(obj) {
        None => {
            let ([cx, cy], r) = (obj.center, obj.radius());
            [cx - r, cy - r, cx + r, cy + r]
        }
        Some(poly) => poly
            .iter()
            .fold([f32::MAX, f32::MAX, f32::MIN, f32::MIN], |b, p| {
                [
                    b[0].min(p[0]),
                    b[1].min(p[1]),
                    b[2].max(p[0]),
                    b[3].max(p[1]),
                ]
            }),
    }
}

/// Renders `scene` as a `size` x `size` RGB image: each pixel averages 4x4 sub-samples of
/// (background, or the colour of the last object covering the sub-sample).
pub fn render(scene: &Scene, size: u32) -> RgbImage {
    let shapes: Vec<(Coverage, [u8; 3])> = scene
        .objects
        .iter()
        .map(|o| (Coverage::new(o), o.color.rgb()))
        .collect();
    let bg = scene.background.rgb();
    let n = SUPERSAMPLE * SUPERSAMPLE;
    RgbImage::from_fn(size, size, |px, py| {
        let mut acc = [0u32; 3];
        for sy in 0..SUPERSAMPLE {
            for sx in 0..SUPERSAMPLE {
                let p = [
                    (px as f32 + (sx as f32 + 0.5) / SUPERSAMPLE as f32) / size as f32,
                    (py as f32 + (sy as f32 + 0.5) / SUPERSAMPLE as f32) / size as f32,
                ];
                let rgb = shapes
                    .iter()
                    .rev()
                    .find(|(c, _)| c.contains(p))
                    .map_or(bg, |(_, rgb)| *rgb);
                for ch in 0..3 {
                    acc[ch] += u32::from(rgb[ch]);
                }
            }
        }
        Rgb(acc.map(|v| ((v + n / 2) / n) as u8))
    })
}
