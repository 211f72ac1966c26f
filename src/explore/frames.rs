//! Everything `inkdrop explore` shows, computed once: the pictures of every step of a trace
//! (reverse mode) or of every noise level of one image (forward mode). Scrubbing only picks
//! from these; it never runs a model. The VAE-decoded pictures of a trace ([`StepLatents`])
//! arrive after the trace itself, nearest the cursor first, so the first screen does not wait
//! for all of them.

use candle_core::Tensor;
use image::{Rgb, RgbImage};
use ndarray::Array3;

use crate::noising::{add_noise, randn};
use crate::pipeline::attention::{overlay, token_heatmaps, MapSelection};
use crate::pipeline::{TextToImage, Trace};
use crate::schedule::{BetaSchedule, NoiseSchedule};
use crate::schedulers::SamplerKind;
use crate::support::image_io::{from_chw, to_chw};
use crate::text::tokenizer::Encoding;
use crate::Result;

/// Which noise prediction the noise panel shows (Tab cycles them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoiseView {
    /// eps_uncond + s (eps_cond - eps_uncond): what the scheduler used.
    Guided,
    /// The prediction given the prompt.
    Cond,
    /// The prediction given the empty (negative) prompt.
    Uncond,
    /// eps_cond - eps_uncond: the direction guidance amplifies.
    Difference,
}

impl NoiseView {
    pub const ALL: [NoiseView; 4] = [
        NoiseView::Guided,
        NoiseView::Cond,
        NoiseView::Uncond,
        NoiseView::Difference,
    ];

    pub fn label(self) -> &'static str {
        match self {
            NoiseView::Guided => "guided ε",
            NoiseView::Cond => "ε(prompt)",
            NoiseView::Uncond => "ε(empty)",
            NoiseView::Difference => "ε(prompt) − ε(empty)",
        }
    }

    pub fn next(self) -> Self {
        let i = Self::ALL.iter().position(|&v| v == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }
}

/// The four latent channels of a (4, h, w) tensor side by side in a 2 x 2 mosaic (1-pixel
/// gaps), each value mapped through a blue-white-red scale on `[-range, range]`.
pub fn channel_mosaic(latent: &Tensor, range: f32) -> Result<RgbImage> {
    let (c, h, w) = latent.dims3()?;
    let v: Vec<f32> = latent.flatten_all()?.to_vec1()?;
    let (cols, rows) = (2u32, c.div_ceil(2) as u32);
    let (w32, h32) = (w as u32, h as u32);
    let mut img = RgbImage::from_pixel(
        cols * (w32 + 1) - 1,
        rows * (h32 + 1) - 1,
        Rgb([40, 40, 40]),
    );
    for ch in 0..c {
        let (ox, oy) = (
            (ch as u32 % cols) * (w32 + 1),
            (ch as u32 / cols) * (h32 + 1),
        );
        for y in 0..h {
            for x in 0..w {
                let value = v[ch * h * w + y * w + x] / range.max(1e-6);
                img.put_pixel(ox + x as u32, oy + y as u32, diverging(value));
            }
        }
    }
    Ok(img)
}

/// Blue (-1) through white (0) to red (+1), clamped.
pub fn diverging(v: f32) -> Rgb<u8> {
    let v = v.clamp(-1.0, 1.0);
    let fade = |c: f32| (255.0 - (255.0 - c) * v.abs()).round() as u8;
    if v < 0.0 {
        Rgb([fade(40.0), fade(90.0), fade(220.0)])
    } else {
        Rgb([fade(220.0), fade(50.0), fade(40.0)])
    }
}

/// The largest absolute value over tensors (for a shared colour scale).
fn max_abs(tensors: &[&Tensor]) -> Result<f32> {
    let mut m = 0f32;
    for t in tensors {
        m = m.max(t.abs()?.max_all()?.to_scalar::<f32>()?);
    }
    Ok(m)
}

/// The pictures of every step of one generation (the first image of the batch).
pub struct ReverseFrames {
    pub trace: Trace,
    /// The context's tokens as the tokenizer wrote them (`<|startoftext|>`, `red</w>`, ...).
    pub tokens: Vec<String>,
    /// Index of the end-of-text token (the first padding follows it).
    pub eot_index: usize,
    /// x_t decoded by the VAE, per step (`None` until decoded: [`ReverseFrames::set_pictures`]).
    pub x_t: Vec<Option<RgbImage>>,
    /// The predicted x0 decoded, per step (`None` until decoded).
    pub pred_x0: Vec<Option<RgbImage>>,
    /// The latent channels of x_t, per step.
    pub channels: Vec<RgbImage>,
    /// Per noise view (in [`NoiseView::ALL`] order): per step the 2 x 2 channel mosaic, and the
    /// colour scale's range.
    pub noise: Vec<(Vec<RgbImage>, f32)>,
    /// Per step, per token: its cross-attention map at that step laid over the predicted x0
    /// (empty until that step's predicted x0 is decoded), and the share of attention the token
    /// received.
    pub attention: Vec<Vec<RgbImage>>,
    pub attention_mass: Vec<Vec<f64>>,
    /// Per step, per token: the aggregated map (size x size, in [0, 1]) waiting for its picture.
    attention_maps: Vec<Vec<Vec<f32>>>,
    /// The final picture.
    pub image: RgbImage,
}

