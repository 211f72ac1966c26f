//! Does the pipeline draw what the prompt says? Generate pictures for a set of prompts and read
//! them back with the palette detector ([`crate::shapes::detect`]): colour and shape of each
//! named object, and the spatial relation between two; plus the CLIP similarity of picture and
//! prompt. Prompts naming a held-out (colour, shape) pair are scored apart.

use image::RgbImage;
use serde::Serialize;

use super::{GenerateRequest, TextToImage};
use crate::shapes::caption::{pair_prompt, parse_claim, Claim};
use crate::shapes::detect::{detect, Detected};
use crate::shapes::scene::{Color, Relation, Shape};
use crate::shapes::{is_held_out, render, sample_at, WorldConfig};
use crate::vae::io::{decode_latents, encode_image};
use crate::vae::AutoencoderKL;
use crate::Result;

/// Hits and attempts of one check.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Tally {
    pub hits: usize,
    pub total: usize,
}

impl Tally {
    fn add(&mut self, hit: bool) {
        self.hits += usize::from(hit);
        self.total += 1;
    }

    /// Adds another tally's hits and attempts.
    pub fn merge(&mut self, other: Tally) {
        self.hits += other.hits;
        self.total += other.total;
    }

    /// hits / total, NaN when nothing was checked.
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            f64::NAN
        } else {
            self.hits as f64 / self.total as f64
        }
    }
}

/// What one picture got right.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ImageCheck {
    /// Named objects whose colour is in the picture.
    pub color: Tally,
    /// Named objects found (by colour) with the named shape.
    pub shape: Tally,
    /// The named relation (above, below, left of, right of) between the two objects.
    pub relation: Tally,
}

/// Checks one picture against what its prompt claims. One object: the largest object found
/// must have the colour and shape. Two: each named colour must be found, that object must have
/// the named shape, and their centres must stand in the named relation.
pub fn check_image(claim: &Claim, img: &RgbImage) -> ImageCheck {
    let found = detect(img);
    let mut check = ImageCheck::default();
    let matched: Vec<Option<&Detected>> = if claim.objects.len() == 1 {
        vec![found.first()]
    } else {
        claim
            .objects
            .iter()
            .map(|o| match (o.color, o.shape) {
                (Some(c), _) => found.iter().find(|d| d.color == c),
                (None, Some(s)) => found.iter().find(|d| d.shape == s),
                (None, None) => None,
            })
            .collect()
    };
    for (o, m) in claim.objects.iter().zip(&matched) {
        if let Some(c) = o.color {
            check.color.add(m.is_some_and(|d| d.color == c));
        }
        if let Some(s) = o.shape {
            check.shape.add(m.is_some_and(|d| d.shape == s));
        }
    }
    if let (Some(rel), [a, b]) = (claim.relation, matched.as_slice()) {
        if rel != Relation::NextTo {
            check.relation.add(match (a, b) {
                (Some(a), Some(b)) => relation_holds(a.center, b.center, rel),
                _ => false,
            });
        }
    }
    check
}

/// How far (canvas units, about 1.6 pixels at 32 px) the cross-axis offset may exceed the named
/// one. Captions name the larger offset ([`crate::shapes::caption::relation_between`]);
/// objects placed on a diagonal tie, and a centre read back a fraction of a pixel off would turn
/// "above" into "left of".
const RELATION_TIE: f32 = 0.05;

/// Whether `a` stands in `rel` to `b` (centres, canvas units, y down): the offset along the
/// named axis points the named way and is the larger one, up to `RELATION_TIE` (0.05 of the canvas).
pub fn relation_holds(a: [f32; 2], b: [f32; 2], rel: Relation) -> bool {
    let (dx, dy) = (a[0] - b[0], a[1] - b[1]);
    let (along, across) = match rel {
        Relation::Above => (-dy, dx),
        Relation::Below => (dy, dx),
        Relation::LeftOf => (-dx, dy),
        Relation::RightOf => (dx, dy),
        // Side by side, either way round.
        Relation::NextTo => (dx.abs(), dy),
    };
    along > 0.0 && along + RELATION_TIE >= across.abs()
}

/// Whether a claim names a held-out (colour, shape) pair.
pub fn names_held_out_pair(claim: &Claim) -> bool {
    claim
        .objects
        .iter()
        .any(|o| matches!((o.color, o.shape), (Some(c), Some(s)) if is_held_out(c, s)))
}

