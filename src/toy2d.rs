//! Diffusion on 2-D points: the whole idea at a size where every step can be drawn and training
//! takes seconds. The data is a spiral of points; the denoiser is a small MLP that sees a noisy
//! point and the timestep and predicts the noise, exactly like the UNet does for latents.

use candle_core::{Device, Module, Tensor, Var};
use candle_nn::VarMap;
use rand::Rng;
use rand_distr::StandardNormal;

use crate::nn::{linear, Linear};
use crate::noising::{add_noise_tensor, randn_tensor};
use crate::schedule::NoiseSchedule;
use crate::train::optim::{lr_at, AdamW, AdamWConfig};
use crate::unet::embeddings::timestep_embedding;
use crate::unet::sample::{ddpm_step, strided_timesteps};
use crate::{weights, Result};

/// `n` points on a two-turn spiral, `r = 2 * theta / (4 pi)`, with a little Gaussian jitter.
pub fn spiral(n: usize, rng: &mut impl Rng) -> Vec<[f32; 2]> {
    (0..n)
        .map(|_| {
            let u: f32 = rng.random();
            let theta = 4.0 * std::f32::consts::PI * u.sqrt();
            let r = 2.0 * theta / (4.0 * std::f32::consts::PI);
            let jx: f32 = rng.sample(StandardNormal);
            let jy: f32 = rng.sample(StandardNormal);
            [r * theta.cos() + 0.04 * jx, r * theta.sin() + 0.04 * jy]
        })
        .collect()
}

/// Points (N, 2) as a tensor.
pub fn points_tensor(points: &[[f32; 2]]) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        points.iter().flatten().copied().collect::<Vec<_>>(),
        (points.len(), 2),
        &Device::Cpu,
    )?)
}

/// A tensor (N, 2) as points.
pub fn tensor_points(t: &Tensor) -> Result<Vec<[f32; 2]>> {
    Ok(t.to_vec2::<f32>()?
        .into_iter()
        .map(|r| [r[0], r[1]])
        .collect())
}

/// Width of the timestep code fed to the MLP.
const T_DIM: usize = 32;

/// `eps_hat = MLP([x_t, emb(t)])`: three hidden layers of 256 with SiLU.
pub struct ToyDenoiser {
    layers: Vec<Linear>,
}

impl ToyDenoiser {
    pub fn new(vb: candle_nn::VarBuilder) -> Result<Self> {
        let dims = [2 + T_DIM, 256, 256, 256, 2];
        let layers = (0..4)
            .map(|i| linear(dims[i], dims[i + 1], vb.pp(format!("layers.{i}"))))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers })
    }

    /// x_t (B, 2), t (B,) -> eps_hat (B, 2)
    pub fn forward(&self, x_t: &Tensor, t: &Tensor) -> Result<Tensor> {
        let mut h = Tensor::cat(&[x_t, &timestep_embedding(t, T_DIM, 0.0)?], 1)?; // (B, 34)
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = candle_nn::ops::silu(&h)?;
            }
        }
        Ok(h)
    }
}

/// Trains a [`ToyDenoiser`] on `data` for `steps` steps of `batch` points (AdamW, lr 3e-3 with
/// warmup and cosine decay): the same six steps as the UNet. Returns the model, its variables
/// and the loss of every step.
pub fn train_toy(
    data: &[[f32; 2]],
    schedule: &NoiseSchedule,
    steps: usize,
    batch: usize,
    seed: u64,
) -> Result<(ToyDenoiser, VarMap, Vec<f64>)> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model = ToyDenoiser::new(weights::seeded_var_builder(&varmap, seed, &dev))?;
    let vars = weights::sorted_vars(&varmap);
    let mut opt = AdamW::new(
        vars,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?;
    let all = points_tensor(data)?;
    let mut rng = crate::support::seeded_rng(seed);
    let mut losses = Vec::with_capacity(steps);
    for step in 0..steps {
        let idx: Vec<u32> = (0..batch)
            .map(|_| rng.random_range(0..data.len()) as u32)
            .collect();
        let x0 = all.index_select(&Tensor::new(idx.as_slice(), &dev)?, 0)?; // (B, 2)
        let ts: Vec<usize> = (0..batch)
            .map(|_| rng.random_range(0..schedule.num_train_timesteps()))
            .collect();
        let eps = randn_tensor(&[batch, 2], &mut rng, &dev)?;
        let x_t = add_noise_tensor(schedule, &x0, &eps, &ts)?;
        let t = Tensor::from_vec(
            ts.iter().map(|&t| t as f32).collect::<Vec<_>>(),
            batch,
            &dev,
        )?;
        let loss = (model.forward(&x_t, &t)? - &eps)?.sqr()?.mean_all()?;
        opt.update(&loss.backward()?, lr_at(step, steps, steps / 20 + 1, 3e-3))?;
        losses.push(f64::from(loss.to_scalar::<f32>()?));
    }
    Ok((model, varmap, losses))
}

