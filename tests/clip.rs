//! The tiny CLIP: every weight learns (the guard test), the loss does what it says, weights
//! round-trip through files with clear errors, and an interrupted run resumes exactly.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use inkdrop::clip::bundle::{tokenize, ClipBundle};
use inkdrop::clip::{contrastive_loss, images_tensor, match_targets, Clip, ClipConfig};
use inkdrop::shapes::{render, sample_at, WorldConfig};
use inkdrop::text::ClipTokenizer;
use inkdrop::train::clip::{is_text_var, train_clip, ClipTrainConfig};
use inkdrop::weights;

mod common;
use common::max_abs_diff;

fn tokenizer() -> ClipTokenizer {
    let w = WorldConfig::default();
    let caps: Vec<String> = (0..3000).map(|i| sample_at(&w, 0, i).caption).collect();
    ClipTokenizer::train(caps.iter().map(String::as_str), 16).unwrap()
}

fn batch(tok: &ClipTokenizer, n: u64) -> (Tensor, Tensor, Vec<usize>, Vec<String>) {
    let w = WorldConfig::default();
    let samples: Vec<_> = (0..n).map(|i| sample_at(&w, 1, i)).collect();
    let imgs: Vec<_> = samples.iter().map(|s| render(&s.scene, 32)).collect();
    let caps: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    let (ids, eot) = tokenize(tok, &caps, &Device::Cpu).unwrap();
    (images_tensor(&imgs, &Device::Cpu).unwrap(), ids, eot, caps)
}

#[test]
fn every_variable_receives_a_gradient() {
    let tok = tokenizer();
    for two_path in [false, true] {
        let cfg = ClipConfig {
            two_path,
            ..ClipConfig::test(tok.vocab_size(), 16)
        };
        every_variable_learns(&tok, &cfg);
    }
}

fn every_variable_learns(tok: &ClipTokenizer, cfg: &ClipConfig) {
    let vm = VarMap::new();
    let model = Clip::new(cfg, weights::seeded_var_builder(&vm, 0, &Device::Cpu)).unwrap();
    let (x, ids, eot, caps) = batch(tok, 8);
    let out = contrastive_loss(
        &model.image_features(&x).unwrap(),
        &model.text_features(&ids, &eot).unwrap(),
        &model.scale().unwrap(),
        &match_targets(&caps, &Device::Cpu).unwrap(),
        true,
    )
    .unwrap();
    let grads = out.loss.backward().unwrap();
    let vars = weights::sorted_vars(&vm);
    assert!(vars.len() > 20, "{} variables", vars.len());
    let mut dead = Vec::new();
    for (name, var) in &vars {
        match grads.get(var.as_tensor()) {
            None => dead.push(format!("{name}: no gradient")),
            Some(g) => {
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                if norm == 0.0 {
                    dead.push(format!("{name}: zero gradient"));
                }
            }
        }
    }
    // The token embeddings of ids absent from this batch legitimately get zero rows, but the
    // matrix as a whole must move.
    assert!(
        dead.is_empty(),
        "frozen weights (two_path {}):\n{}",
        cfg.two_path,
        dead.join("\n")
    );
}

#[test]
fn loss_rewards_alignment_and_counts_duplicate_captions_as_matches() {
    let dev = Device::Cpu;
    let e = Tensor::new(&[[1f32, 0., 0.], [0., 1., 0.], [0., 0., 1.]], &dev).unwrap();
    let scale = Tensor::new(10f32, &dev).unwrap();
    let distinct = vec!["a".to_string(), "b".into(), "c".into()];
    let aligned = contrastive_loss(
        &e,
        &e,
        &scale,
        &match_targets(&distinct, &dev).unwrap(),
        true,
    )
    .unwrap();
    let shuffled_txt = Tensor::new(&[[0f32, 1., 0.], [0., 0., 1.], [1., 0., 0.]], &dev).unwrap();
    let wrong = contrastive_loss(
        &e,
        &shuffled_txt,
        &scale,
        &match_targets(&distinct, &dev).unwrap(),
        true,
    )
    .unwrap();
    let (a, w) = (
        aligned.loss.to_scalar::<f32>().unwrap(),
        wrong.loss.to_scalar::<f32>().unwrap(),
    );
    // Aligned: -log(e^10 / (e^10 + 2)) = 9.1e-5; shuffled: about 10.
    assert!((a - (1.0 + 2.0 * (-10f32).exp()).ln()).abs() < 1e-5, "{a}");
    assert!(w > 9.0, "{w}");
    let t = match_targets(&["x".to_string(), "y".into(), "x".into()], &dev).unwrap();
    assert_eq!(
        t.to_vec2::<f32>().unwrap(),
        vec![
            vec![1.0, 0.0, 1.0],
            vec![0.0, 1.0, 0.0],
            vec![1.0, 0.0, 1.0]
        ]
    );
    // A match matrix spreads each row's target evenly: with every pair matching, each row's
    // target is (0.5, 0.5), so the loss is -(0.5 log p(own) + 0.5 log p(other)) = 5.0000454 here.
    let e2 = Tensor::new(&[[1f32, 0.], [0., 1.]], &dev).unwrap();
    let all = Tensor::ones((2, 2), candle_core::DType::F32, &dev).unwrap();
    let spread = contrastive_loss(&e2, &e2, &scale, &all, true)
        .unwrap()
        .loss
        .to_scalar::<f32>()
        .unwrap();
    let expected =
        -(0.5 * (-(1.0f64 + (-10f64).exp()).ln()) + 0.5 * (-10.0 - (1.0f64 + (-10f64).exp()).ln()));
    assert!(
        (f64::from(spread) - expected).abs() < 1e-5,
        "{spread} vs {expected}"
    );
}

