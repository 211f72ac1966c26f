//! Does the UNet draw what the prompt says? Generate single-object pictures for "a {colour}
//! {shape}" prompts and read them back with the palette detector ([`crate::shapes::detect`]).

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::bundle::UNetBundle;
use super::sample::ddpm_sample;
use crate::clip::bundle::ClipBundle;
use crate::schedule::NoiseSchedule;
use crate::shapes::detect::detect;
use crate::shapes::scene::{Color, Shape};
use crate::train::vae::tensor_images;
use crate::vae::AutoencoderKL;
use crate::Result;

/// The 16 prompts of the check: four colours times four shapes, all seen in training.
pub fn check_prompts() -> Vec<(Color, Shape)> {
    let colors = [Color::Red, Color::Blue, Color::Yellow, Color::Green];
    colors
        .iter()
        .flat_map(|&c| Shape::ALL.iter().map(move |&s| (c, s)))
        .collect()
}

/// Results of the check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttributeCheck {
    pub images: usize,
    pub guidance_scale: f64,
    pub steps: usize,
    /// Share of images whose largest object has the prompt's colour.
    pub color_accuracy: f64,
    /// Share whose largest object has the prompt's shape.
    pub shape_accuracy: f64,
    /// Share with both right.
    pub both_accuracy: f64,
}

/// Generates `per_prompt` images for each of [`check_prompts`] (DDPM, `steps` strided steps,
/// classifier-free guidance `guidance_scale`) and checks the largest object of each. Returns
/// the scores and the images, prompt by prompt. The UNet's file says what it predicts and on
/// which schedule; its text encoder (its own or CLIP's) encodes the prompts.
pub fn check_attributes(
    unet: &UNetBundle,
    clip: &ClipBundle,
    vae: &AutoencoderKL,
    per_prompt: usize,
    guidance_scale: f64,
    steps: usize,
    seed: u64,
) -> Result<(AttributeCheck, Vec<RgbImage>)> {
    let schedule = NoiseSchedule::new(unet.parameterization.schedule())?;
    let pairs = check_prompts();
    let prompts: Vec<String> = pairs
        .iter()
        .flat_map(|(c, s)| std::iter::repeat_n(format!("a {} {}", c.word(), s.word()), per_prompt))
        .collect();
    let mut rng = crate::support::seeded_rng(seed);
    let mut images = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(64) {
        let cond = unet.encoder_hidden_states(clip, chunk)?;
        let uncond = unet.encoder_hidden_states(clip, &vec![String::new(); chunk.len()])?;
        let latents = ddpm_sample(
            &unet.unet,
            &schedule,
            unet.parameterization.prediction_type,
            &cond,
            &uncond,
            guidance_scale,
            steps,
            &mut rng,
        )?;
        let x = vae
            .decode(&(latents / vae.config.scaling_factor)?)?
            .clamp(-1f32, 1f32)?;
        images.extend(tensor_images(&x)?);
    }
    let (mut color, mut shape, mut both) = (0, 0, 0);
    for (i, img) in images.iter().enumerate() {
        let (want_c, want_s) = pairs[i / per_prompt];
        let found = detect(img);
        let (c, s) = found
            .first()
            .map_or((false, false), |d| (d.color == want_c, d.shape == want_s));
        color += usize::from(c);
        shape += usize::from(s);
        both += usize::from(c && s);
    }
    let n = images.len().max(1) as f64;
    let check = AttributeCheck {
        images: images.len(),
        guidance_scale,
        steps,
        color_accuracy: color as f64 / n,
        shape_accuracy: shape as f64 / n,
        both_accuracy: both as f64 / n,
    };
    Ok((check, images))
}
