//! inkdrop: how Stable Diffusion turns a sentence into a picture, as a small latent diffusion
//! pipeline you can run, inspect and retrain on a laptop CPU.
//!
//! Modules so far (see `ARCHITECTURE.md` for the whole map):
//! - [`schedule`]: beta schedules, alpha_bar, SNR, sigmas (diffusers' `DDPMScheduler` tables).
//! - [`noising`]: the forward process, closed form and one Markov step at a time.
//! - [`shapes`]: Shapes World, the procedural captioned data set.
//! - [`text`]: the CLIP-style tokenizer.
//! - [`support`]: images, grids, plots, terminal previews, seeding and output folders.

pub mod clip;
pub mod error;
pub mod explore;
pub mod nn;
pub mod noising;
pub mod pipeline;
pub mod schedule;
pub mod schedulers;
pub mod shapes;
pub mod support;
pub mod text;
pub mod toy2d;
pub mod train;
pub mod unet;
pub mod vae;
pub mod weights;

pub use error::{Error, Result};
pub use schedule::{BetaSchedule, NoiseSchedule, ScheduleConfig};
