//! Zero-shot classification, CLIP's headline test: rank the 28 captions "a {colour} {shape}"
//! for single-object images and check the top one, separately for seen and held-out pairs.

use rand::seq::IndexedRandom;
use rand::Rng;
use serde::Serialize;

use super::bundle::ClipBundle;
use crate::shapes::caption::pair_prompt;
use crate::shapes::scene::{place, Background, Color, Object, Position, Scene, Shape, Size};
use crate::shapes::{is_held_out, render};
use crate::Result;

/// Every (colour, shape) pair, in a fixed order, with its prompt.
pub fn all_pairs() -> Vec<(Color, Shape, String)> {
    Color::ALL
        .iter()
        .flat_map(|&c| Shape::ALL.iter().map(move |&s| (c, s, pair_prompt(c, s))))
        .collect()
}

/// A single-object scene of a given colour and shape, everything else random.
pub fn single_object_scene(color: Color, shape: Shape, rng: &mut impl Rng) -> Scene {
    let backgrounds: Vec<Background> = Background::ALL
        .iter()
        .copied()
        .filter(|b| b.clashing_color() != Some(color))
        .collect();
    let background = *backgrounds.choose(rng).unwrap_or(&Background::Gray);
    let size = *Size::ALL.choose(rng).unwrap_or(&Size::Small);
    let position = *Position::ALL.choose(rng).unwrap_or(&Position::Center);
    let obj: Object = place(shape, color, size, position, rng);
    Scene {
        background,
        objects: vec![obj],
    }
}

/// Zero-shot results.
#[derive(Clone, Debug, Serialize)]
pub struct ZeroShot {
    /// Top-1 accuracy on pairs seen in training.
    pub seen_top1: f64,
    /// Top-1 accuracy on the held-out pairs.
    pub held_out_top1: f64,
    pub seen_images: usize,
    pub held_out_images: usize,
    /// Accuracy on the colour alone and on the shape alone (all images).
    pub color_acc: f64,
    pub shape_acc: f64,
    /// Most frequent confusions: (true prompt, predicted prompt, count).
    pub confusions: Vec<(String, String, usize)>,
    /// Shape confusion counts, `[true][predicted]` in `Shape::ALL` order.
    pub shape_confusion: Vec<Vec<usize>>,
    /// Colour confusion counts, `[true][predicted]` in `Color::ALL` order.
    pub color_confusion: Vec<Vec<usize>>,
}

/// Evaluates `per_pair` images of every (colour, shape) pair.
pub fn zero_shot(bundle: &ClipBundle, per_pair: usize, seed: u64) -> Result<ZeroShot> {
    let pairs = all_pairs();
    let prompts: Vec<String> = pairs.iter().map(|p| p.2.clone()).collect();
    let text = bundle.embed_texts(&prompts)?; // (28, E)
    let mut rng = crate::support::seeded_rng(seed);
    let mut images = Vec::new();
    let mut truth = Vec::new();
    for (i, &(c, s, _)) in pairs.iter().enumerate() {
        for _ in 0..per_pair {
            images.push(render(
                &single_object_scene(c, s, &mut rng),
                bundle.model.config.image_size as u32,
            ));
            truth.push(i);
        }
    }
    let img = bundle.embed_images(&images)?; // (N, E)
    let sims = img.matmul(&text.t()?)?; // (N, 28)
    let pred: Vec<u32> = sims.argmax(1)?.to_vec1()?;
    let (mut seen, mut seen_ok, mut held, mut held_ok, mut color_ok, mut shape_ok) =
        (0, 0, 0, 0, 0, 0);
    let mut confusion = std::collections::BTreeMap::new();
    let mut shape_confusion = vec![vec![0usize; Shape::ALL.len()]; Shape::ALL.len()];
    let mut color_confusion = vec![vec![0usize; Color::ALL.len()]; Color::ALL.len()];
    let shape_index = |s: &Shape| Shape::ALL.iter().position(|x| x == s).unwrap_or(0);
    let color_index = |c: &Color| Color::ALL.iter().position(|x| x == c).unwrap_or(0);
    for (&t, &p) in truth.iter().zip(&pred) {
        let (tc, ts, _) = &pairs[t];
        let (pc, ps, _) = &pairs[p as usize];
        let ok = t == p as usize;
        if is_held_out(*tc, *ts) {
            held += 1;
            held_ok += usize::from(ok);
        } else {
            seen += 1;
            seen_ok += usize::from(ok);
        }
        shape_confusion[shape_index(ts)][shape_index(ps)] += 1;
        color_confusion[color_index(tc)][color_index(pc)] += 1;
        color_ok += usize::from(tc == pc);
        shape_ok += usize::from(ts == ps);
        if !ok {
            *confusion
                .entry((pairs[t].2.clone(), pairs[p as usize].2.clone()))
                .or_insert(0) += 1;
        }
    }
    let mut confusions: Vec<(String, String, usize)> =
        confusion.into_iter().map(|((a, b), n)| (a, b, n)).collect();
    confusions.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    confusions.truncate(10);
    let n = truth.len().max(1) as f64;
    Ok(ZeroShot {
        seen_top1: seen_ok as f64 / seen.max(1) as f64,
        held_out_top1: held_ok as f64 / held.max(1) as f64,
        seen_images: seen,
        held_out_images: held,
        color_acc: color_ok as f64 / n,
        shape_acc: shape_ok as f64 / n,
        confusions,
        shape_confusion,
        color_confusion,
    })
}