/// Runs the reverse process from N(0, I) for `n` points with `steps` strided DDPM steps and
/// returns every point's trajectory, from x_T to x_0.
pub fn sample_toy(
    model: &ToyDenoiser,
    schedule: &NoiseSchedule,
    n: usize,
    steps: usize,
    seed: u64,
) -> Result<Vec<Vec<[f32; 2]>>> {
    let dev = Device::Cpu;
    let mut rng = crate::support::seeded_rng(seed);
    let mut x = randn_tensor(&[n, 2], &mut rng, &dev)?;
    let mut paths: Vec<Vec<[f32; 2]>> = tensor_points(&x)?.into_iter().map(|p| vec![p]).collect();
    let ts = strided_timesteps(schedule.num_train_timesteps(), steps);
    for (i, &t) in ts.iter().enumerate() {
        let eps = model.forward(&x, &Tensor::from_vec(vec![t as f32; n], n, &dev)?)?;
        let ab_prev = ts.get(i + 1).map_or(1.0, |&p| schedule.alpha_bar(p));
        let z = if i + 1 < ts.len() {
            Some(randn_tensor(&[n, 2], &mut rng, &dev)?)
        } else {
            None
        };
        x = ddpm_step(
            &x,
            &eps.detach(),
            schedule.alpha_bar(t),
            ab_prev,
            z.as_ref(),
        )?
        .detach();
        for (path, p) in paths.iter_mut().zip(tensor_points(&x)?) {
            path.push(p);
        }
    }
    Ok(paths)
}

/// What the model believes about every point of a `grid` x `grid` lattice over
/// [-extent, extent]^2 at timestep t: the step from x to its estimate of the clean point,
/// `x0_hat - x` with `x0_hat = (x - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t)`.
pub fn vector_field(
    model: &ToyDenoiser,
    schedule: &NoiseSchedule,
    t: usize,
    grid: usize,
    extent: f32,
) -> Result<Vec<([f32; 2], [f32; 2])>> {
    let pts: Vec<[f32; 2]> = (0..grid * grid)
        .map(|i| {
            let (gx, gy) = ((i % grid) as f32, (i / grid) as f32);
            let step = 2.0 * extent / (grid - 1) as f32;
            [-extent + gx * step, -extent + gy * step]
        })
        .collect();
    let x = points_tensor(&pts)?;
    let eps = model.forward(
        &x,
        &Tensor::from_vec(vec![t as f32; pts.len()], pts.len(), &Device::Cpu)?,
    )?;
    let ab = schedule.alpha_bar(t);
    let x0_hat = ((&x - (eps * (1.0 - ab).sqrt())?)? / ab.sqrt())?;
    Ok(pts
        .into_iter()
        .zip(tensor_points(&x0_hat)?)
        .map(|(p, q)| (p, [q[0] - p[0], q[1] - p[1]]))
        .collect())
}

/// Number of trainable numbers in a VarMap.
pub fn parameter_count(varmap: &VarMap) -> usize {
    weights::sorted_vars(varmap)
        .iter()
        .map(|(_, v): &(String, Var)| v.elem_count())
        .sum()
}