/// Colour scale of x_t's channels and of the noise predictions: unit-variance values mostly lie
/// within +-2.5.
pub const LATENT_RANGE: f32 = 2.5;

impl ReverseFrames {
    /// Draws every step of `trace` (which must hold attention maps) except the VAE-decoded
    /// pictures, which [`ReverseFrames::set_pictures`] adds step by step; `final_image` is the
    /// generation's result (its width is the attention maps' size), `encoding` the prompt's tokens.
    pub fn new(trace: Trace, encoding: Encoding, final_image: RgbImage) -> Result<Self> {
        let first = |t: &Tensor| t.narrow(0, 0, 1);
        let xs: Vec<Tensor> = trace
            .steps
            .iter()
            .map(|s| first(&s.latents))
            .collect::<std::result::Result<_, _>>()?;
        let channels = xs
            .iter()
            .map(|x| channel_mosaic(&x.squeeze(0)?, LATENT_RANGE))
            .collect::<Result<Vec<_>>>()?;
        let mut noise = Vec::new();
        for view in NoiseView::ALL {
            let per_step: Vec<Option<Tensor>> = trace
                .steps
                .iter()
                .map(|s| {
                    Ok(match view {
                        NoiseView::Guided => Some(first(&s.eps)?),
                        NoiseView::Cond => Some(first(&s.eps_cond)?),
                        NoiseView::Uncond => s.eps_uncond.as_ref().map(first).transpose()?,
                        NoiseView::Difference => match &s.eps_uncond {
                            Some(u) => Some((first(&s.eps_cond)? - first(u)?)?),
                            None => None,
                        },
                    })
                })
                .collect::<Result<_>>()?;
            let range = match view {
                NoiseView::Difference => {
                    max_abs(&per_step.iter().flatten().collect::<Vec<_>>())?.max(1e-3)
                }
                _ => LATENT_RANGE,
            };
            let images = per_step
                .iter()
                .map(|t| match t {
                    Some(t) => channel_mosaic(&t.squeeze(0)?, range),
                    None => Ok(blank_like(&channels[0])),
                })
                .collect::<Result<Vec<_>>>()?;
            noise.push((images, range));
        }
        let size = final_image.width() as usize;
        let n = trace.steps.len();
        let mut attention_maps = Vec::with_capacity(n);
        let mut attention_mass = Vec::with_capacity(n);
        for i in 0..n {
            let sel = MapSelection {
                steps: Some((i, i)),
                ..MapSelection::default()
            };
            match token_heatmaps(&trace, 0, 1, &sel, size) {
                Ok(maps) => {
                    attention_maps.push(maps.maps);
                    attention_mass.push(maps.mass);
                }
                Err(_) => {
                    attention_maps.push(Vec::new());
                    attention_mass.push(Vec::new());
                }
            }
        }
        Ok(Self {
            trace,
            tokens: encoding.tokens,
            eot_index: encoding.eot_index,
            x_t: vec![None; n],
            pred_x0: vec![None; n],
            channels,
            noise,
            attention: vec![Vec::new(); n],
            attention_mass,
            attention_maps,
            image: final_image,
        })
    }

    /// Step `i`'s decoded x_t and predicted x0 arrived: keep them and lay the step's attention
    /// maps over the predicted x0. An index past the end is ignored.
    pub fn set_pictures(&mut self, i: usize, x_t: RgbImage, pred_x0: RgbImage) {
        if i >= self.len() {
            return;
        }
        let size = self.image.width() as usize;
        self.attention[i] = self.attention_maps[i]
            .iter()
            .map(|m| overlay(&pred_x0, m, size, 1))
            .collect();
        self.x_t[i] = Some(x_t);
        self.pred_x0[i] = Some(pred_x0);
    }

    /// How many steps have their pictures.
    pub fn pictures_done(&self) -> usize {
        self.x_t.iter().filter(|p| p.is_some()).count()
    }

