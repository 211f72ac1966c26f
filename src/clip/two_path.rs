//! A two-path image tower: one path sees only colours, the other only outlines, and the image
//! embedding is the sum of their projections.
//!
//! ```text
//! image x (B, 3, H, W) -> background bg = median of all pixels, per channel (it covers most)
//!                      -> foreground m = clamp((max_c |x_c - bg_c| - lo) / (hi - lo), 0, 1)
//!                                                                                 (B, 1, H, W)
//! colour path: [x, m] -> 1x1 conv, quick-GELU, 1x1 conv -> f (B, Wc, H, W)   (no neighbours seen)
//!              object = sum(f m) / sum(m),  background = sum(f (1 - m)) / sum(1 - m)   (B, 2 Wc)
//! shape path:  [m, u, v] (mask, pixel coordinates) -> four 3x3 convs (stride 1, 2, 2, 2)
//!              -> mean over the grid                                              (B, Ws)
//! features = [object, background, shape]                                         (B, W)
//! ```
//!
//! Why: a network that sees colour and shape together can learn "purple, therefore one of the
//! purple shapes I was shown", and then misreads a purple star it never saw (chapter 4 measures
//! this for a ViT and for a plain CNN). Here the shape path cannot see colour and the colour path
//! cannot see shape, so after the (linear) projection the embedding of a purple star is the
//! purple part plus the star part, each learned from other pairs. Real CLIP has no such wiring;
//! it learns what factorisation it has from 400 million pairs. The mask and coordinates are
//! computed from the input, not learned (no gradient flows into them, none is needed).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::conv::Padding;
use crate::nn::layers2d::Conv2d;
use crate::nn::quick_gelu;

/// Below this distance from the background (in the [-1, 1] pixel scale, largest channel: 19 of
/// 255 levels) a pixel is background: generated pictures have faint blotches and a darker frame
/// that must not count as shapes.
pub const MASK_LO: f32 = 0.15;
/// From this distance on (57 of 255 levels) a pixel is fully object: every palette colour is at
/// least 0.55 (70 levels) from every background it may appear on.
pub const MASK_HI: f32 = 0.45;

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct TwoPathVision {
    color: [Conv2d; 2],
    shape: Vec<Conv2d>,
}

impl TwoPathVision {
    /// `width` = the tower's output width: W/4 colour features for the object and W/4 for the
    /// background, W/2 shape features.
    pub fn new(width: usize, vb: VarBuilder) -> Result<Self> {
        let wc = width / 4;
        let ws = width - 2 * wc;
        let c = vb.pp("color");
        let color = [
            Conv2d::new(4, wc, 1, 1, Padding::same(0), c.pp("0"))?,
            Conv2d::new(wc, wc, 1, 1, Padding::same(0), c.pp("1"))?,
        ];
        let chans = [3, ws / 4, ws / 2, ws, ws];
        let s = vb.pp("shape");
        let shape = (0..4)
            .map(|i| {
                let stride = if i == 0 { 1 } else { 2 };
                Conv2d::new(
                    chans[i],
                    chans[i + 1],
                    3,
                    stride,
                    Padding::same(1),
                    s.pp(i.to_string()),
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self { color, shape })
    }

    /// `images`: (B, 3, H, W) in [-1, 1]. Returns (B, W): object colour, background colour and
    /// shape features side by side.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = images.dims4()?;
        let m = foreground_mask(images)?; // (B, 1, H, W)

        // Colour path: per-pixel features, averaged over the object and over the background.
        let f = self.color[1].forward(&quick_gelu(
            &self.color[0].forward(&Tensor::cat(&[images, &m], 1)?)?,
        )?)?; // (B, Wc, H, W)
        let inv = (1.0 - &m)?; // (B, 1, H, W)
        let pooled = |weight: &Tensor| -> Result<Tensor> {
            let num = f.broadcast_mul(weight)?.sum((2, 3))?; // (B, Wc)
            let den = (weight.sum((2, 3))? + 1e-3)?; // (B, 1)
            num.broadcast_div(&den)
        };
        let object = pooled(&m)?; // (B, Wc)
        let background = pooled(&inv)?; // (B, Wc)

        // Shape path: the mask and where each pixel is, never its colour.
        let (u, v) = coordinates(b, h, w, images.device())?; // (B, 1, H, W) each
        let mut s = Tensor::cat(&[&m, &u, &v], 1)?; // (B, 3, H, W)
        let last = self.shape.len() - 1;
        for (i, conv) in self.shape.iter().enumerate() {
            s = conv.forward(&s)?; // (B, C_i, H_i, W_i)
            if i < last {
                s = quick_gelu(&s)?;
            }
        }
        let shape = s.mean((2, 3))?; // (B, Ws)
        Tensor::cat(&[&object, &background, &shape], 1) // (B, W)
    }
}

/// `m = clamp((max_c |x_c - bg_c| - lo) / (hi - lo), 0, 1)`, with `bg_c` the median of channel c
/// over the picture (the background covers most of any Shapes World picture): 1 on objects, 0 on
/// the background and on faint blotches, fractions on anti-aliased edges.
/// (B, 3, H, W) -> (B, 1, H, W), no gradient.
pub fn foreground_mask(images: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = images.dims4()?;
    let data: Vec<f32> = images.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let plane = h * w;
    let mut mask = vec![0f32; b * plane];
    for n in 0..b {
        let img = &data[n * c * plane..(n + 1) * c * plane];
        let bg: Vec<f32> = (0..c)
            .map(|ch| {
                let mut vals = img[ch * plane..(ch + 1) * plane].to_vec();
                vals.sort_by(f32::total_cmp);
                vals.get(vals.len() / 2).copied().unwrap_or(0.0)
            })
            .collect();
        for p in 0..plane {
            let d = (0..c)
                .map(|ch| (img[ch * plane + p] - bg[ch]).abs())
                .fold(0f32, f32::max);
            mask[n * plane + p] = ((d - MASK_LO) / (MASK_HI - MASK_LO)).clamp(0.0, 1.0);
        }
    }
    Tensor::from_vec(mask, (b, 1, h, w), images.device())
}

/// Pixel coordinates in [-1, 1]: u across, v down, each (B, 1, H, W).
fn coordinates(
    b: usize,
    h: usize,
    w: usize,
    dev: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let scale = |i: usize, n: usize| 2.0 * i as f32 / (n.max(2) - 1) as f32 - 1.0;
    let u: Vec<f32> = (0..h * w).map(|p| scale(p % w, w)).collect();
    let v: Vec<f32> = (0..h * w).map(|p| scale(p / w, h)).collect();
    let u = Tensor::from_vec(u, (1, 1, h, w), dev)?.broadcast_as((b, 1, h, w))?;
    let v = Tensor::from_vec(v, (1, 1, h, w), dev)?.broadcast_as((b, 1, h, w))?;
    Ok((u.contiguous()?, v.contiguous()?))
}
