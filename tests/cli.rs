//! The binaries as a user runs them: `inkdrop schedule`, `--example forward_noise` and chapter 1,
//! including every bad input the foundation issue lists (one clear line, non-zero exit, no panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn inkdrop() -> Command {
    Command::new(env!("CARGO_BIN_EXE_inkdrop"))
}

/// `cargo test` builds the examples next to the binaries, in `<profile>/examples/`.
fn forward_noise() -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_inkdrop"));
    let example: PathBuf = bin.with_file_name("examples").join("forward_noise");
    assert!(
        example.exists(),
        "{} missing: run the tests with `cargo test --release`",
        example.display()
    );
    Command::new(example)
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out, stdout, stderr)
}

/// A bad input: non-zero exit, one `error:` line on stderr mentioning `needle`, no panic.
fn assert_clear_error(cmd: &mut Command, needle: &str) {
    let (out, _, stderr) = run(cmd);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "panic: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines[0].starts_with("error:"), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn schedule_json_has_full_precision_arrays() {
    let (out, stdout, stderr) = run(inkdrop().args([
        "schedule",
        "--beta-schedule",
        "scaled_linear",
        "--num-train-timesteps",
        "1000",
        "--json",
    ]));
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let s = inkdrop::NoiseSchedule::default();
    for (key, want) in [
        ("betas", s.betas.clone()),
        ("alphas_cumprod", s.alphas_cumprod.clone()),
        ("snr", s.snrs()),
    ] {
        let got: Vec<f64> = v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got, want, "{key} must round-trip exactly");
    }
    let (out, stdout, _) = run(inkdrop().args([
        "schedule",
        "--beta-schedule",
        "linear",
        "--beta-start",
        "0.001",
        "--beta-end",
        "0.01",
        "--num-train-timesteps",
        "10",
        "--rescale-zero-snr",
        "--json",
    ]));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["betas"].as_array().unwrap().len(), 10);
    assert_eq!(v["alphas_cumprod"][9].as_f64(), Some(0.0));
}

#[test]
fn schedule_table_is_readable() {
    let (out, stdout, _) =
        run(inkdrop().args(["schedule", "--beta-schedule", "squaredcos_cap_v2"]));
    assert!(out.status.success());
    assert!(
        stdout.contains("squaredcos_cap_v2")
            && stdout.contains("alpha_bar_t")
            && stdout.contains("SNR (dB)")
    );
    assert!(
        stdout.lines().any(|l| l.trim_start().starts_with("999 ")),
        "{stdout}"
    );
}

#[test]
fn schedule_bad_inputs() {
    assert_clear_error(
        inkdrop().args(["schedule", "--beta-schedule", "cosine"]),
        "possible values: linear, scaled_linear, squaredcos_cap_v2",
    );
    assert_clear_error(
        inkdrop().args(["schedule", "--beta-start", "0.5", "--beta-end", "0.1"]),
        "beta_start",
    );
    assert_clear_error(
        inkdrop().args(["schedule", "--num-train-timesteps", "1"]),
        "at least 2",
    );
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["schedule", "--help"],
        vec!["vae", "--help"],
        vec!["vae", "roundtrip", "--help"],
        vec!["train", "vae", "--help"],
        vec!["train", "unet", "--help"],
        vec!["train", "all", "--help"],
        vec!["generate", "--help"],
        vec!["timesteps", "--help"],
        vec!["attention", "--help"],
        vec!["eval", "--help"],
    ] {
        let (out, stdout, _) = run(inkdrop().args(&args));
        assert!(out.status.success() && stdout.contains("Usage"), "{args:?}");
    }
    let (out, stdout, _) = run(forward_noise().arg("--help"));
    assert!(
        out.status.success()
            && stdout.contains("--beta-schedule")
            && stdout.contains("--timesteps")
    );
    let (out, stdout, _) =
        run(Command::new(env!("CARGO_BIN_EXE_ch01_forward_noising")).arg("--help"));
    assert!(out.status.success() && stdout.contains("--interactive") && stdout.contains("--book"));
}