#[test]
fn truth_targets_count_every_true_caption() {
    use inkdrop::shapes::caption::{Claim, ObjectClaim};
    use inkdrop::shapes::scene::{Background, Color, Position, Scene, Shape, Size};
    let w = WorldConfig::default();
    let mut rng = inkdrop::support::seeded_rng(0);
    let circle = |c: Color, rng: &mut rand::rngs::StdRng| Scene {
        background: Background::Black,
        objects: vec![inkdrop::shapes::scene::place(
            Shape::Circle,
            c,
            Size::Small,
            Position::Center,
            rng,
        )],
    };
    let claim = |shape: Option<Shape>, color: Option<Color>| Claim {
        objects: vec![ObjectClaim {
            shape,
            color,
            size: None,
            position: None,
        }],
        relation: None,
        background: None,
    };
    let mk = |scene: Scene, claim: Claim| inkdrop::shapes::Sample {
        caption: claim.text(),
        claim,
        scene,
    };
    let samples = vec![
        mk(
            circle(Color::Red, &mut rng),
            claim(Some(Shape::Circle), Some(Color::Red)),
        ),
        mk(
            circle(Color::Blue, &mut rng),
            claim(Some(Shape::Circle), None),
        ),
        mk(
            circle(Color::Blue, &mut rng),
            claim(None, Some(Color::Blue)),
        ),
    ];
    assert_eq!(samples[1].caption, "a circle");
    assert_eq!(samples[2].caption, "a blue shape");
    let m = inkdrop::clip::truth_targets(&samples, &Device::Cpu)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // Rows: images (red circle, blue circle, blue circle); columns: captions.
    assert_eq!(
        m,
        vec![vec![1., 1., 0.], vec![0., 1., 1.], vec![0., 1., 1.]]
    );
    // And on real samples every caption is true of its own scene.
    for i in 0..500 {
        let s = sample_at(&w, 6, i);
        assert!(s.claim.is_true_of(&s.scene), "{:?}", s.caption);
    }
}

#[test]
fn prefetched_batches_come_in_step_order_and_errors_pass_through() {
    use inkdrop::train::prefetch::Prefetch;
    let mut batches = Prefetch::new(3..7, 2, |step| Ok(step * 10));
    let got: Vec<usize> = (0..4).map(|_| batches.next_batch().unwrap()).collect();
    assert_eq!(got, [30, 40, 50, 60]);
    // Past the end of the range: an error, not a hang.
    assert!(batches.next_batch().is_err());

    let mut failing = Prefetch::new(0..5, 1, |step| {
        if step == 1 {
            Err(candle_core::Error::Msg("render failed".into()).into())
        } else {
            Ok(step)
        }
    });
    assert_eq!(failing.next_batch().unwrap(), 0);
    let err = failing.next_batch().unwrap_err();
    assert!(err.to_string().contains("render failed"), "{err}");

    // Dropped while its helper waits to hand over a batch: the drop must not hang.
    let early = Prefetch::new(0..1000, 1, Ok);
    drop(early);
}

fn small_run(steps: usize) -> ClipTrainConfig {
    ClipTrainConfig {
        steps,
        batch_size: 8,
        warmup: 1,
        checkpoint_every: 2,
        ..ClipTrainConfig::default()
    }
}