/// The default prompt set: all 28 "a {colour} {shape}" (3 of them held out) and 16 two-object
/// prompts with distinct colours, one per relation in turn (4 of them name a held-out pair).
pub fn default_prompts() -> Vec<String> {
    let mut prompts: Vec<String> = Color::ALL
        .iter()
        .flat_map(|&c| Shape::ALL.iter().map(move |&s| pair_prompt(c, s)))
        .collect();
    let relations = ["above", "below", "left of", "right of"];
    let pairs: [((Color, Shape), (Color, Shape)); 16] = [
        ((Color::Red, Shape::Circle), (Color::Blue, Shape::Square)),
        (
            (Color::Yellow, Shape::Star),
            (Color::Green, Shape::Triangle),
        ),
        (
            (Color::Blue, Shape::Triangle),
            (Color::Orange, Shape::Square),
        ),
        ((Color::Green, Shape::Circle), (Color::Red, Shape::Star)),
        (
            (Color::White, Shape::Square),
            (Color::Purple, Shape::Circle),
        ),
        ((Color::Orange, Shape::Star), (Color::Yellow, Shape::Circle)),
        (
            (Color::Purple, Shape::Triangle),
            (Color::Green, Shape::Square),
        ),
        ((Color::Red, Shape::Square), (Color::White, Shape::Star)),
        (
            (Color::Blue, Shape::Circle),
            (Color::Yellow, Shape::Triangle),
        ),
        ((Color::Green, Shape::Star), (Color::Purple, Shape::Square)),
        (
            (Color::Yellow, Shape::Square),
            (Color::Red, Shape::Triangle),
        ),
        ((Color::Orange, Shape::Triangle), (Color::Blue, Shape::Star)),
        // Held-out pairs inside two-object prompts.
        ((Color::Purple, Shape::Star), (Color::Green, Shape::Circle)),
        (
            (Color::Red, Shape::Triangle),
            (Color::Orange, Shape::Circle),
        ),
        (
            (Color::White, Shape::Triangle),
            (Color::Blue, Shape::Square),
        ),
        ((Color::Yellow, Shape::Circle), (Color::Purple, Shape::Star)),
    ];
    for (i, ((c1, s1), (c2, s2))) in pairs.iter().enumerate() {
        prompts.push(format!(
            "{} {} {}",
            pair_prompt(*c1, *s1),
            relations[i % 4],
            pair_prompt(*c2, *s2)
        ));
    }
    prompts
}

/// The scores of one prompt.
#[derive(Clone, Debug, Serialize)]
pub struct PromptScore {
    pub prompt: String,
    pub held_out: bool,
    pub objects: usize,
    pub check: ImageCheck,
    /// Mean cosine similarity between the pictures and the prompt (shipped CLIP).
    pub clip_similarity: f64,
}

/// Scores summed over a group of prompts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GroupScore {
    pub prompts: usize,
    pub images: usize,
    pub color: f64,
    pub shape: f64,
    pub relation: f64,
    pub clip_similarity: f64,
}

/// The whole evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub per_prompt_images: usize,
    pub sampler: String,
    pub steps: usize,
    pub guidance_scale: f64,
    pub seed: u64,
    pub prompts: Vec<PromptScore>,
    /// Keyed "one object, seen", "two objects, held out", ... and "all".
    pub groups: Vec<(String, GroupScore)>,
    /// The same checks on real Shapes World pictures passed through the VAE ([`ceiling`]): the
    /// most a perfect denoiser could score with this VAE and this reader.
    pub ceiling: Vec<(String, GroupScore)>,
}

/// Pictures per group in [`ceiling`].
pub const CEILING_IMAGES: usize = 300;

/// What the checks give on real Shapes World pictures after a round trip through the VAE: the
/// most a perfect denoiser could score, since a generated picture can only be as readable as a
/// decoded real one. See [`reader_accuracy`].
pub fn ceiling(vae: &AutoencoderKL, seed: u64) -> Result<Vec<(String, GroupScore)>> {
    reader_accuracy(Some(vae), seed, "ceiling")
}

/// The checks of [`check_image`] on real Shapes World pictures (training split, seed `seed`) at
/// the VAE's size, each against its full ground truth ("a red circle above a blue square"):
/// [`CEILING_IMAGES`] one-object pictures and as many two-object pictures with two different
/// colours (as the eval's prompts have). With `vae`, each picture first goes through it (encode,
/// decode the mean latent); without, the rendered picture is read as it is. Rows are named
/// "`label`: one object" and "`label`: two objects".
pub fn reader_accuracy(
    vae: Option<&AutoencoderKL>,
    seed: u64,
    label: &str,
) -> Result<Vec<(String, GroupScore)>> {
    let size = vae.map_or(32, |v| v.config.sample_size as u32);
    let mut rows = Vec::new();
    for (name, p_two_objects) in [("one object", 0.0), ("two objects", 1.0)] {
        let world = WorldConfig {
            p_two_objects,
            ..Default::default()
        };
        let (mut sum, mut n, mut index) = (ImageCheck::default(), 0, 0);
        while n < CEILING_IMAGES {
            let scene = sample_at(&world, seed, index).scene;
            index += 1;
            let objects = &scene.objects;
            if objects.len() == 2 && objects[0].color == objects[1].color {
                continue;
            }
            let claim = Claim::colours_shapes_relation(&scene);
            let rendered = render(&scene, size);
            let images = match vae {
                Some(vae) => decode_latents(vae, &encode_image(vae, &rendered)?)?,
                None => vec![rendered],
            };
            for img in images {
                let c = check_image(&claim, &img);
                sum.color.merge(c.color);
                sum.shape.merge(c.shape);
                sum.relation.merge(c.relation);
            }
            n += 1;
        }
        rows.push((
            format!("{label}: {name}"),
            GroupScore {
                prompts: 0,
                images: n,
                color: sum.color.rate(),
                shape: sum.shape.rate(),
                relation: sum.relation.rate(),
                clip_similarity: f64::NAN,
            },
        ));
    }
    Ok(rows)
}

