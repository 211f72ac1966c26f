//! Benchmark of the VAE (`AutoencoderKL`, the shipped config): encoding a picture, decoding a
//! latent (what sampling pays once per picture), and a whole training step as `inkdrop train vae`
//! runs it (encode, sample z, decode, reconstruction MSE + KL, backward, gradient clipping,
//! AdamW). The VAE is the second-longest stage of `inkdrop train all` (which trains it at batch
//! 16). Prints medians.
//!
//! ```text
//! cargo run --release --example bench_vae
//! cargo run --release --example bench_vae -- --reps 21 --batch-size 32
//! ```
//!
//! `benches/torch_unet.py` times diffusers' `AutoencoderKL` of the same config beside it.

use inkdrop::support::bench::median_ms;

use candle_core::Device;
use candle_nn::VarMap;
use clap::Parser;
use inkdrop::support::table::Table;
use inkdrop::train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use inkdrop::vae::{AutoencoderKL, VaeConfig};

/// Benchmark VAE encoding, decoding and training steps.
#[derive(Debug, Parser)]
struct Args {
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Images per training step (`inkdrop train vae`'s default).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Print JSON rows (config, what, batch, median_ms) instead of a table; what
    /// `benches/torch_unet.py` reads to put PyTorch's numbers beside ours.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    inkdrop::support::run_main(|| run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let cfg = VaeConfig::tiny();
    let vm = VarMap::new();
    let vae = AutoencoderKL::new(&cfg, inkdrop::weights::seeded_var_builder(&vm, 0, &dev))?;
    let vars = inkdrop::weights::sorted_vars(&vm);
    let params: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let plain: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(vars, AdamWConfig::default())?;
    let mut rng = inkdrop::support::seeded_rng(0);
    let s = cfg.sample_size;
    let one = inkdrop::noising::randn_tensor(&[1, 3, s, s], &mut rng, &dev)?;
    let latent_dims = [1, cfg.latent_channels, cfg.latent_size(), cfg.latent_size()];
    let z = inkdrop::noising::randn_tensor(&latent_dims, &mut rng, &dev)?;
    let n = args.batch_size;
    let x = inkdrop::noising::randn_tensor(&[n, 3, s, s], &mut rng, &dev)?;
    let eps_dims = [n, cfg.latent_channels, cfg.latent_size(), cfg.latent_size()];
    let eps = inkdrop::noising::randn_tensor(&eps_dims, &mut rng, &dev)?;

    let encode = median_ms(args.reps, || vae.encode(&one).map(drop))?;
    let decode = median_ms(args.reps, || vae.decode(&z).map(drop))?;
    let step = median_ms(args.reps, || {
        let dist = vae.encode(&x)?;
        let recon = vae.decode(&dist.sample(&eps)?)?;
        let mse = (&recon - &x)?.sqr()?.mean_all()?;
        let loss = (mse + (dist.kl()?.mean_all()? * 1e-6)?)?;
        let mut g = loss.backward()?;
        clip_grad_norm(&mut g, &plain, 1.0)?;
        opt.update(&g, 1e-4)?;
        anyhow::Ok(())
    })?;

    let mut table = Table::new([
        "VAE",
        "parameters",
        "what",
        "batch",
        "median ms",
        "images / s",
    ]);
    let mut rows = Vec::new();
    for (what, batch, ms) in [
        ("encode", 1, encode),
        ("decode", 1, decode),
        ("training step (+ AdamW)", n, step),
    ] {
        rows.push(serde_json::json!({
            "config": "vae", "what": what, "batch": batch, "median_ms": ms
        }));
        table.row([
            format!(
                "shipped ({s}x{s} -> {}x{})",
                cfg.latent_size(),
                cfg.latent_size()
            ),
            params.to_string(),
            what.to_string(),
            batch.to_string(),
            format!("{ms:.1}"),
            format!("{:.0}", batch as f64 / ms * 1e3),
        ]);
    }
    if args.json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        println!("{table}");
    }
    Ok(())
}
