//! `inkdrop explore`: a terminal UI that scrubs through a generation step by step (reverse
//! mode) or through the noising of one picture (forward mode).
//!
//! ```text
//! worker thread: settings -> TextToImage::generate (trace with attention) -> ReverseFrames,
//!                then each step's pictures through the VAE decoder, nearest the cursor first
//! event loop:    key -> App::handle_key (pure) -> Effect (re-run, write PNG, quit) -> ui::draw
//! ```
//!
//! The state ([`app::App`]) knows nothing of terminals; drawing ([`ui::draw`]) is one function
//! per panel over any ratatui backend, so tests render whole screens into a `TestBackend`.

pub mod app;
pub mod explain;
pub mod frames;
pub mod images;
pub mod ui;

use std::time::Instant;

use image::RgbImage;

use crate::pipeline::{GenerateRequest, TextToImage};
use crate::support::grid::{labelled_grid, Tile};
use crate::Result;
use app::{App, Mode, Settings};
use frames::{NoiseView, ReverseFrames};

/// Runs the pipeline once with attention recorded and draws every step's latent panels;
/// `on_step(done, total)` reports progress. The VAE-decoded pictures (x_t, predicted x0, and the
/// attention overlays drawn on them) are left to [`frames::StepLatents`], so the first screen
/// waits for the denoising only. Returns the frames and the seconds it took.
pub fn generate_frames(
    pipe: &TextToImage,
    settings: &Settings,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<(ReverseFrames, f64)> {
    let started = Instant::now();
    let req = GenerateRequest {
        prompt: settings.prompt.clone(),
        steps: settings.steps,
        guidance_scale: settings.guidance_scale,
        sampler: settings.sampler,
        seed: settings.seed,
        record_attention: true,
        ..GenerateRequest::default()
    };
    let encoding = pipe.clip.tokenizer.encode(&req.prompt)?;
    if encoding.truncated > 0 {
        // Refused rather than cut: a warning on stderr would land in the middle of the screen.
        return Err(crate::Error::InvalidSetting {
            what: format!("prompt {:?}", req.prompt),
            reason: format!(
                "it is {} tokens too long for the text encoder's context of {} (start and end \
                 tokens included); shorten it (press e)",
                encoding.truncated,
                encoding.ids.len()
            ),
        });
    }
    let generation = pipe.generate_with(&req, &mut |step, total| {
        on_step(step.index + 1, total);
    })?;
    let image = generation.images.into_iter().next().unwrap_or_default();
    let frames = ReverseFrames::new(generation.trace, encoding, image)?;
    Ok((frames, started.elapsed().as_secs_f64()))
}

/// The panels on screen as one labelled picture (each tile enlarged to 256 x 256 pixels).
pub fn panels_picture(app: &App) -> Result<RgbImage> {
    let tile = |img: &RgbImage, caption: Vec<String>| Tile {
        image: image::imageops::resize(img, 256, 256, image::imageops::FilterType::Nearest),
        caption,
    };
    match app.mode {
        Mode::Reverse => {
            let Some(r) = &app.reverse else {
                return Err(crate::Error::InvalidSetting {
                    what: "write PNG".into(),
                    reason: "no generation has finished yet; wait for it, then press w".into(),
                });
            };
            let i = app.step.min(r.len().saturating_sub(1));
            let s = &r.trace.steps[i];
            let (Some(x_t), Some(pred_x0)) = (&r.x_t[i], &r.pred_x0[i]) else {
                return Err(crate::Error::InvalidSetting {
                    what: "write PNG".into(),
                    reason: format!(
                        "step {}'s pictures are still being decoded; press w again in a moment",
                        i + 1
                    ),
                });
            };
            let view = NoiseView::ALL
                .iter()
                .position(|&v| v == app.noise_view)
                .unwrap_or(0);
            let token = app.token.min(r.tokens.len().saturating_sub(1));
            let mut tiles = vec![
                tile(x_t, vec!["x_t (decoded)".into()]),
                tile(pred_x0, vec!["predicted x0".into()]),
                tile(
                    &r.noise[view].0[i],
                    vec![format!(
                        "{} ±{:.2}",
                        app.noise_view.label(),
                        r.noise[view].1
                    )],
                ),
                tile(&r.channels[i], vec!["x_t, 4 channels".into()]),
            ];
            if let Some(att) = r.attention.get(i).and_then(|a| a.get(token)) {
                tiles.push(tile(
                    att,
                    vec![format!("attention: \"{}\"", r.token_label(token))],
                ));
            }
            let title = format!(
                "\"{}\" · {} · step {}/{} · t = {:.0} · ᾱ = {:.3} · guidance {} · seed {}",
                r.trace.prompt,
                r.trace.sampler.name(),
                i + 1,
                r.len(),
                s.t,
                s.alpha_bar,
                r.trace.guidance_scale,
                r.trace.seed
            );
            labelled_grid(&tiles, tiles.len(), Some(&title))
        }
        Mode::Forward => {
            let fw = &app.forward;
            let t = app.t.min(fw.num_timesteps() - 1);
            let ab = fw.schedule.alpha_bar(t);
            let tiles = vec![
                tile(&fw.x0, vec!["x0".into()]),
                tile(&fw.x_t(t)?, vec![format!("x_t, t = {t}")]),
                tile(&fw.noise_added(t)?, vec!["√(1−ᾱ_t)·ε".into()]),
            ];
            let title = format!(
                "forward process, {} schedule: t = {t}, ᾱ_t = {ab:.4}",
                fw.schedule_kind.name()
            );
            labelled_grid(&tiles, 3, Some(&title))
        }
    }
}

/// File name for the panels at the current position.
pub fn panels_file_name(app: &App) -> String {
    match app.mode {
        Mode::Reverse => format!(
            "explore_{}_seed{}_step{:02}.png",
            app.settings.sampler.name().replace('+', "p"),
            app.settings.seed,
            app.step + 1
        ),
        Mode::Forward => format!(
            "explore_forward_{}_t{:03}.png",
            app.forward.schedule_kind.name(),
            app.t
        ),
    }
}