#[test]
fn forward_noise_writes_its_figures_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let run_once = |out: &Path| {
        let (o, stdout, stderr) = run(forward_noise().args([
            "--out",
            out.to_str().unwrap(),
            "--timesteps",
            "0,500,999",
            "--size",
            "48",
        ]));
        assert!(o.status.success(), "{stderr}");
        assert!(
            stdout.contains("(theory)") && stdout.contains("corr(x_t, x_0)"),
            "{stdout}"
        );
        [
            "forward_noise_grid.png",
            "schedules.png",
            "pixel_histograms.png",
        ]
        .map(|f| std::fs::read(out.join(f)).unwrap())
    };
    let a = run_once(&dir.path().join("a"));
    let b = run_once(&dir.path().join("b"));
    assert_eq!(a, b, "same seed, same bytes");
    let img = image::load_from_memory(&a[0]).unwrap();
    assert!(
        img.width() > 4 * 48,
        "grid holds the original and three timesteps"
    );
}

#[test]
fn forward_noise_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let missing = dir.path().join("missing.png");
    assert_clear_error(
        forward_noise().args(["--out", out, "--image", missing.to_str().unwrap()]),
        "not found",
    );
    let text = dir.path().join("text.jpg");
    std::fs::write(&text, "hello").unwrap();
    assert_clear_error(
        forward_noise().args(["--out", out, "--image", text.to_str().unwrap()]),
        "is not an image",
    );
    assert_clear_error(
        forward_noise().args(["--out", out, "--timesteps", "0,1000"]),
        "timestep 1000 is outside [0, 1000)",
    );
    assert_clear_error(
        forward_noise().args(["--out", out, "--timesteps=10,abc"]),
        "invalid value 'abc' for '--timesteps",
    );
    assert_clear_error(
        forward_noise().args(["--out", out, "--beta-schedule", "cosine"]),
        "possible values",
    );
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert_clear_error(
        forward_noise().args(["--out", file.join("sub").to_str().unwrap()]),
        "cannot create output directory",
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.path().join("locked.png");
        inkdrop::support::image_io::save_png(&image::RgbImage::new(4, 4), &locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        // root can read anything; only check when the permission actually bites.
        if std::fs::read(&locked).is_err() {
            assert_clear_error(
                forward_noise().args(["--out", out, "--image", locked.to_str().unwrap()]),
                "cannot read image",
            );
        }
    }
}

#[test]
fn forward_noise_reads_a_user_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.png");
    let img = image::RgbImage::from_fn(90, 40, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 5) as u8, 128])
    });
    inkdrop::support::image_io::save_png(&img, &path).unwrap();
    let out = dir.path().join("o");
    let (o, _, stderr) = run(forward_noise().args([
        "--image",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--beta-schedule",
        "linear",
        "--size",
        "32",
    ]));
    assert!(o.status.success(), "{stderr}");
    assert!(out.join("forward_noise_grid.png").exists());
}

#[test]
fn tokenize_shows_specials_padding_and_pieces() {
    let (out, stdout, stderr) = run(inkdrop().args(["tokenize", "a girl with a dog", "--json"]));
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let tokens: Vec<&str> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), 16);
    assert_eq!(tokens[0], "<|startoftext|>");
    assert_eq!(*tokens.last().unwrap(), "<|endoftext|>");
    assert!(
        tokens
            .iter()
            .any(|t| !t.ends_with("</w>") && !t.starts_with("<|")),
        "unknown words split: {tokens:?}"
    );
    let (out, stdout, _) = run(inkdrop().args(["tokenize", "a red circle"]));
    assert!(out.status.success() && stdout.contains("padding") && stdout.contains("end of text"));
    assert_clear_error(inkdrop().args(["tokenize", "  "]), "empty");
    let (out, _, stderr) = run(inkdrop().args(["tokenize", &"a red circle ".repeat(8)]));
    assert!(
        out.status.success() && stderr.contains("cut off"),
        "{stderr}"
    );
}