/// Prompts the checker cannot read (no colour or shape word) are refused by name.
pub fn parse_prompts(prompts: &[String]) -> Result<Vec<Claim>> {
    prompts
        .iter()
        .map(|p| {
            parse_claim(p).ok_or_else(|| crate::Error::InvalidSetting {
                what: format!("prompt {p:?}"),
                reason: "names no Shapes World colour or shape, so it cannot be checked; \
                         write prompts like \"a red circle above a blue square\""
                    .into(),
            })
        })
        .collect()
}

/// Generates `base.num_images` pictures per prompt with `base`'s settings (seeds `base.seed`,
/// `base.seed + 1`, ...) and scores them. `on_prompt` sees each prompt's pictures as they come.
pub fn evaluate(
    pipe: &TextToImage,
    prompts: &[String],
    base: &GenerateRequest,
    on_prompt: &mut dyn FnMut(usize, &PromptScore, &[RgbImage]),
) -> Result<EvalReport> {
    let claims = parse_prompts(prompts)?;
    let mut scores = Vec::with_capacity(prompts.len());
    for (i, (prompt, claim)) in prompts.iter().zip(&claims).enumerate() {
        let req = GenerateRequest {
            prompt: prompt.clone(),
            ..base.clone()
        };
        let images = pipe.generate(&req)?.images;
        let mut check = ImageCheck::default();
        for img in &images {
            let c = check_image(claim, img);
            check.color.merge(c.color);
            check.shape.merge(c.shape);
            check.relation.merge(c.relation);
        }
        let text = pipe.clip.embed_texts(std::slice::from_ref(prompt))?; // (1, E)
        let sims = pipe.clip.embed_images(&images)?.matmul(&text.t()?)?; // (N, 1)
        let clip_similarity = f64::from(sims.mean_all()?.to_scalar::<f32>()?);
        let score = PromptScore {
            prompt: prompt.clone(),
            held_out: names_held_out_pair(claim),
            objects: claim.objects.len(),
            check,
            clip_similarity,
        };
        on_prompt(i, &score, &images);
        scores.push(score);
    }
    let group = |name: &str, keep: &dyn Fn(&PromptScore) -> bool| {
        let chosen: Vec<&PromptScore> = scores.iter().filter(|s| keep(s)).collect();
        let mut sum = ImageCheck::default();
        for s in &chosen {
            sum.color.merge(s.check.color);
            sum.shape.merge(s.check.shape);
            sum.relation.merge(s.check.relation);
        }
        let n = chosen.len();
        (
            name.to_string(),
            GroupScore {
                prompts: n,
                images: n * base.num_images,
                color: sum.color.rate(),
                shape: sum.shape.rate(),
                relation: sum.relation.rate(),
                clip_similarity: chosen.iter().map(|s| s.clip_similarity).sum::<f64>()
                    / n.max(1) as f64,
            },
        )
    };
    let groups = vec![
        group("one object, seen pairs", &|s| s.objects == 1 && !s.held_out),
        group("one object, held-out pairs", &|s| {
            s.objects == 1 && s.held_out
        }),
        group("two objects, seen pairs", &|s| {
            s.objects == 2 && !s.held_out
        }),
        group("two objects, held-out pairs", &|s| {
            s.objects == 2 && s.held_out
        }),
        group("all", &|_| true),
    ]
    .into_iter()
    .filter(|(_, g)| g.prompts > 0)
    .collect();
    Ok(EvalReport {
        per_prompt_images: base.num_images,
        sampler: base.sampler.name().to_string(),
        steps: base.steps,
        guidance_scale: base.guidance_scale,
        seed: base.seed,
        prompts: scores,
        groups,
        ceiling: ceiling(&pipe.vae.vae, base.seed)?,
    })
}
