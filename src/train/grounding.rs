//! A grounding loss on the cross-attention maps, after TokenCompose (Wang et al. 2024,
//! "TokenCompose: Text-to-Image Diffusion with Token-level Supervision"): the words that name
//! an object ("large", "red", "circle") should look at that object. Shapes World knows where
//! every object is, so each such token gets a target region, the object's visible coverage of
//! every latent cell, and the loss asks for the token's attention to fall inside it:
//!
//! ```text
//! A_l(u)  = mean over heads of P_l[u, token]        (P_l = softmax(Q K^T / sqrt(d)) of layer l)
//! inside  = sum_u A_l(u) M(u) / sum_u A_l(u)        (M = the object's coverage at layer l's grid)
//! L_token = mean over layers l and grounded tokens of (1 - inside)^2
//! ```
//!
//! It is added to the denoising loss with a small weight. Without it the maps are only a side
//! effect of denoising, and chapter 5 measures how often a colour word's map actually lands on
//! its object.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::inside_share::inside_share;
use crate::shapes::caption::parse_claim;
use crate::shapes::render::object_coverage;
use crate::shapes::scene::Scene;
use crate::text::tokenizer::ClipTokenizer;
use crate::unet::attention::AttentionMap;
use crate::unet::UNetConfig;
use crate::{Error, Result};

/// For each object a caption names, the token positions of its words (size, colour, shape or
/// "shape"), in the caption's CLIP encoding: `(object index, token index)`. The caption's
/// objects are the scene's, in order ([`crate::shapes::caption::Claim::text`]); a word cut off
/// by the context length is left out.
pub fn object_tokens(tokenizer: &ClipTokenizer, caption: &str) -> Result<Vec<(usize, usize)>> {
    let Some(claim) = parse_claim(caption) else {
        return Ok(Vec::new());
    };
    let enc = tokenizer.encode(caption)?;
    let mut cursor = 1; // after the start token
    let mut found = Vec::new();
    for (i, obj) in claim.objects.iter().enumerate() {
        let words = [
            obj.size.map(|s| s.word()),
            obj.color.map(|c| c.word()),
            Some(obj.shape.map_or("shape", |s| s.word())),
        ];
        for w in words.into_iter().flatten() {
            let piece = format!("{w}</w>");
            if let Some(p) = (cursor..enc.eot_index).find(|&p| enc.tokens[p] == piece) {
                found.push((i, p));
                cursor = p + 1;
            }
        }
    }
    Ok(found)
}

/// The targets of one batch: per latent grid side `g`, `masks[g]` (B, g*g, T) holds each
/// grounded token's object coverage (zero elsewhere), and `selected` (B, T) is 1 where a token
/// is grounded.
pub struct GroundingTargets {
    pub masks: HashMap<usize, Tensor>,
    pub selected: Tensor,
    pub count: usize,
}

/// Targets for a batch of `captions` describing `scenes` (an empty caption grounds nothing), at
/// the latent grid sides `grids`, for `tokens` context positions. None when no token is
/// grounded.
pub fn grounding_targets(
    tokenizer: &ClipTokenizer,
    captions: &[String],
    scenes: &[&Scene],
    grids: &[usize],
    tokens: usize,
    dev: &Device,
) -> Result<Option<GroundingTargets>> {
    let b = captions.len();
    // Sample by sample in parallel (a few milliseconds a step, which one core spent alone).
    let per_sample: Vec<Vec<(usize, usize)>> = captions
        .par_iter()
        .map(|c| object_tokens(tokenizer, c))
        .collect::<Result<_>>()?;
    let count: usize = per_sample.iter().map(Vec::len).sum();
    if count == 0 {
        return Ok(None);
    }
    let mut selected = vec![0f32; b * tokens];
    for (i, toks) in per_sample.iter().enumerate() {
        for &(_, p) in toks {
            selected[i * tokens + p] = 1.0;
        }
    }
    let mut masks = HashMap::new();
    for &g in grids {
        let hw = g * g;
        let mut m = vec![0f32; b * hw * tokens];
        m.par_chunks_mut(hw * tokens)
            .zip(&per_sample)
            .enumerate()
            .for_each(|(i, (m, toks))| {
                let mut cover: HashMap<usize, Vec<f32>> = HashMap::new();
                for &(obj, p) in toks {
                    // Sub-samples so that a cell is judged from about 64 x 64 points per canvas.
                    let c = cover
                        .entry(obj)
                        .or_insert_with(|| object_coverage(scenes[i], obj, g, (64 / g).max(1)));
                    for (u, &v) in c.iter().enumerate() {
                        m[u * tokens + p] = v;
                    }
                }
            });
        masks.insert(g, Tensor::from_vec(m, (b, hw, tokens), dev)?);
    }
    Ok(Some(GroundingTargets {
        masks,
        selected: Tensor::from_vec(selected, (b, tokens), dev)?,
        count,
    }))
}