#[test]
fn similarity_prefers_the_true_caption_and_handles_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _, stderr) = run(inkdrop().args([
        "dataset",
        "--count",
        "1",
        "--out",
        dir.path().to_str().unwrap(),
        "--seed",
        "3",
        "--size",
        "64",
    ]));
    assert!(out.status.success(), "{stderr}");
    let jsonl = std::fs::read_to_string(dir.path().join("captions.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    let truth = record["caption"].as_str().unwrap().to_string();
    let img = dir.path().join("00000.png");
    let (out, stdout, stderr) = run(inkdrop().args([
        "similarity",
        "--image",
        img.to_str().unwrap(),
        "--text",
        &truth,
        "--text",
        "a tiny elephant",
        "--json",
    ]));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("resized to 32x32"),
        "a 64 px image is resized and the user told: {stderr}"
    );
    assert!(
        !stderr.contains("one picture per file"),
        "a single 64 px picture is not a grid: {stderr}"
    );
    // A wide grid of pictures gets the extra hint.
    let grid = dir.path().join("grid.png");
    image::RgbImage::new(400, 150).save(&grid).unwrap();
    let (out, _, stderr) = run(inkdrop().args([
        "similarity",
        "--image",
        grid.to_str().unwrap(),
        "--text",
        "a red circle",
    ]));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("one picture per file"), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let probs: Vec<f64> = v["probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert_eq!(v["cosine"].as_array().unwrap().len(), 2);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    assert!(
        probs[0] > probs[1],
        "{truth:?} should beat an unrelated text: {probs:?}"
    );
    assert_clear_error(
        inkdrop().args(["similarity", "--image", img.to_str().unwrap(), "--text", ""]),
        "is empty",
    );
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "hello").unwrap();
    assert_clear_error(
        inkdrop().args([
            "similarity",
            "--image",
            text.to_str().unwrap(),
            "--text",
            "a red circle",
        ]),
        "is not an image",
    );
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, "junk").unwrap();
    assert_clear_error(
        inkdrop().args([
            "similarity",
            "--image",
            img.to_str().unwrap(),
            "--text",
            "a red circle",
            "--weights",
            bad.to_str().unwrap(),
        ]),
        "bad.safetensors",
    );
}

#[test]
fn train_clip_tiny_runs_resumes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, ckpt) = (dir.path().join("c.safetensors"), dir.path().join("c.ckpt"));
    let args = |steps: &str| {
        vec![
            "train".to_string(),
            "clip".into(),
            "--tiny".into(),
            "--steps".into(),
            steps.into(),
            "--batch-size".into(),
            "8".into(),
            "--out".into(),
            out_path.display().to_string(),
            "--checkpoint".into(),
            ckpt.display().to_string(),
        ]
    };
    let (out, stdout, stderr) = run(inkdrop().args(args("3")));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("zero-shot") && stdout.contains("held-out"),
        "{stdout}"
    );
    assert!(out_path.exists() && ckpt.exists());
    let mut resume = args("5");
    resume.push("--resume".into());
    let (out, _, stderr) = run(inkdrop().args(&resume));
    assert!(
        !out.status.success() && stderr.contains("other settings"),
        "a checkpoint of a 3-step run is not resumed as a 5-step run: {stderr}"
    );
}

/// A small VAE trained for a few steps into `dir`, through the command a user runs.
fn tiny_vae(dir: &Path) -> PathBuf {
    let path = dir.join("vae.safetensors");
    let ckpt = dir.join("vae.ckpt");
    let (out, stdout, stderr) = run(inkdrop()
        .args([
            "train",
            "vae",
            "--tiny",
            "--steps",
            "3",
            "--batch-size",
            "4",
        ])
        .arg("--out")
        .arg(&path)
        .arg("--checkpoint")
        .arg(&ckpt));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("PSNR") && stdout.contains("scaling_factor"),
        "{stdout}"
    );
    path
}

#[test]
fn train_vae_channels_sets_the_width_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vae.safetensors");
    let (out, _, stderr) = run(inkdrop()
        .args(["train", "vae", "--channels", "16,32,32", "--steps", "1"])
        .args(["--batch-size", "2", "--out"])
        .arg(&path)
        .arg("--checkpoint")
        .arg(dir.path().join("vae.ckpt")));
    assert!(out.status.success(), "{stderr}");
    let config = inkdrop::vae::bundle::VaeBundle::load(&path)
        .unwrap()
        .vae
        .config;
    assert_eq!(config.block_out_channels, [16, 32, 32]);
    assert_eq!(config.norm_num_groups, 16);
    assert_eq!(config.latent_shape(), [4, 8, 8]);
}

