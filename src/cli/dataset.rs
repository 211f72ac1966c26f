//! `inkdrop dataset`: write Shapes World samples as PNG files plus `captions.jsonl`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use inkdrop::shapes::{render, sample_at, Split, WorldConfig};
use inkdrop::support::files::{prepare_out_dir, write_atomic};
use inkdrop::support::image_io::save_png;

#[derive(Debug, Args)]
pub struct DatasetArgs {
    /// Number of samples to write.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub count: u64,
    /// Output folder (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed: the same seed writes the same files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image side in pixels (training uses 32; try 128 for crisp pictures).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(8..=1024))]
    pub size: u32,
    /// Include the held-out colour-shape pairs (evaluation sets); training data never has them.
    #[arg(long)]
    pub include_held_out: bool,
}

pub fn run(args: &DatasetArgs) -> anyhow::Result<()> {
    let out = prepare_out_dir(&args.out)?;
    let world = WorldConfig {
        split: if args.include_held_out {
            Split::All
        } else {
            Split::Train
        },
        ..WorldConfig::default()
    };
    let bar = ProgressBar::new(args.count).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {elapsed} (eta {eta})")
            .context("progress template")?,
    );
    let mut lines = String::new();
    for i in 0..args.count {
        let sample = sample_at(&world, args.seed, i);
        let file = format!("{i:05}.png");
        save_png(&render(&sample.scene, args.size), &out.join(&file))?;
        let mut record = serde_json::json!({ "file": file, "caption": sample.caption });
        let scene = serde_json::to_value(&sample.scene).context("serialising a scene")?;
        if let (Some(r), Some(s)) = (record.as_object_mut(), scene.as_object()) {
            r.extend(s.clone());
        }
        lines.push_str(&record.to_string());
        lines.push('\n');
        bar.inc(1);
    }
    write_atomic(&out.join("captions.jsonl"), lines.as_bytes())?;
    bar.finish_and_clear();
    println!(
        "wrote {} images ({} px) and captions.jsonl to {}",
        args.count,
        args.size,
        out.display()
    );
    Ok(())
}
