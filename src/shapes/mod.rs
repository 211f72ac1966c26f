//! Shapes World: the procedural, captioned data set every model in inkdrop learns from.
//!
//! A scene is a flat background with one or two objects (circle, square, triangle, star) in one
//! of seven colours, small or large, placed on a 3x3 grid with jitter, never overlapping. Each
//! sample carries its caption *and* its exact ground truth, so evaluations can check what a model
//! generated or understood instead of eyeballing it. Everything is a pure function of a seed.
//!
//! - [`scene`]: the vocabulary (shapes, colours, sizes, positions, relations) and scene sampling.
//! - [`render`]: anti-aliased rendering by supersampling.
//! - [`caption`]: captions from templates that mention a random subset of the attributes.
//!
//! A fixed list of (colour, shape) pairs, [`HELD_OUT_PAIRS`], never appears in training scenes
//! or captions, so evaluations can measure compositional generalisation.

pub mod caption;
pub mod detect;
pub mod render;
pub mod scene;

pub use caption::caption;
pub use render::render;
pub use scene::*;

use rand::Rng;
use serde::Serialize;

/// (colour, shape) pairs that training never sees: a model must compose "purple" and "star" from
/// other examples to get a purple star right.
pub const HELD_OUT_PAIRS: [(Color, Shape); 3] = [
    (Color::Purple, Shape::Star),
    (Color::Orange, Shape::Circle),
    (Color::White, Shape::Triangle),
];

/// Whether a (colour, shape) pair is one of the held-out pairs.
pub fn is_held_out(color: Color, shape: Shape) -> bool {
    HELD_OUT_PAIRS.contains(&(color, shape))
}

/// One data point: the scene (ground truth), a caption for it, and what the caption claims.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub caption: String,
    #[serde(skip)]
    pub claim: caption::Claim,
    #[serde(flatten)]
    pub scene: Scene,
}

/// Which scenes a sampler may produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// No held-out (colour, shape) pair anywhere in the scene.
    Train,
    /// Anything, held-out pairs included (for evaluation).
    All,
}

/// Settings of the scene sampler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorldConfig {
    /// Probability that a scene has two objects instead of one.
    pub p_two_objects: f64,
    pub split: Split,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            p_two_objects: 0.5,
            split: Split::Train,
        }
    }
}

/// Draws one captioned sample.
pub fn sample(config: &WorldConfig, rng: &mut impl Rng) -> Sample {
    let scene = scene::sample_scene(config, rng);
    let claim = caption::claim(&scene, rng);
    Sample {
        caption: claim.text(),
        claim,
        scene,
    }
}

/// The `index`-th sample of the data set with this seed: the same (seed, index) always gives the
/// same sample, whatever was drawn before, so data sets can be regenerated or sharded at will.
pub fn sample_at(config: &WorldConfig, seed: u64, index: u64) -> Sample {
    let mut rng = crate::support::seeded_rng(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    sample(config, &mut rng)
}