#[test]
fn vae_commands_round_trip_encode_decode_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_vae(dir.path());
    let image = dir.path().join("in.png");
    let (out, _, stderr) = run(inkdrop()
        .args(["dataset", "--count", "1", "--size", "48", "--out"])
        .arg(dir.path().join("set")));
    assert!(out.status.success(), "{stderr}");
    std::fs::copy(dir.path().join("set/00000.png"), &image).unwrap();
    let png = dir.path().join("rt.png");
    let (out, stdout, stderr) = run(inkdrop()
        .arg("vae")
        .arg("--weights")
        .arg(&weights)
        .args(["roundtrip", "--image"])
        .arg(&image)
        .arg("--out")
        .arg(&png));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("PSNR") && png.exists());
    assert!(
        stderr.contains("resized to 16x16"),
        "a 48x48 image is resized, and the user is told: {stderr}"
    );
    let latent = dir.path().join("l.safetensors");
    let (out, _, stderr) = run(inkdrop()
        .arg("vae")
        .arg("--weights")
        .arg(&weights)
        .args(["encode", "--image"])
        .arg(&image)
        .arg("--out")
        .arg(&latent));
    assert!(out.status.success(), "{stderr}");
    let decoded = dir.path().join("d.png");
    let (out, stdout, stderr) = run(inkdrop()
        .arg("vae")
        .arg("--weights")
        .arg(&weights)
        .args(["decode", "--latent"])
        .arg(&latent)
        .arg("--out")
        .arg(&decoded));
    assert!(out.status.success() && decoded.exists(), "{stderr}");
    assert!(stdout.contains("decoded 1 latent"), "{stdout}");
    // Bad inputs: a latent file that is not one, missing weights, an image that is not there.
    assert_clear_error(
        inkdrop()
            .arg("vae")
            .arg("--weights")
            .arg(&weights)
            .args(["decode", "--latent"])
            .arg(&image),
        "not a safetensors file",
    );
    assert_clear_error(
        inkdrop()
            .arg("vae")
            .arg("--weights")
            .arg(dir.path().join("none.safetensors"))
            .args(["roundtrip", "--image"])
            .arg(&image),
        "inkdrop train vae",
    );
    assert_clear_error(
        inkdrop()
            .arg("vae")
            .arg("--weights")
            .arg(&weights)
            .args(["encode", "--image"])
            .arg(dir.path().join("nope.png")),
        "not found",
    );
}

#[test]
fn train_all_tiny_rebuilds_every_file_and_times_each_stage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (out, stdout, stderr) = run(inkdrop()
        .args(["train", "all", "--tiny", "--data-dir"])
        .arg(&data));
    assert!(out.status.success(), "{stderr}");
    for f in [
        "tokenizer.json",
        "clip.safetensors",
        "vae.safetensors",
        "unet.safetensors",
    ] {
        assert!(data.join(f).exists(), "{f} missing");
    }
    for stage in ["tokenizer", "clip", "vae", "unet", "total"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(stage)),
            "no time for {stage}: {stdout}"
        );
    }
    // --resume after a finished run skips every stage and still reports their times.
    let (out, stdout, stderr) = run(inkdrop()
        .args(["train", "all", "--tiny", "--resume", "--data-dir"])
        .arg(&data));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("skipped").count(), 4, "{stderr}");
    assert!(stdout.contains("unet *"), "{stdout}");
    // A run with other settings cannot resume this one, and says why.
    let (out, _, stderr) = run(inkdrop()
        .args([
            "train",
            "all",
            "--tiny",
            "--resume",
            "--seed",
            "1",
            "--data-dir",
        ])
        .arg(&data));
    assert!(!out.status.success());
    assert!(stderr.contains("other settings"), "{stderr}");
    // The folder's four models generate together (--models), and a folder without them says
    // which file is missing.
    let picture = dir.path().join("from_models.png");
    let (out, _, stderr) = run(inkdrop()
        .args(["generate", "--prompt", "a red circle", "--steps", "2"])
        .args(["--num-images", "1", "--models"])
        .arg(&data)
        .arg("--out")
        .arg(&picture));
    assert!(out.status.success(), "{stderr}");
    assert!(picture.exists());
    assert_clear_error(
        inkdrop().args(["eval", "--models"]).arg(dir.path()),
        "tokenizer.json': not found",
    );
}

