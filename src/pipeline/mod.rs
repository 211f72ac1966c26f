//! Text to image: the whole of Stable Diffusion's inference loop on the shipped models.
//!
//! ```text
//! prompt, negative prompt --tokenizer--> ids (2, 16) --CLIP text encoder--> context (2, 16, 128)
//! seed --N(0, I) * init_noise_sigma--> x_T (B, 4, 8, 8)
//! for t in scheduler.timesteps():
//!     eps_uncond, eps_cond = UNet(scale_model_input(x_t), t, [negative; prompt])
//!     eps = eps_uncond + s (eps_cond - eps_uncond)            (classifier-free guidance)
//!     x_t = scheduler.step(eps, t, x_t)
//! image = VAE.decode(x_0 / scaling_factor)  (B, 3, 32, 32)
//! ```
//!
//! [`TextToImage::generate`] returns the images and a [`Trace`] of every step (the latents, the
//! three noise predictions, the predicted x0, timings and, on request, the cross-attention
//! maps), which the chapters, the book and `inkdrop explore` all read.

pub mod attention;
pub mod eval;
mod trace;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use image::RgbImage;

pub use trace::{Trace, TraceStep};

use crate::clip::bundle::{default_clip_path, default_tokenizer_path, ClipBundle};
use crate::noising::randn_tensor;
use crate::schedulers::{predict_eps, SamplerKind, SchedulerConfig};
use crate::unet::attention::{AttentionRecorder, Injection, Reweight};
use crate::unet::bundle::{default_unet_path, UNetBundle};
use crate::vae::bundle::{default_vae_path, VaeBundle};
use crate::{Error, Result};

/// Where the four models of one pipeline live in a folder (`data/`, or what
/// `inkdrop train all --data-dir DIR` writes).
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub tokenizer: PathBuf,
    pub clip: PathBuf,
    pub vae: PathBuf,
    pub unet: PathBuf,
}

impl ModelFiles {
    /// `tokenizer.json`, `clip.safetensors`, `vae.safetensors` and `unet.safetensors` in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        ModelFiles {
            tokenizer: dir.join("tokenizer.json"),
            clip: dir.join("clip.safetensors"),
            vae: dir.join("vae.safetensors"),
            unet: dir.join("unet.safetensors"),
        }
    }

    /// The four paths, in training order.
    pub fn all(&self) -> [&PathBuf; 4] {
        [&self.tokenizer, &self.clip, &self.vae, &self.unet]
    }
}

/// The three trained models of the pipeline.
pub struct TextToImage {
    pub clip: ClipBundle,
    pub vae: VaeBundle,
    pub unet: UNetBundle,
}

/// What to generate. `Default` is `inkdrop generate`'s defaults.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: String,
    /// The text of the unconditional branch of guidance ("" = unconditional).
    pub negative_prompt: String,
    pub steps: usize,
    /// s in eps_uncond + s (eps_cond - eps_uncond): 0 ignores the prompt, 1 is the conditional
    /// model alone (no guidance), larger values push harder toward the prompt.
    pub guidance_scale: f64,
    pub sampler: SamplerKind,
    /// Timestep spacing and offset. Its `schedule` and `prediction_type` are replaced by the
    /// UNet's own ([`crate::unet::Parameterization`]): they belong to the model. The spacing
    /// stays the caller's choice, `leading` (SD v1.5) by default even for a zero-terminal-SNR
    /// UNet, which Lin et al. would start at `trailing` (for the shipped one `inkdrop eval`
    /// scores the two alike).
    pub scheduler: SchedulerConfig,
    /// Image k starts from the noise of seed `seed + k`, so any one image can be redrawn alone.
    /// Stochastic samplers (ddpm, euler-a) draw their per-step noise from `seed` as well.
    pub seed: u64,
    /// Seed of the per-step noise of stochastic samplers [default: derived from `seed`].
    pub step_seed: Option<u64>,
    pub num_images: usize,
    /// img2img: the starting picture and how much of the way back to noise it goes (0, 1].
    pub init_image: Option<(RgbImage, f64)>,
    /// Keep the cross-attention maps of every step in the trace.
    pub record_attention: bool,
    /// Prompt-to-prompt re-weighting: (token position, scale) applied to the prompt's branch.
    pub attention_reweight: Option<(usize, f64)>,
    /// Prompt-to-prompt word swap: another run's cross-attention maps, used in the prompt's
    /// branch instead of this run's own for the first steps (see [`attention::word_swap`]).
    pub attention_injection: Option<AttentionInjection>,
}

