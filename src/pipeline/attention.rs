//! Word-by-word heat maps from the cross-attention probabilities recorded in a [`Trace`], in the
//! manner of DAAM (Tang et al. 2023, "What the DAAM: interpreting Stable Diffusion using cross
//! attention"): for one text token, take softmax(Q K^T / sqrt(d)) at every chosen attention
//! layer and step, upsample each layer's map to the picture's size, sum over heads, layers and
//! steps, and normalise.
//!
//! Every choice is separate: which steps, which layers (by diffusers' module path), which head.

use image::{Rgb, RgbImage};

use super::{AttentionInjection, GenerateRequest, Generation, TextToImage, Trace};
use crate::shapes::detect::color_masks;
use crate::shapes::scene::Color;
use crate::{Error, Result};

/// Which recorded maps to aggregate.
#[derive(Clone, Debug, Default)]
pub struct MapSelection {
    /// Step indices (0 = the noisiest), inclusive; None: every step.
    pub steps: Option<(usize, usize)>,
    /// Only attention modules whose path contains this text (`down_blocks.0`, `mid_block`,
    /// `up_blocks.1.attentions.0`, ...); None: every cross-attention module.
    pub block: Option<String>,
    /// One head only; None: the sum over heads.
    pub head: Option<usize>,
}

/// Heat maps of every text token for one picture of a generation: `maps[token]` is a
/// row-major `size x size` map in [0, 1] (each stretched from its own minimum to its own
/// maximum, so the maps show *where* a token is looked at, not how much), `mass[token]`
/// the share of attention the token received before normalising (summed over everything
/// selected, divided by the number of query positions, heads, layers and steps).
#[derive(Clone, Debug)]
pub struct TokenMaps {
    pub size: usize,
    pub maps: Vec<Vec<f32>>,
    pub mass: Vec<f64>,
    /// The attention modules that contributed, in recording order (deduplicated).
    pub modules: Vec<String>,
}

/// Aggregates the cross-attention maps of picture `image` (of `num_images` in the request) over
/// `sel`, upsampled bilinearly to `size x size`.
///
/// ```text
/// map_token(p) = sum over steps s, layers l, heads h of upsample(P[s, l, h, :, token])(p)
/// ```
pub fn token_heatmaps(
    trace: &Trace,
    image: usize,
    num_images: usize,
    sel: &MapSelection,
    size: usize,
) -> Result<TokenMaps> {
    let mut sums: Vec<Vec<f32>> = Vec::new();
    let mut mass: Vec<f64> = Vec::new();
    let mut count = 0usize;
    let mut modules: Vec<String> = Vec::new();
    for step in &trace.steps {
        if sel
            .steps
            .is_some_and(|(a, b)| step.index < a || step.index > b)
        {
            continue;
        }
        for map in &step.attention {
            if sel
                .block
                .as_ref()
                .is_some_and(|b| !map.name.contains(b.as_str()))
            {
                continue;
            }
            let (batch, heads, hw, tokens) = map.probs.dims4()?;
            // With guidance the batch is [uncond images; cond images]: take the conditional one.
            let row = if batch == 2 * num_images {
                num_images + image
            } else {
                image
            };
            let probs = map.probs.get(row)?; // (heads, HW, T)
            let probs = match sel.head {
                Some(h) if h < heads => probs.narrow(0, h, 1)?,
                Some(h) => {
                    return Err(Error::InvalidSetting {
                        what: format!("head {h}"),
                        reason: format!("{} has {heads} heads (0..{})", map.name, heads - 1),
                    })
                }
                None => probs,
            };
            let per_pos = probs.sum(0)?.to_vec2::<f32>()?; // (HW, T)
            if sums.is_empty() {
                sums = vec![vec![0.0; size * size]; tokens];
                mass = vec![0.0; tokens];
            }
            for t in 0..tokens {
                let grid: Vec<f32> = per_pos.iter().map(|row| row[t]).collect(); // (h*w)
                let up = upsample_bilinear(&grid, map.height, map.width, size);
                for (s, u) in sums[t].iter_mut().zip(&up) {
                    *s += u;
                }
                mass[t] += grid.iter().map(|&v| f64::from(v)).sum::<f64>();
            }
            count += hw * probs.dim(0)?;
            if !modules.contains(&map.name) {
                modules.push(map.name.clone());
            }
        }
    }
    if sums.is_empty() {
        return Err(Error::InvalidSetting {
            what: "attention maps".into(),
            reason: "none recorded for this selection: generate with record_attention, and check \
                     the step range and the block name"
                .into(),
        });
    }
    for m in &mut sums {
        let min = m.iter().copied().fold(f32::INFINITY, f32::min);
        let max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let span = (max - min).max(1e-12);
        m.iter_mut().for_each(|v| *v = (*v - min) / span);
    }
    Ok(TokenMaps {
        size,
        maps: sums,
        mass: mass.iter().map(|m| m / count.max(1) as f64).collect(),
        modules,
    })
}