#[test]
fn eval_refuses_an_unknown_timestep_spacing_and_lists_the_valid_ones() {
    assert_clear_error(
        inkdrop().args(["eval", "--timestep-spacing", "sideways"]),
        "leading, trailing, linspace",
    );
}

#[test]
fn train_refuses_bad_settings_and_names_the_fix() {
    assert_clear_error(
        inkdrop().args(["train", "unet", "--tiny", "--two-objects", "1.5"]),
        "between 0 and 1",
    );
    assert_clear_error(
        inkdrop().args(["train", "unet", "--tiny", "--two-objects", "many"]),
        "not a number",
    );
    assert_clear_error(
        inkdrop().args(["train", "unet", "--tiny", "--grounding-weight", "-0.1"]),
        "not a number >= 0",
    );
    // Zero terminal SNR needs a v model; said before any work starts.
    assert_clear_error(
        inkdrop().args(["train", "unet", "--tiny", "--zero-terminal-snr"]),
        "--prediction-type v_prediction",
    );
    assert_clear_error(
        inkdrop().args(["train", "unet", "--tiny", "--prediction-type", "x0"]),
        "v_prediction",
    );
    // --channels: the UNet's two levels divide into heads and GroupNorm groups, the VAE's three
    // into its GroupNorm groups, said before any model is loaded; --tiny picks its own.
    for (model, channels, says) in [
        ("unet", "64", "takes two numbers"),
        ("unet", "24,48", "multiple of 16"),
        ("unet", "32,40", "multiple of the 16 GroupNorm groups"),
        ("vae", "32,64", "takes three numbers"),
        (
            "vae",
            "16,24,32",
            "multiple of the GroupNorm groups (32, or the first level's channels if fewer: 16)",
        ),
        ("vae", "0,32,32", "positive multiple"),
    ] {
        assert_clear_error(
            inkdrop().args(["train", model, "--channels", channels]),
            says,
        );
    }
    for args in [
        ["unet", "--tiny", "--channels", "32,64"],
        ["vae", "--tiny", "--channels", "16,32,32"],
        ["all", "--tiny", "--vae-channels", "16,32,32"],
    ] {
        assert_clear_error(inkdrop().arg("train").args(args), "cannot be used with");
    }
    assert_clear_error(
        inkdrop()
            .args([
                "train",
                "unet",
                "--steps",
                "1",
                "--channels",
                "32,64",
                "--init",
            ])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/unet.safetensors")),
        "add --channels 64,128",
    );
    // Training on from the shipped UNet without its fine-tuned text tower would silently switch
    // it to CLIP's frozen one: refused, with the flag that keeps it.
    assert_clear_error(
        inkdrop()
            .args(["train", "unet", "--steps", "1", "--init"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/unet.safetensors")),
        "add --train-text-encoder",
    );
}

#[test]
fn timesteps_json_lists_what_diffusers_visits() {
    let (out, stdout, _) =
        run(inkdrop().args(["timesteps", "--sampler", "ddim", "--steps", "10", "--json"]));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let ts: Vec<f64> = v["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(
        ts,
        [901.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0, 1.0]
    );
    assert_eq!(v["sigmas"].as_array().unwrap().len(), 10);
    let (out, stdout, _) =
        run(inkdrop().args(["timesteps", "--sampler", "dpm++2m", "--steps", "10"]));
    assert!(
        out.status.success() && stdout.contains("811") && stdout.contains("alpha_bar_t"),
        "{stdout}"
    );
    assert_clear_error(
        inkdrop().args(["timesteps", "--steps", "0"]),
        "between 1 and 1000",
    );
}

#[test]
fn generate_is_reproducible_saves_steps_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name);
    let gen = |file: &str, extra: &[&str]| {
        let mut cmd = inkdrop();
        cmd.args([
            "generate",
            "--prompt",
            "a red circle",
            "--steps",
            "4",
            "--num-images",
            "2",
        ])
        .arg("--out")
        .arg(out(file))
        .args(extra);
        let (o, stdout, stderr) = run(&mut cmd);
        assert!(o.status.success(), "{stderr}");
        stdout
    };
    let stdout = gen("a.png", &["--save-steps", out("steps").to_str().unwrap()]);
    assert!(stdout.contains("wrote 8 step pictures"), "{stdout}");
    gen("b.png", &[]);
    let bytes = |f: &str| std::fs::read(out(f)).unwrap();
    assert_eq!(bytes("a.png"), bytes("b.png"), "same seed, same bytes");
    gen("c.png", &["--seed", "5"]);
    assert_ne!(bytes("a.png"), bytes("c.png"));
    assert!(out("steps/x0_003_t1.png").exists() && out("steps/xt_000_t751.png").exists());
    // img2img from the picture just made, and unconditional generation (said on stderr).
    gen(
        "d.png",
        &[
            "--image",
            out("a.png").to_str().unwrap(),
            "--strength",
            "0.5",
            "--sampler",
            "euler",
        ],
    );
    let (o, _, stderr) = run(inkdrop()
        .args(["generate", "--steps", "2", "--num-images", "1", "--out"])
        .arg(out("e.png")));
    assert!(
        o.status.success() && stderr.contains("unconditional"),
        "{stderr}"
    );

    let bad = |extra: &[&str], needle: &str| {
        let mut cmd = inkdrop();
        cmd.args(["generate", "--prompt", "a red circle", "--out"])
            .arg(out("bad.png"))
            .args(extra);
        assert_clear_error(&mut cmd, needle);
    };
    bad(&["--steps", "0"], "between 1 and 1000");
    bad(&["--steps", "1001"], "between 1 and 1000");
    bad(&["--guidance-scale", "NaN"], "--guidance-scale");
    bad(&["--guidance-scale", "-2"], "--guidance-scale");
    bad(&["--sampler", "plms"], "dpm++2m");
    bad(&["--image", "/nonexistent/x.png"], "not found");
    bad(&["--image", "Cargo.toml"], "not an image");
    bad(
        &[
            "--image",
            out("a.png").to_str().unwrap(),
            "--strength",
            "1.5",
        ],
        "(0, 1]",
    );
    bad(
        &["--image", out("a.png").to_str().unwrap(), "--strength", "0"],
        "(0, 1]",
    );
    assert!(!out("bad.png").exists());
}