/// Cross-attention maps recorded from another run, to be used instead of this run's own.
#[derive(Clone, Debug)]
pub struct AttentionInjection {
    /// Per step, per cross-attention layer (in call order): the prompt branch's probabilities,
    /// (num_images, heads, H*W, tokens).
    pub maps: Vec<Vec<Tensor>>,
    /// Inject during the first `steps` steps only (the layout is set early; later steps are
    /// left to the new prompt).
    pub steps: usize,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        GenerateRequest {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 30,
            guidance_scale: 7.5,
            sampler: SamplerKind::Ddim,
            scheduler: SchedulerConfig::default(),
            seed: 0,
            step_seed: None,
            num_images: 1,
            init_image: None,
            record_attention: false,
            attention_reweight: None,
            attention_injection: None,
        }
    }
}

impl GenerateRequest {
    /// Whether the loop runs both branches of classifier-free guidance (scale != 1).
    pub fn guided(&self) -> bool {
        (self.guidance_scale - 1.0).abs() > 1e-12
    }

    /// The prompt's rows of the UNet batch, (first, count): the second half when guidance
    /// batches the unconditional branch first, else all of it.
    pub fn prompt_rows(&self) -> (usize, usize) {
        let b = self.num_images;
        if self.guided() {
            (b, b)
        } else {
            (0, b)
        }
    }

    /// Refuses settings no sampler can run, naming the setting and the fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String, reason: &str| {
            Err(Error::InvalidSetting {
                what,
                reason: reason.into(),
            })
        };
        let big_t = self.scheduler.schedule.num_train_timesteps;
        if self.steps == 0 || self.steps > big_t {
            return bad(
                format!("--steps {}", self.steps),
                &format!("use between 1 and {big_t} (the training timesteps); 20-50 is usual"),
            );
        }
        if !self.guidance_scale.is_finite() || self.guidance_scale < 0.0 {
            return bad(
                format!("--guidance-scale {}", self.guidance_scale),
                "use a number >= 0: 0 ignores the prompt, 1 means no guidance, 7.5 is Stable Diffusion's default",
            );
        }
        if self.num_images == 0 || self.num_images > 64 {
            return bad(
                format!("--num-images {}", self.num_images),
                "use between 1 and 64",
            );
        }
        if let Some((_, strength)) = &self.init_image {
            if !(*strength > 0.0 && *strength <= 1.0) {
                return bad(
                    format!("--strength {strength}"),
                    "use a value in (0, 1]: 0.3 keeps most of the image, 1 redraws it from pure noise",
                );
            }
        }
        Ok(())
    }
}

/// Images and the trace of how they were made.
pub struct Generation {
    pub images: Vec<RgbImage>,
    /// The final latents x_0 (B, 4, h, w), before decoding.
    pub latents: Tensor,
    pub trace: Trace,
}

impl TextToImage {
    /// Loads the shipped models from `data/`.
    pub fn load_default() -> Result<Self> {
        Self::load(&default_unet_path())
    }

    /// The shipped CLIP and VAE with the UNet at `unet_path`.
    pub fn load(unet_path: &Path) -> Result<Self> {
        Ok(TextToImage {
            clip: ClipBundle::load(&default_clip_path(), &default_tokenizer_path())?,
            vae: VaeBundle::load(&default_vae_path())?,
            unet: UNetBundle::load(unet_path)?,
        })
    }

