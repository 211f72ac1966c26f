//! Benchmark of text to image with the shipped models: one 32x32 picture, 30 DDIM steps with
//! classifier-free guidance (the sampling issue's bar: under 0.3 s after loading; the PyTorch +
//! diffusers reference run took 453 ms on this machine), and each sampler at 30 steps. Prints
//! medians.
//!
//! ```text
//! cargo run --release --example bench_pipeline
//! cargo run --release --example bench_pipeline -- --reps 21
//! ```

use clap::Parser;
use inkdrop::pipeline::{GenerateRequest, TextToImage};
use inkdrop::schedulers::SamplerKind;
use inkdrop::support::bench::median_ms;
use inkdrop::support::table::Table;

/// Benchmark the text-to-image pipeline.
#[derive(Debug, Parser)]
struct Args {
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 9)]
    reps: usize,
}

fn main() -> std::process::ExitCode {
    inkdrop::support::run_main(|| run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let pipe = TextToImage::load_default()?;
    let mut table = Table::new([
        "sampler",
        "steps",
        "guidance",
        "pictures",
        "median ms",
        "ms per step",
    ]);
    let mut cases = vec![
        (SamplerKind::Ddim, 7.5, 1),
        (SamplerKind::Ddim, 1.0, 1),
        (SamplerKind::Ddim, 7.5, 4),
    ];
    cases.extend(
        SamplerKind::ALL
            .iter()
            .filter(|&&k| k != SamplerKind::Ddim)
            .map(|&k| (k, 7.5, 1)),
    );
    for (sampler, guidance_scale, num_images) in cases {
        let req = GenerateRequest {
            prompt: "a red circle".into(),
            sampler,
            guidance_scale,
            num_images,
            ..GenerateRequest::default()
        };
        pipe.generate(&req)?; // warm-up
        let ms = median_ms(args.reps, || pipe.generate(&req).map(|_| ()))?;
        table.row([
            sampler.name().to_string(),
            req.steps.to_string(),
            format!("{guidance_scale}"),
            num_images.to_string(),
            format!("{ms:.0}"),
            format!("{:.1}", ms / req.steps as f64),
        ]);
    }
    println!("{table}");
    Ok(())
}