#[test]
fn attention_writes_its_maps_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("att");
    let (o, stdout, stderr) = run(inkdrop()
        .args([
            "attention",
            "--prompt",
            "a red circle above a blue square",
            "--word",
            "blue",
            "--num-steps",
            "3",
            "--swap-to",
            "green",
            "--reweight",
            "2",
            "--out",
        ])
        .arg(&out));
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains("7 cross-attention layers x 3 steps") && stdout.contains("\"blue\""),
        "{stdout}"
    );
    for f in [
        "tokens.png",
        "steps.png",
        "blocks.png",
        "image.png",
        "swap.png",
        "reweight.png",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let bad = |extra: &[&str], needle: &str| {
        let mut cmd = inkdrop();
        cmd.args(["attention", "--num-steps", "3", "--out"])
            .arg(dir.path().join("bad"))
            .args(extra);
        assert_clear_error(&mut cmd, needle);
    };
    bad(&["--word", "zebra"], "is not one token of the prompt");
    bad(&["--steps", "2..1"], "must not come after");
    bad(&["--steps", "0..5"], "only 3 steps");
    bad(&["--steps", "x"], "range like 0..9");
    bad(&["--token", "99"], "16 tokens");
    bad(&["--reweight", "-1"], "factor >= 0");
    bad(&["--swap-steps", "4"], "at most --num-steps");
    bad(
        &["--word", "red", "--swap-to", "zebra"],
        "swap one word for another word of one token",
    );
}