    /// The four models in `dir`, as `inkdrop train all --data-dir DIR` writes them
    /// ([`ModelFiles::in_dir`]).
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let files = ModelFiles::in_dir(dir);
        for path in files.all() {
            if !path.exists() {
                return Err(Error::Weights {
                    path: path.clone(),
                    reason: format!(
                        "not found: {} should hold the four files `inkdrop train all --data-dir {}` writes",
                        dir.display(),
                        dir.display()
                    ),
                });
            }
        }
        Ok(TextToImage {
            clip: ClipBundle::load(&files.clip, &files.tokenizer)?,
            vae: VaeBundle::load(&files.vae)?,
            unet: UNetBundle::load(&files.unet)?,
        })
    }

    /// The text encoder's hidden states the UNet cross-attends to, (B, 16, 128): CLIP's text
    /// tower, or the UNet's own fine-tuned copy when its file carries one.
    pub fn encoder_hidden_states(&self, texts: &[String]) -> Result<Tensor> {
        self.unet.encoder_hidden_states(&self.clip, texts)
    }

    /// The scheduler config that matches the UNet (its prediction type and training schedule)
    /// with Stable Diffusion v1.5's other defaults.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        let param = self.unet.parameterization;
        SchedulerConfig {
            schedule: param.schedule(),
            prediction_type: param.prediction_type,
            ..SchedulerConfig::default()
        }
    }

    /// The latent shape of one image, (4, h, w).
    pub fn latent_shape(&self) -> [usize; 3] {
        let c = &self.unet.unet.config;
        [c.in_channels, c.sample_size, c.sample_size]
    }

    /// Runs the pipeline. Same request, same bytes.
    pub fn generate(&self, req: &GenerateRequest) -> Result<Generation> {
        self.generate_with(req, &mut |_, _| {})
    }

    /// [`Self::generate`], calling `on_step(step, total)` with each denoising step as soon as it
    /// is done (for progress bars, or to start work on it while the next step runs).
    pub fn generate_with(
        &self,
        req: &GenerateRequest,
        on_step: &mut dyn FnMut(&TraceStep, usize),
    ) -> Result<Generation> {
        req.validate()?;
        let dev = Device::Cpu;
        let b = req.num_images;
        let started = Instant::now();
        // 1. Text: the prompt and the negative prompt, each as the text encoder's hidden states.
        let texts: Vec<String> = std::iter::repeat_n(req.negative_prompt.clone(), b)
            .chain(std::iter::repeat_n(req.prompt.clone(), b))
            .collect();
        let context = self.encoder_hidden_states(&texts)?; // (2B, 16, 128): uncond then cond
        let text_seconds = started.elapsed().as_secs_f64();
        // 2. The scheduler and the starting latents.
        // What the UNet outputs and the schedule it learned are the model's, not the request's.
        let param = self.unet.parameterization;
        let config = SchedulerConfig {
            schedule: param.schedule(),
            prediction_type: param.prediction_type,
            ..req.scheduler
        };
        let mut scheduler = req.sampler.build(config, req.steps)?;
        let mut timesteps = scheduler.timesteps().to_vec();
        let [c, h, w] = self.latent_shape();
        let noise = (0..b)
            .map(|k| {
                let mut rng = crate::support::seeded_rng(req.seed.wrapping_add(k as u64));
                randn_tensor(&[1, c, h, w], &mut rng, &dev)
            })
            .collect::<Result<Vec<_>>>()?;
        let noise = Tensor::cat(&noise, 0)?; // (B, 4, h, w)
        let mut x = match &req.init_image {
            None => (&noise * scheduler.init_noise_sigma())?,
            Some((image, strength)) => {
                // img2img: skip the first (1 - strength) of the steps; noise the encoded image
                // to the first timestep that is left.
                let (image, _) =
                    crate::clip::bundle::fit_image(image, self.vae.vae.config.sample_size as u32);
                let x0 = crate::vae::io::encode_image(&self.vae.vae, &image)?.detach(); // (1, 4, h, w)
                let x0 = x0.repeat((b, 1, 1, 1))?;
                let kept = ((req.steps as f64 * strength) as usize).clamp(1, req.steps);
                timesteps = timesteps[req.steps - kept..].to_vec();
                scheduler.add_noise(&x0, &noise, timesteps[0])?
            }
        };
        let mut step_rng =
            crate::support::seeded_rng(req.step_seed.unwrap_or(req.seed ^ 0x5EED_57E9));
        let guided = req.guided();
        let mut steps = Vec::with_capacity(timesteps.len());
        // 3. The denoising loop.
        for (i, &t) in timesteps.iter().enumerate() {
            let step_started = Instant::now();
            let rows = req.prompt_rows();
            let inject = match &req.attention_injection {
                Some(inj) if i < inj.steps => {
                    let maps = inj.maps.get(i).ok_or_else(|| Error::InvalidSetting {
                        what: "attention injection".into(),
                        reason: format!(
                            "maps for {} steps were recorded but step {} was asked for; record with the same --steps",
                            inj.maps.len(),
                            i + 1
                        ),
                    })?;
                    Some(Injection::new(maps.clone(), rows))
                }
                _ => None,
            };
            let recorder = match (req.record_attention, req.attention_reweight, inject) {
                (false, None, None) => None,
                (record, rw, inject) => Some(AttentionRecorder {
                    record,
                    reweight: rw.map(|(token, scale)| Reweight { token, scale, rows }),
                    inject,
                    ..AttentionRecorder::default()
                }),
            };
            let input = scheduler.scale_model_input(&x, t)?;
            let (eps_uncond, eps_cond) = if guided {
                // Both branches in one batch: (2B, 4, h, w).
                let tt = Tensor::from_vec(vec![t as f32; 2 * b], 2 * b, &dev)?;
                let out = self
                    .unet
                    .unet
                    .forward(
                        &Tensor::cat(&[&input, &input], 0)?,
                        &tt,
                        &context,
                        recorder.as_ref(),
                    )?
                    .detach();
                (Some(out.narrow(0, 0, b)?), out.narrow(0, b, b)?)
            } else {
                let tt = Tensor::from_vec(vec![t as f32; b], b, &dev)?;
                let cond = context.narrow(0, b, b)?;
                let out = self
                    .unet
                    .unet
                    .forward(&input, &tt, &cond, recorder.as_ref())?;
                (None, out.detach())
            };
            // ANCHOR: guidance
            // eps = eps_uncond + s (eps_cond - eps_uncond)
            let eps = match &eps_uncond {
                Some(u) => (u + ((&eps_cond - u)? * req.guidance_scale)?)?,
                None => eps_cond.clone(),
            };
            // ANCHOR_END: guidance
            let out = scheduler.step(&eps, t, &x, &mut step_rng)?;
            // The trace keeps noise estimates: a v model's outputs become
            // eps = sqrt(ab) v + sqrt(1 - ab) x_t (linear, so guidance commutes with it).
            let ab = scheduler.alpha_bar(t);
            let as_eps = |o: &Tensor| predict_eps(param.prediction_type, o, &input, ab);
            let (eps_uncond, eps_cond, eps) = (
                eps_uncond.as_ref().map(as_eps).transpose()?,
                as_eps(&eps_cond)?,
                as_eps(&eps)?,
            );
            steps.push(TraceStep {
                index: i,
                t,
                alpha_bar: scheduler.alpha_bar(t),
                sigma: scheduler.sigma(t),
                latents: input,
                eps_uncond,
                eps_cond,
                eps,
                pred_x0: out.pred_original_sample.detach(),
                seconds: step_started.elapsed().as_secs_f64(),
                attention: recorder.map(|r| r.take()).unwrap_or_default(),
            });
            x = out.prev_sample.detach();
            if let Some(last) = steps.last() {
                on_step(last, timesteps.len());
            }
        }
        // 4. Back to pixels.
        let decode_started = Instant::now();
        let images = crate::vae::io::decode_latents(&self.vae.vae, &x)?;
        let trace = Trace {
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt.clone(),
            sampler: req.sampler,
            guidance_scale: req.guidance_scale,
            seed: req.seed,
            text_seconds,
            decode_seconds: decode_started.elapsed().as_secs_f64(),
            total_seconds: started.elapsed().as_secs_f64(),
            steps,
        };
        Ok(Generation {
            images,
            latents: x,
            trace,
        })
    }

    /// Decodes latents (B, 4, h, w) to images (for x_t and predicted x0 along a trace).
    pub fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        crate::vae::io::decode_latents(&self.vae.vae, latents)
    }
}