#[test]
fn interrupted_training_resumes_to_the_same_weights() {
    let tok = tokenizer();
    let cfg = ClipConfig::test(tok.vocab_size(), 16);
    let dir = tempfile::tempdir().unwrap();
    let (out_a, ck_a) = (dir.path().join("a.safetensors"), dir.path().join("a.ckpt"));
    let (out_b, ck_b) = (dir.path().join("b.safetensors"), dir.path().join("b.ckpt"));
    train_clip(&tok, &cfg, &small_run(4), &out_a, &ck_a, false, &mut |_| {
        true
    })
    .unwrap()
    .unwrap();
    let stopped = train_clip(&tok, &cfg, &small_run(4), &out_b, &ck_b, false, &mut |s| {
        s.step < 3
    })
    .unwrap();
    assert!(stopped.is_none() && !out_b.exists());
    let report = train_clip(&tok, &cfg, &small_run(4), &out_b, &ck_b, true, &mut |_| {
        true
    })
    .unwrap()
    .unwrap();
    assert_eq!(report.resumed_from, 3);
    let (a, b) = (
        weights::load(&out_a, &Device::Cpu).unwrap(),
        weights::load(&out_b, &Device::Cpu).unwrap(),
    );
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, ta) in &a.tensors {
        let diff = max_abs_diff(ta, &b.tensors[name]);
        assert_eq!(diff, 0.0, "{name} differs after resume");
    }
    // A checkpoint from other settings is refused with a fix.
    let err = train_clip(&tok, &cfg, &small_run(6), &out_b, &ck_b, true, &mut |_| {
        true
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("other settings") && err.contains("--resume"),
        "{err}"
    );
}