/// The targets' coverage masks (B, HW, T) at the grid of a recorded map, if they have it.
fn layer_mask<'a>(map: &AttentionMap, targets: &'a GroundingTargets) -> Option<&'a Tensor> {
    targets
        .masks
        .get(&map.height)
        .filter(|_| map.height == map.width)
}

/// The mean of per-layer losses; an error naming `what` when no layer had targets.
fn mean_over_layers(per_layer: &[Tensor], what: &str) -> Result<Tensor> {
    if per_layer.is_empty() {
        return Err(Error::InvalidSetting {
            what: what.into(),
            reason: "no cross-attention map on a grid the grounding targets cover; \
                     train a UNet with cross-attention"
                .into(),
        });
    }
    Ok(Tensor::stack(per_layer, 0)?.mean_all()?)
}

/// `inside` (B, T) for one recorded map: the share of each token's attention (mean over heads)
/// that falls inside its target region; None when `targets` have no grid of the map's size.
fn inside(map: &AttentionMap, targets: &GroundingTargets) -> Result<Option<Tensor>> {
    let Some(m) = layer_mask(map, targets) else {
        return Ok(None);
    };
    // sum_u A M / (sum_u A + 1e-8), A the mean over heads, fused (`inside_share.rs`).
    Ok(Some(inside_share(&map.probs, m)?)) // (B, T)
}

/// `L_token` (see the module docs) over the recorded cross-attention `maps` of a batch: the
/// mean over layers and grounded tokens of `(1 - inside)^2`. Layers whose grid has no target
/// are skipped.
pub fn token_loss(maps: &[AttentionMap], targets: &GroundingTargets) -> Result<Tensor> {
    let mut per_layer = Vec::new();
    for map in maps {
        if let Some(inside) = inside(map, targets)? {
            let miss = (1.0 - inside)?.sqr()?; // (B, T)
            per_layer.push(((miss * &targets.selected)?.sum_all()? / targets.count as f64)?);
        }
    }
    mean_over_layers(&per_layer, "grounding loss")
}

/// The binding loss, the pixels' side of grounding: where an object is drawn, the attention
/// its cells give to the words naming objects should go to that object's words, not the other
/// object's ("a white square above a purple circle": the square's cells should read "white",
/// not "purple"). With `A_l(u, t)` as above and `M(u, t)` the coverage of token t's object at
/// cell u (0 for words that name no object):
///
/// ```text
/// words(u) = sum_t A_l(u, t) [t grounded]
/// own(u)   = sum_t A_l(u, t) M(u, t)                  (the words of the objects covering u)
/// cover(u) = max_t M(u, t)
/// L_bind   = sum_u cover(u) (cover(u) - own(u) / words(u))^2 / sum_u cover(u)   (mean over layers)
/// ```
///
/// A cell wholly inside one object scores 0 when all its word attention is on that object's
/// words. With one object in the picture `own / words = cover` whatever the attention, so only
/// pictures of two objects teach it anything.
pub fn binding_loss(maps: &[AttentionMap], targets: &GroundingTargets) -> Result<Tensor> {
    let mut per_layer = Vec::new();
    for map in maps {
        if let Some((bound, cover)) = bound_share(map, targets)? {
            let miss = (&cover - bound)?.sqr()?; // (B, HW)
            let weighted = (miss * &cover)?.sum_all()?;
            let total = f64::from(cover.sum_all()?.to_scalar::<f32>()?);
            per_layer.push((weighted / (total + 1e-8))?);
        }
    }
    mean_over_layers(&per_layer, "binding loss")
}

