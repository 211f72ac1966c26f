//! Benchmarks of CLIP's hot paths: the fused ops against candle's composed ops (forward +
//! backward), and one whole training step of the shipped config. Prints medians.
//!
//! ```text
//! cargo run --release --example bench_clip            # default: 15 repetitions each
//! cargo run --release --example bench_clip -- --reps 40
//! ```
//!
//! Timings vary with the machine and its load; compare numbers from one run.

use inkdrop::support::bench::median_ms;

use candle_core::{Device, Var, D};
use clap::Parser;
use inkdrop::clip::bundle::tokenize;
use inkdrop::clip::{contrastive_loss, images_tensor, match_targets, Clip, ClipConfig};
use inkdrop::nn::{
    bias_add, layer_norm, layer_norm_reference, quick_gelu, quick_gelu_reference, softmax_last_dim,
};
use inkdrop::shapes::{render, sample_at, WorldConfig};
use inkdrop::support::table::Table;
use inkdrop::text::ClipTokenizer;

/// Benchmark the fused ops and a CLIP training step.
#[derive(Debug, Parser)]
struct Args {
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 15)]
    reps: usize,
    /// Batch size of the training step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
}

fn main() -> std::process::ExitCode {
    inkdrop::support::run_main(|| run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let mut rng = inkdrop::support::seeded_rng(0);
    let randn = |shape: &[usize], rng: &mut rand::rngs::StdRng| {
        inkdrop::noising::randn_tensor(shape, rng, &dev)
    };
    let scores = Var::from_tensor(&randn(&[128, 4, 17, 17], &mut rng)?)?; // attention scores
    let acts = Var::from_tensor(&randn(&[128, 17, 512], &mut rng)?)?; // MLP activations
    let x = Var::from_tensor(&randn(&[128, 17, 128], &mut rng)?)?;
    let (g, b) = (
        Var::ones(128, candle_core::DType::F32, &dev)?,
        Var::zeros(128, candle_core::DType::F32, &dev)?,
    );
    let b512 = Var::zeros(512, candle_core::DType::F32, &dev)?;
    let mut table = Table::new([
        "op (forward + backward)",
        "shape",
        "candle ms",
        "fused ms",
        "speed-up",
    ]);
    let mut row = |name: &str, shape: &str, reference: f64, fused: f64| {
        table.row([
            name.to_string(),
            shape.to_string(),
            format!("{reference:.2}"),
            format!("{fused:.2}"),
            format!("{:.1}x", reference / fused),
        ]);
    };
    let r = args.reps;
    row(
        "softmax",
        "(128, 4, 17, 17)",
        median_ms(r, || {
            candle_nn::ops::softmax(&scores, D::Minus1)?
                .sqr()?
                .sum_all()?
                .backward()
                .map(drop)
        })?,
        median_ms(r, || {
            softmax_last_dim(&scores)?
                .sqr()?
                .sum_all()?
                .backward()
                .map(drop)
        })?,
    );
    row(
        "layer norm",
        "(128, 17, 128)",
        median_ms(r, || {
            layer_norm_reference(&x, &g, &b, 1e-5)?
                .sqr()?
                .sum_all()?
                .backward()
                .map(drop)
        })?,
        median_ms(r, || {
            layer_norm(&x, &g, &b, 1e-5)?
                .sqr()?
                .sum_all()?
                .backward()
                .map(drop)
        })?,
    );
    row(
        "quick_gelu",
        "(128, 17, 512)",
        median_ms(r, || {
            quick_gelu_reference(&acts)?.sum_all()?.backward().map(drop)
        })?,
        median_ms(r, || quick_gelu(&acts)?.sum_all()?.backward().map(drop))?,
    );
    row(
        "bias add",
        "(128, 17, 512)",
        median_ms(r, || {
            acts.broadcast_add(&b512)?
                .sqr()?
                .sum_all()?
                .backward()
                .map(drop)
        })?,
        median_ms(r, || {
            bias_add(&acts, &b512)?
                .sqr()?
                .sum_all()?
                .backward()
                .map(drop)
        })?,
    );
    println!("{table}\n");

    // One training step of the shipped config.
    let world = WorldConfig::default();
    let caps: Vec<String> = (0..5000).map(|i| sample_at(&world, 0, i).caption).collect();
    let tok = ClipTokenizer::train(caps.iter().map(String::as_str), 16)?;
    let cfg = ClipConfig::tiny(tok.vocab_size(), 16);
    let vm = candle_nn::VarMap::new();
    let model = Clip::new(&cfg, inkdrop::weights::seeded_var_builder(&vm, 0, &dev))?;
    let samples: Vec<_> = (0..args.batch_size as u64)
        .map(|i| sample_at(&world, 1, i))
        .collect();
    let images: Vec<_> = samples.iter().map(|s| render(&s.scene, 32)).collect();
    let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    let pixels = images_tensor(&images, &dev)?;
    let (ids, eot) = tokenize(&tok, &captions, &dev)?;
    let targets = match_targets(&captions, &dev)?;
    let forward = || {
        contrastive_loss(
            &model.image_features(&pixels)?,
            &model.text_features(&ids, &eot)?,
            &model.scale()?,
            &targets,
            true,
        )
    };
    let fwd = median_ms(r, || forward().map(drop))?;
    let both = median_ms(r, || forward()?.loss.backward().map(drop))?;
    let mut step = Table::new(["CLIP (shipped config)", "batch", "median ms", "pairs / s"]);
    step.row([
        "forward".to_string(),
        args.batch_size.to_string(),
        format!("{fwd:.0}"),
        format!("{:.0}", args.batch_size as f64 / fwd * 1e3),
    ]);
    step.row([
        "forward + backward".to_string(),
        args.batch_size.to_string(),
        format!("{both:.0}"),
        format!("{:.0}", args.batch_size as f64 / both * 1e3),
    ]);
    println!("{step}");
    Ok(())
}
