//! Benchmark of the UNet: forward (sampling), forward + backward, and a whole training step
//! (forward, backward, gradient clipping, AdamW), for the CPU-kernels issue's reference config
//! (diffusers' numbers for it on this machine: 14.7 ms, 41.2 ms at batch 2, 261 ms per step at
//! batch 32) and for the shipped config. Prints medians.
//!
//! ```text
//! cargo run --release --example bench_unet
//! cargo run --release --example bench_unet -- --reps 21
//! ```

use inkdrop::support::bench::median_ms;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use clap::Parser;
use inkdrop::support::table::Table;
use inkdrop::train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use inkdrop::unet::{UNet2DConditionModel, UNetConfig};

/// Benchmark UNet forward, backward and training steps.
#[derive(Debug, Parser)]
struct Args {
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Only this config (for profiling one of them).
    #[arg(long, value_parser = ["reference", "shipped"])]
    only: Option<String>,
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
    let reference = UNetConfig {
        sample_size: 16,
        block_out_channels: vec![32, 64],
        cross_attention: vec![true, true],
        cross_attention_dim: 64,
        attention_heads: 8,
        norm_num_groups: 32,
        ..UNetConfig::tiny()
    };
    let mut table = Table::new([
        "config",
        "parameters",
        "what",
        "batch",
        "median ms",
        "samples / s",
    ]);
    let mut rows = Vec::new();
    for (key, name, cfg, step_batch) in [
        (
            "reference",
            "diffusers reference (16x16, 32/64)",
            reference,
            32,
        ),
        ("shipped", "shipped (8x8, 64/128)", UNetConfig::tiny(), 64),
    ] {
        if args.only.as_deref().is_some_and(|o| o != key) {
            continue;
        }
        let vm = VarMap::new();
        let unet =
            UNet2DConditionModel::new(&cfg, inkdrop::weights::seeded_var_builder(&vm, 0, &dev))?;
        let vars = inkdrop::weights::sorted_vars(&vm);
        let params: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
        let plain: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
        let mut opt = AdamW::new(vars, AdamWConfig::default())?;
        let mut rng = inkdrop::support::seeded_rng(0);
        let mut inputs = |b: usize| -> anyhow::Result<(Tensor, Tensor, Tensor, Tensor)> {
            let s = cfg.sample_size;
            let x = inkdrop::noising::randn_tensor(&[b, 4, s, s], &mut rng, &dev)?;
            let t = Tensor::from_vec(
                (0..b).map(|i| (i * 37 % 1000) as f32).collect::<Vec<_>>(),
                b,
                &dev,
            )?;
            let ctx =
                inkdrop::noising::randn_tensor(&[b, 16, cfg.cross_attention_dim], &mut rng, &dev)?;
            let target = inkdrop::noising::randn_tensor(&[b, 4, s, s], &mut rng, &dev)?;
            Ok((x, t, ctx, target))
        };
        let (x, t, ctx, target) = inputs(2)?;
        let fwd = median_ms(args.reps, || {
            unet.forward(&x, &t, &ctx, None)?;
            anyhow::Ok(())
        })?;
        let both = median_ms(args.reps, || {
            let loss = (unet.forward(&x, &t, &ctx, None)? - &target)?
                .sqr()?
                .mean_all()?;
            loss.backward()?;
            anyhow::Ok(())
        })?;
        let (xb, tb, cb, yb) = inputs(step_batch)?;
        let step = median_ms(args.reps, || {
            let loss = (unet.forward(&xb, &tb, &cb, None)? - &yb)?
                .sqr()?
                .mean_all()?;
            let mut g = loss.backward()?;
            clip_grad_norm(&mut g, &plain, 1.0)?;
            opt.update(&g, 1e-4)?;
            anyhow::Ok(())
        })?;
        for (what, batch, ms) in [
            ("forward", 2, fwd),
            ("forward + backward", 2, both),
            ("training step (+ AdamW)", step_batch, step),
        ] {
            rows.push(serde_json::json!({
                "config": key, "what": what, "batch": batch, "median_ms": ms
            }));
            table.row([
                name.to_string(),
                params.to_string(),
                what.to_string(),
                batch.to_string(),
                format!("{ms:.1}"),
                format!("{:.0}", batch as f64 / ms * 1e3),
            ]);
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        println!("{table}");
    }
    Ok(())
}