/// Bilinear upsampling of an `h x w` grid to `size x size` (pixel centres aligned, as
/// `F.interpolate(mode="bilinear", align_corners=False)`).
pub fn upsample_bilinear(grid: &[f32], h: usize, w: usize, size: usize) -> Vec<f32> {
    let mut out = vec![0f32; size * size];
    let coord = |o: usize, n: usize| -> (usize, usize, f32) {
        let x = ((o as f32 + 0.5) * n as f32 / size as f32 - 0.5).clamp(0.0, (n - 1) as f32);
        let i = x.floor() as usize;
        (i, (i + 1).min(n - 1), x - i as f32)
    };
    for oy in 0..size {
        let (y0, y1, fy) = coord(oy, h);
        for ox in 0..size {
            let (x0, x1, fx) = coord(ox, w);
            let top = grid[y0 * w + x0] * (1.0 - fx) + grid[y0 * w + x1] * fx;
            let bottom = grid[y1 * w + x0] * (1.0 - fx) + grid[y1 * w + x1] * fx;
            out[oy * size + ox] = top * (1.0 - fy) + bottom * fy;
        }
    }
    out
}

/// Where a map is largest: (x, y) in its `size x size` grid.
pub fn peak(map: &[f32], size: usize) -> (usize, usize) {
    let i = map
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    (i % size, i / size)
}

/// Whether the peak of `map` (at the picture's resolution) falls on a pixel of `color`, or
/// within one pixel of one (the palette mask misses anti-aliased edges).
pub fn peak_on_color(map: &[f32], img: &RgbImage, color: Color) -> bool {
    let size = img.width() as usize;
    let (px, py) = peak(map, size);
    color_masks(img)
        .into_iter()
        .find(|(c, _)| *c == color)
        .is_some_and(|(_, pixels)| {
            pixels.iter().any(|&(x, y)| {
                (x as i64 - px as i64).abs() <= 1 && (y as i64 - py as i64).abs() <= 1
            })
        })
}

/// The picture with a heat map laid over it: `k`-times enlarged, the map (in [0, 1]) coloured
/// from transparent through red to yellow.
pub fn overlay(img: &RgbImage, map: &[f32], size: usize, k: u32) -> RgbImage {
    let big = crate::support::image_io::enlarge(img, k);
    let (w, h) = big.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let mx = (x as usize * size / w as usize).min(size - 1);
        let my = (y as usize * size / h as usize).min(size - 1);
        let m = map[my * size + mx].clamp(0.0, 1.0);
        let p = big.get_pixel(x, y).0;
        let heat = [255.0, 255.0 * (m * 1.6 - 0.6).clamp(0.0, 1.0), 0.0];
        let a = 0.75 * m * m;
        Rgb(std::array::from_fn(|c| {
            (0.6 * f32::from(p[c]) * (1.0 - a) + heat[c] * a).round() as u8
        }))
    })
}

/// The three pictures of a prompt-to-prompt word swap, from the same seed.
pub struct WordSwap {
    /// The original prompt's run (its maps are recorded).
    pub source: Generation,
    /// The new prompt alone: same seed, its own attention.
    pub plain: Generation,
    /// The new prompt with the original's cross-attention maps for the first `inject_steps`.
    pub injected: Generation,
}

/// Prompt-to-prompt's word swap (Hertz et al. 2022): generate `req` while recording the
/// prompt branch's cross-attention, then generate `new_prompt` from the same seed twice: on its
/// own, and with the recorded probabilities P = softmax(Q K^T / sqrt(d)) used instead of its own
/// in every cross-attention layer for the first `inject_steps` steps. Only V (what the tokens
/// say) comes from the new prompt there, so the picture is meant to keep the original's layout
/// while the swapped word changes what is drawn (in Stable Diffusion; chapter 5 measures how little
/// of the layout the maps carry in our small model). Both prompts must have the same number of tokens, so
/// every map column still belongs to the same position.
pub fn word_swap(
    pipe: &TextToImage,
    req: &GenerateRequest,
    new_prompt: &str,
    inject_steps: usize,
) -> Result<WordSwap> {
    let (_, eot) = pipe
        .clip
        .tokenize(&[req.prompt.clone(), new_prompt.to_string()])?;
    if eot[0] != eot[1] {
        return Err(Error::InvalidSetting {
            what: format!("word swap \"{}\" -> \"{new_prompt}\"", req.prompt),
            reason: format!(
                "the prompts have {} and {} tokens; swap one word for another word of one token",
                eot[0] - 1,
                eot[1] - 1
            ),
        });
    }
    let source = pipe.generate(&GenerateRequest {
        record_attention: true,
        ..req.clone()
    })?;
    let (start, b) = req.prompt_rows();
    let maps = source
        .trace
        .steps
        .iter()
        .map(|s| {
            s.attention
                .iter()
                .map(|m| m.probs.narrow(0, start, b)) // (B, heads, H*W, tokens)
                .collect::<candle_core::Result<Vec<_>>>()
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let new_req = GenerateRequest {
        prompt: new_prompt.to_string(),
        record_attention: false,
        ..req.clone()
    };
    let plain = pipe.generate(&new_req)?;
    let injected = pipe.generate(&GenerateRequest {
        attention_injection: Some(AttentionInjection {
            maps,
            steps: inject_steps,
        }),
        ..new_req
    })?;
    Ok(WordSwap {
        source,
        plain,
        injected,
    })
}