    /// Decodes every step's pictures now, on this thread (tests, benchmarks, writing PNGs).
    pub fn decode_all(&mut self, pipe: &TextToImage) -> Result<()> {
        let latents = StepLatents::of(&self.trace)?;
        for i in 0..self.len() {
            if self.x_t[i].is_none() {
                let (x_t, x0) = latents.decode(pipe, i)?;
                self.set_pictures(i, x_t, x0);
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.trace.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trace.steps.is_empty()
    }

    /// A token as a reader would write it: `red`, `<start>`, `<end>`, `<pad>`.
    pub fn token_label(&self, i: usize) -> String {
        match self.tokens.get(i).map(String::as_str) {
            Some("<|startoftext|>") => "<start>".into(),
            Some("<|endoftext|>") if i == self.eot_index => "<end>".into(),
            Some("<|endoftext|>") => "<pad>".into(),
            Some(t) => t.trim_end_matches("</w>").to_string(),
            None => String::new(),
        }
    }
}

/// What the pictures of a trace are decoded from: per step, x_t and the predicted x0 of the
/// first image, (2, 4, h, w). Cheap to clone out of the trace (tensors share their storage), so
/// the worker thread decodes while the UI thread holds the trace.
#[derive(Clone)]
pub struct StepLatents {
    pairs: Vec<Tensor>,
}

impl StepLatents {
    pub fn of(trace: &Trace) -> Result<Self> {
        let pairs = trace
            .steps
            .iter()
            .map(|s| {
                Tensor::cat(&[s.latents.narrow(0, 0, 1)?, s.pred_x0.narrow(0, 0, 1)?], 0)
                // (2, 4, h, w)
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self { pairs })
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Step `i` through the VAE decoder: (x_t, predicted x0) as pictures.
    pub fn decode(&self, pipe: &TextToImage, i: usize) -> Result<(RgbImage, RgbImage)> {
        let pair = self
            .pairs
            .get(i)
            .ok_or_else(|| crate::Error::InvalidSetting {
                what: format!("step {i}"),
                reason: format!("the trace has {} steps", self.pairs.len()),
            })?;
        let mut images = pipe.decode(pair)?.into_iter();
        match (images.next(), images.next()) {
            (Some(x_t), Some(x0)) => Ok((x_t, x0)),
            _ => Err(crate::Error::InvalidSetting {
                what: format!("step {i}'s pictures"),
                reason: "the VAE decoder returned fewer than two".into(),
            }),
        }
    }

    /// The step not yet in `done` nearest to `cursor` (ties: the later step), if any.
    pub fn nearest_missing(done: &[bool], cursor: usize) -> Option<usize> {
        (0..done.len())
            .filter(|&i| !done[i])
            .min_by_key(|&i| (i.abs_diff(cursor), std::cmp::Reverse(i)))
    }
}

fn blank_like(img: &RgbImage) -> RgbImage {
    RgbImage::from_pixel(img.width(), img.height(), Rgb([40, 40, 40]))
}

/// Forward mode: one clean picture, one fixed draw of noise, and the schedule that mixes them.
pub struct ForwardFrames {
    pub x0: RgbImage,
    /// (3, H, W) in [-1, 1].
    x0_array: Array3<f32>,
    /// eps ~ N(0, I), (3, H, W), drawn once so scrubbing shows one trajectory.
    eps: Array3<f32>,
    pub schedule_kind: BetaSchedule,
    pub schedule: NoiseSchedule,
}

impl ForwardFrames {
    pub fn new(x0: RgbImage, schedule_kind: BetaSchedule, seed: u64) -> Self {
        let x0_array = to_chw(&x0);
        let mut rng = crate::support::seeded_rng(seed);
        let eps = randn(x0_array.raw_dim(), &mut rng);
        Self {
            x0,
            x0_array,
            eps,
            schedule_kind,
            schedule: NoiseSchedule::for_schedule(schedule_kind),
        }
    }

    pub fn num_timesteps(&self) -> usize {
        self.schedule.num_train_timesteps()
    }

    /// Switches to another beta schedule (same picture, same noise).
    pub fn set_schedule(&mut self, kind: BetaSchedule) {
        self.schedule_kind = kind;
        self.schedule = NoiseSchedule::for_schedule(kind);
    }

    /// x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, as a picture.
    pub fn x_t(&self, t: usize) -> Result<RgbImage> {
        let x_t = add_noise(&self.schedule, &self.x0_array, &self.eps, t)?;
        from_chw(&x_t)
    }

    /// The noise that is mixed in, sqrt(1 - alpha_bar_t) eps, on the same scale as the
    /// picture (0 is mid-grey).
    pub fn noise_added(&self, t: usize) -> Result<RgbImage> {
        let w = self.schedule.sqrt_one_minus_alpha_bar(t) as f32;
        from_chw(&self.eps.mapv(|e| e * w))
    }
}

/// Every beta schedule, for cycling with `b`.
pub fn next_schedule(kind: BetaSchedule) -> BetaSchedule {
    let all = BetaSchedule::ALL;
    let i = all.iter().position(|&k| k == kind).unwrap_or(0);
    all[(i + 1) % all.len()]
}

/// The sampler after `kind`, for cycling with `s`.
pub fn next_sampler(kind: SamplerKind) -> SamplerKind {
    let all = SamplerKind::ALL;
    let i = all.iter().position(|&k| k == kind).unwrap_or(0);
    all[(i + 1) % all.len()]
}