/// `(own / words, cover)`, both (B, HW), for one recorded map (see [`binding_loss`]); None when
/// `targets` have no grid of the map's size.
fn bound_share(map: &AttentionMap, targets: &GroundingTargets) -> Result<Option<(Tensor, Tensor)>> {
    let Some(m) = layer_mask(map, targets) else {
        return Ok(None);
    };
    let a = map.probs.mean(1)?; // (B, HW, T): mean over heads
    let selected = targets.selected.unsqueeze(1)?; // (B, 1, T)
    let words = a.broadcast_mul(&selected)?.sum(2)?; // (B, HW)
    let own = (&a * m)?.sum(2)?; // (B, HW)
    let cover = m.max(2)?; // (B, HW), a constant
    Ok(Some((own.div(&(words + 1e-8)?)?, cover)))
}

/// Per recorded layer (name, grid side, bound share): where objects lie, the share of the
/// attention to object words that goes to the words of the object there,
/// `sum_u cover(u) own(u) / words(u) / sum_u cover(u)^2` over the batch: 1 when every cell reads
/// only its own object's words, about one half for two objects when a cell's word attention is
/// spread over both objects' words alike. Only pictures of two objects tell anything.
pub fn bound_shares(
    maps: &[AttentionMap],
    targets: &GroundingTargets,
) -> Result<Vec<(String, usize, f64)>> {
    let mut out = Vec::new();
    for map in maps {
        if let Some((bound, cover)) = bound_share(map, targets)? {
            let num = (bound * &cover)?.sum_all()?.to_scalar::<f32>()?;
            let den = cover.sqr()?.sum_all()?.to_scalar::<f32>()?;
            out.push((map.name.clone(), map.height, f64::from(num / den.max(1e-8))));
        }
    }
    Ok(out)
}

/// Per recorded layer (name, grid side, mean `inside` over the grounded tokens): how much of a
/// word's attention lands on its own object, the number [`token_loss`] pushes toward 1.
pub fn inside_shares(
    maps: &[AttentionMap],
    targets: &GroundingTargets,
) -> Result<Vec<(String, usize, f64)>> {
    let mut out = Vec::new();
    for map in maps {
        if let Some(inside) = inside(map, targets)? {
            let sum = (inside * &targets.selected)?
                .sum_all()?
                .to_scalar::<f32>()?;
            out.push((
                map.name.clone(),
                map.height,
                f64::from(sum) / targets.count as f64,
            ));
        }
    }
    Ok(out)
}

/// The `inside` that attention spread evenly over the grid would score at grid side `g`: the
/// mean over grounded tokens of their object's share of the grid.
pub fn uniform_share(targets: &GroundingTargets, g: usize) -> Result<f64> {
    let Some(m) = targets.masks.get(&g) else {
        return Ok(f64::NAN);
    };
    let area = (m.sum(1)? / (g * g) as f64)?; // (B, T)
    let sum = (area * &targets.selected)?.sum_all()?.to_scalar::<f32>()?;
    Ok(f64::from(sum) / targets.count as f64)
}

/// The bound share ([`bound_shares`]) that attention spread evenly over every token would score
/// at grid side `g`: each cell's word attention then splits over the objects' words by their
/// number.
pub fn even_bound_share(targets: &GroundingTargets, g: usize) -> Result<f64> {
    let Some(m) = targets.masks.get(&g) else {
        return Ok(f64::NAN);
    };
    let (b, hw, t) = m.dims3()?;
    let even = AttentionMap {
        name: String::new(),
        height: g,
        width: g,
        probs: Tensor::full(1f32 / t as f32, (b, 1, hw, t), m.device())?, // (B, 1, HW, T)
    };
    Ok(bound_shares(&[even], targets)?
        .first()
        .map_or(f64::NAN, |s| s.2))
}

/// The side of the latent grid at each level of a UNet (`sample_size`, then halved per level):
/// the grids its cross-attention layers see.
pub fn latent_grids(cfg: &UNetConfig) -> Vec<usize> {
    (0..cfg.block_out_channels.len())
        .map(|level| cfg.sample_size >> level)
        .filter(|&g| g > 0)
        .collect()
}
