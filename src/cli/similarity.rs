//! `inkdrop similarity`: how well each text describes an image, according to the trained CLIP.

use std::path::PathBuf;

use clap::Args;
use inkdrop::clip::bundle::{default_clip_path, default_tokenizer_path, fit_image, ClipBundle};
use inkdrop::support::image_io::load_image;
use inkdrop::support::table::Table;

#[derive(Debug, Args)]
pub struct SimilarityArgs {
    /// The image (PNG or JPEG; resized to the model's 32x32 if needed).
    #[arg(long)]
    pub image: PathBuf,
    /// A candidate description; repeat for several.
    #[arg(long = "text", required = true)]
    pub texts: Vec<String>,
    /// Print JSON: {"texts": [...], "cosine": [...], "probs": [...]}.
    #[arg(long)]
    pub json: bool,
    /// CLIP weights [default: data/clip.safetensors].
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Tokenizer [default: data/tokenizer.json].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

pub fn run(args: &SimilarityArgs) -> anyhow::Result<()> {
    if let Some(i) = args.texts.iter().position(|t| t.trim().is_empty()) {
        anyhow::bail!(
            "--text number {} is empty: describe the image in words, e.g. --text \"a red circle\"",
            i + 1
        );
    }
    let bundle = ClipBundle::load(
        &args.weights.clone().unwrap_or_else(default_clip_path),
        &args
            .tokenizer
            .clone()
            .unwrap_or_else(default_tokenizer_path),
    )?;
    let img = load_image(&args.image)?;
    let size = bundle.model.config.image_size as u32;
    let (w, h) = img.dimensions();
    let (img, resized) = fit_image(&img, size);
    if resized {
        eprintln!(
            "note: {} ({w}x{h}) was cropped to a square and resized to {size}x{size}, the \
             model's input size",
            args.image.display()
        );
        // A grid of pictures (`generate --num-images 4`) would be scored on its middle, a
        // mix of tiles and labels: say so rather than print a meaningless number silently.
        if w.max(h) > 4 * size {
            eprintln!(
                "note: the score is for the whole file as one picture; for a grid of several \
                 pictures, give one picture per file (`inkdrop generate --num-images 1`)"
            );
        }
    }
    let text = bundle.embed_texts(&args.texts)?; // (N, E)
    let image = bundle.embed_images(&[img])?; // (1, E)
    let cosine: Vec<f32> = image.matmul(&text.t()?)?.squeeze(0)?.to_vec1()?;
    let scale = bundle.model.scale()?.to_scalar::<f32>()?;
    let logits: Vec<f32> = cosine.iter().map(|c| c * scale).collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let z: f32 = exp.iter().sum();
    let probs: Vec<f32> = exp.iter().map(|e| e / z).collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "texts": args.texts, "cosine": cosine, "probs": probs })
        );
        return Ok(());
    }
    let mut table = Table::new(["text", "cosine", "probability"]);
    for ((t, c), p) in args.texts.iter().zip(&cosine).zip(&probs) {
        table.row([
            format!("{t:?}"),
            format!("{c:+.3}"),
            format!("{:.1}%", 100.0 * p),
        ]);
    }
    println!("{table}\n\nprobability = softmax over these texts of {scale:.1} x cosine (CLIP's learned temperature)");
    Ok(())
}