#[test]
fn saved_model_loads_and_bad_files_are_named() {
    let tok = tokenizer();
    let cfg = ClipConfig::test(tok.vocab_size(), 16);
    let dir = tempfile::tempdir().unwrap();
    let (out, ck, tk) = (
        dir.path().join("m.safetensors"),
        dir.path().join("m.ckpt"),
        dir.path().join("tokenizer.json"),
    );
    tok.save(&tk).unwrap();
    train_clip(&tok, &cfg, &small_run(2), &out, &ck, false, &mut |_| true)
        .unwrap()
        .unwrap();
    let bundle = ClipBundle::load(&out, &tk).unwrap();
    let e = bundle.embed_texts(&["a red circle".to_string()]).unwrap();
    let norm = e
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((norm - 1.0).abs() < 1e-4);

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not weights at all").unwrap();
    let err = ClipBundle::load(&garbage, &tk).err().unwrap().to_string();
    assert!(
        err.contains("garbage.safetensors") && err.contains("not a safetensors file"),
        "{err}"
    );

    // Same names, one tensor with the wrong shape: the error names it and both shapes.
    let loaded = weights::load(&out, &Device::Cpu).unwrap();
    let mut tensors: Vec<(String, Tensor)> = loaded.tensors.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let victim = tensors
        .iter()
        .position(|(n, _)| n == "text_projection.weight")
        .unwrap();
    tensors[victim].1 = Tensor::zeros((3, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let bad = dir.path().join("bad.safetensors");
    weights::save(&bad, &tensors, &loaded.metadata).unwrap();
    let err = ClipBundle::load(&bad, &tk).err().unwrap().to_string();
    assert!(
        err.contains("text_projection.weight")
            && err.contains("[3, 5]")
            && err.contains("[16, 32]"),
        "{err}"
    );
}

#[test]
fn a_frozen_text_tower_stays_bit_for_bit_while_the_image_side_learns() {
    let tok = tokenizer();
    let cfg = ClipConfig::test(tok.vocab_size(), 16);
    let dir = tempfile::tempdir().unwrap();
    let (first, ck) = (dir.path().join("vit.safetensors"), dir.path().join("ck"));
    train_clip(&tok, &cfg, &small_run(2), &first, &ck, false, &mut |_| true)
        .unwrap()
        .unwrap();
    let two_path = ClipConfig {
        two_path: true,
        ..cfg.clone()
    };
    let second = dir.path().join("two_path.safetensors");
    let run = ClipTrainConfig {
        frozen_text: Some(first.clone()),
        seed: 5,
        ..small_run(3)
    };
    train_clip(
        &tok,
        &two_path,
        &run,
        &second,
        &dir.path().join("ck2"),
        false,
        &mut |_| true,
    )
    .unwrap()
    .unwrap();
    let (a, b) = (
        weights::load(&first, &Device::Cpu).unwrap(),
        weights::load(&second, &Device::Cpu).unwrap(),
    );
    let mut text = 0;
    for (name, tb) in &b.tensors {
        if is_text_var(name) {
            text += 1;
            let ta = &a.tensors[name];
            let same = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                == tb.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(same, "{name} moved although the text tower is frozen");
        }
    }
    assert!(text > 5, "{text} text tensors");
    assert!(b.tensors.keys().any(|n| n.contains("two_path")));
    // A file without the text tower is named, with the tensor it lacks.
    let bad = ClipTrainConfig {
        frozen_text: Some(dir.path().join("missing.safetensors")),
        ..small_run(1)
    };
    let err = train_clip(
        &tok,
        &two_path,
        &bad,
        &second,
        &dir.path().join("ck3"),
        false,
        &mut |_| true,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("missing.safetensors"), "{err}");
}

#[test]
fn the_two_paths_see_colour_and_shape_apart() {
    use inkdrop::clip::two_path::{foreground_mask, TwoPathVision};
    use inkdrop::shapes::scene::{place, Background, Color, Position, Scene, Shape, Size};
    let scene = |color, shape| {
        let mut rng = inkdrop::support::seeded_rng(3);
        Scene {
            background: Background::Gray,
            objects: vec![place(shape, color, Size::Large, Position::Center, &mut rng)],
        }
    };
    let imgs: Vec<_> = [
        (Color::Red, Shape::Circle),
        (Color::Purple, Shape::Circle),
        (Color::Red, Shape::Star),
    ]
    .iter()
    .map(|&(c, s)| render(&scene(c, s), 32))
    .collect();
    let x = images_tensor(&imgs, &Device::Cpu).unwrap(); // (3, 3, 32, 32)

    // The mask: 1 inside the object, 0 on the background, the same for both circles.
    let m = foreground_mask(&x).unwrap(); // (3, 1, 32, 32)
    let m: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(m[16 * 32 + 16], 1.0, "centre of the circle");
    assert_eq!(m[0], 0.0, "corner");
    let full = |k: usize| {
        m[k * 1024..(k + 1) * 1024]
            .iter()
            .filter(|&&v| v == 1.0)
            .count()
    };
    // (Edge pixels are blends, so a colour of lower contrast leaves a few more of them below 1.)
    assert!(
        full(0) > 100 && full(0).abs_diff(full(1)) <= 6,
        "{} vs {}",
        full(0),
        full(1)
    );
    // Faint blotches and a darker frame (12 of 255 levels, as decoded pictures have) stay
    // background.
    let mut noisy = imgs[0].clone();
    for (x, y, p) in noisy.enumerate_pixels_mut() {
        let d: i16 = if x == 0 || y == 0 || x == 31 || y == 31 {
            -12
        } else {
            ((x * 7 + y * 3) % 13) as i16 - 6
        };
        for c in p.0.iter_mut() {
            *c = (i16::from(*c) + d).clamp(0, 255) as u8;
        }
    }
    let mn = foreground_mask(&images_tensor(&[noisy], &Device::Cpu).unwrap()).unwrap();
    let mn: Vec<f32> = mn.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(mn[0], 0.0, "a darker frame is background");
    assert_eq!(mn[16 * 32 + 16], 1.0);
    let bg = *imgs[0].get_pixel(0, 0);
    let outside: Vec<usize> = (0..1024)
        .filter(|&k| *imgs[0].get_pixel(k as u32 % 32, k as u32 / 32) == bg)
        .collect();
    assert!(outside.len() > 600, "{} background pixels", outside.len());
    let worst = outside.iter().map(|&k| mn[k]).fold(0f32, f32::max);
    assert_eq!(worst, 0.0, "blotches are background");
    let vm = VarMap::new();
    let tower = TwoPathVision::new(32, weights::seeded_var_builder(&vm, 0, &Device::Cpu)).unwrap();
    let f = tower.forward(&x).unwrap(); // (3, 32): object colour 8, background 8, shape 16
    let part =
        |row: usize, from: usize, len: usize| f.get(row).unwrap().narrow(0, from, len).unwrap();
    let dist = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    // Shape features: recolouring barely moves them (only anti-aliased edges differ), a new
    // shape does.
    let recolour = dist(&part(0, 16, 16), &part(1, 16, 16));
    let reshape = dist(&part(0, 16, 16), &part(2, 16, 16));
    assert!(
        recolour < 0.1 * reshape,
        "shape path: recoloured {recolour}, reshaped {reshape}"
    );
    // Object colour features: the other way round (a star has more anti-aliased edge pixels,
    // blends of red and gray, than a circle: about a tenth of a recolouring's change).
    let recolour = dist(&part(0, 0, 8), &part(1, 0, 8));
    let reshape = dist(&part(0, 0, 8), &part(2, 0, 8));
    assert!(
        reshape < 0.25 * recolour,
        "colour path: recoloured {recolour}, reshaped {reshape}"
    );
}
