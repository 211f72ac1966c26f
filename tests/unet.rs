//! The UNet: shapes, diffusers' parameter names and count (checked against a number PyTorch
//! printed for diffusers' own model), output and every gradient equal to diffusers' own UNet on
//! the same weights, the timestep embedding, attention recording, and every weight trained (the
//! guard test).

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use inkdrop::unet::attention::AttentionRecorder;
use inkdrop::unet::embeddings::timestep_embedding;
use inkdrop::unet::{UNet2DConditionModel, UNetConfig};
use inkdrop::weights::{seeded_var_builder, sorted_vars};

mod common;
use common::{max_abs_diff, rand};

fn model(cfg: &UNetConfig, seed: u64) -> (UNet2DConditionModel, VarMap) {
    let vm = VarMap::new();
    let unet = UNet2DConditionModel::new(cfg, seeded_var_builder(&vm, seed, &Device::Cpu)).unwrap();
    (unet, vm)
}

#[test]
fn predicts_noise_of_the_latents_shape_with_one_timestep_per_sample() {
    let cfg = UNetConfig::test();
    let (unet, _) = model(&cfg, 0);
    let x = rand(&[3, 4, 8, 8], 1);
    let t = Tensor::new(&[0f32, 500.0, 999.0], &Device::Cpu).unwrap();
    let ctx = rand(&[3, 16, cfg.cross_attention_dim], 2);
    let eps = unet.forward(&x, &t, &ctx, None).unwrap();
    assert_eq!(eps.dims(), &[3, 4, 8, 8]);
    // Each sample's output depends on its own timestep only.
    let t2 = Tensor::new(&[0f32, 10.0, 999.0], &Device::Cpu).unwrap();
    let eps2 = unet.forward(&x, &t2, &ctx, None).unwrap();
    let diff = (&eps - &eps2)
        .unwrap()
        .abs()
        .unwrap()
        .sum_keepdim((1, 2, 3))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        diff[0] == 0.0 && diff[2] == 0.0 && diff[1] > 0.0,
        "{diff:?}"
    );
}

#[test]
fn parameter_count_equals_diffusers_for_the_benchmark_config() {
    // UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4,
    // block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64,
    // attention_head_dim=8, CrossAttnDownBlock2D x2, CrossAttnUpBlock2D x2, norm_num_groups=32)
    // has 1,077,572 parameters in PyTorch (the CPU-kernels issue measured it).
    let cfg = UNetConfig {
        sample_size: 16,
        block_out_channels: vec![32, 64],
        cross_attention: vec![true, true],
        cross_attention_dim: 64,
        attention_heads: 8,
        norm_num_groups: 32,
        ..UNetConfig::tiny()
    };
    let (_, vm) = model(&cfg, 0);
    let count: usize = sorted_vars(&vm).iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(count, 1_077_572);
}

#[test]
fn parameter_names_follow_diffusers() {
    let (_, vm) = model(&UNetConfig::tiny(), 0);
    let names: Vec<String> = sorted_vars(&vm).into_iter().map(|(n, _)| n).collect();
    for key in [
        "time_embedding.linear_1.weight",
        "time_embedding.linear_2.bias",
        "conv_in.weight",
        "down_blocks.0.resnets.0.time_emb_proj.weight",
        "down_blocks.0.attentions.0.norm.weight",
        "down_blocks.0.attentions.0.proj_in.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.bias",
        "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.norm3.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "mid_block.resnets.1.conv2.weight",
        "mid_block.attentions.0.proj_out.weight",
        "up_blocks.0.resnets.1.conv_shortcut.weight",
        "up_blocks.0.upsamplers.0.conv.weight",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_v.weight",
        "conv_norm_out.weight",
        "conv_out.bias",
    ] {
        assert!(names.iter().any(|n| n == key), "missing {key}");
    }
    assert!(
        !names.iter().any(|n| n.contains("to_q.bias")),
        "to_q has no bias in diffusers"
    );
}

/// diffusers' UNet2DConditionModel itself (tests/fixtures/make_unet_golden.py) gave an output and
/// a gradient for every parameter; ours, loaded with the same weights by the same names, must
/// agree: the forward to 1e-4 of its scale, each gradient to 1e-4 relative (float32 sums in
/// another order differ by about 1e-6).
#[test]
fn output_and_every_gradient_equal_diffusers() {
    let golden = candle_core::safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/diffusers_unet.safetensors"
        ),
        &Device::Cpu,
    )
    .unwrap();
    let cfg = UNetConfig {
        block_out_channels: vec![8, 16],
        cross_attention_dim: 12,
        attention_heads: 2,
        norm_num_groups: 4,
        ..UNetConfig::tiny()
    };
    let (unet, vm) = model(&cfg, 0);
    let vars = sorted_vars(&vm);
    for (name, var) in &vars {
        let param = golden
            .get(&format!("param.{name}"))
            .unwrap_or_else(|| panic!("diffusers has no parameter {name}"));
        var.set(&param.reshape(var.dims()).unwrap()).unwrap();
    }
    let diffusers_params = golden.keys().filter(|k| k.starts_with("param.")).count();
    assert_eq!(
        vars.len(),
        diffusers_params,
        "same parameter list as diffusers"
    );
    let out = unet
        .forward(&golden["x"], &golden["t"], &golden["ctx"], None)
        .unwrap();
    let scale = max_abs(&golden["out"]);
    let err = max_abs(&(&out - &golden["out"]).unwrap());
    assert!(
        err < 1e-4 * scale,
        "forward differs by {err} (scale {scale})"
    );
    let grads = (&out * &golden["r"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in &vars {
        let theirs = &golden[&format!("grad.{name}")];
        let ours = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .reshape(theirs.dims())
            .unwrap();
        let rel = l2(&(&ours - theirs).unwrap()) / l2(theirs).max(1e-12);
        assert!(
            rel < 1e-4,
            "gradient of {name} differs: relative error {rel}"
        );
    }
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn l2(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn timestep_embedding_is_cos_then_sin_with_sd_frequencies() {
    let t = Tensor::new(&[0f32, 1.0, 500.0], &Device::Cpu).unwrap();
    let e: Vec<Vec<f32>> = timestep_embedding(&t, 8, 0.0).unwrap().to_vec2().unwrap();
    assert_eq!(e[0], vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    // f_k = 10000^(-k/4): for t = 1, k = 1: cos(0.1), sin(0.1).
    assert!((e[1][1] - 0.1f32.cos()).abs() < 1e-6 && (e[1][5] - 0.1f32.sin()).abs() < 1e-6);
    assert!((e[2][0] - 500f32.cos()).abs() < 1e-4);
}

#[test]
fn cross_attention_maps_are_recorded_only_when_asked() {
    let cfg = UNetConfig::test();
    let (unet, _) = model(&cfg, 0);
    let x = rand(&[2, 4, 8, 8], 1);
    let t = Tensor::new(&[10f32, 20.0], &Device::Cpu).unwrap();
    let ctx = rand(&[2, 16, cfg.cross_attention_dim], 2);
    let rec = AttentionRecorder::cross();
    let with = unet.forward(&x, &t, &ctx, Some(&rec)).unwrap();
    let without = unet.forward(&x, &t, &ctx, None).unwrap();
    // Without a recorder the fused attention kernel runs: the same formula, rounded in
    // another order, so equal to float precision rather than bit for bit.
    let diff = max_abs_diff(&with, &without);
    assert!(diff < 1e-5, "recording changed the output by {diff}");
    let maps = rec.take();
    // 2 down layers, 1 mid, 2 x 2 up layers: 7 transformers, one cross-attention each.
    assert_eq!(maps.len(), 7);
    for m in &maps {
        assert!(m.name.ends_with("attn2"), "{}", m.name);
        let d = m.probs.dims();
        assert_eq!(
            (d[0], d[1], d[2], d[3]),
            (2, cfg.attention_heads, m.height * m.width, 16)
        );
        let rows: Vec<f32> = m
            .probs
            .sum(3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            rows.iter().all(|s| (s - 1.0).abs() < 1e-5),
            "probabilities sum to 1 over tokens"
        );
    }
    assert!(maps.iter().any(|m| m.height == 4) && maps.iter().any(|m| m.height == 8));
}

#[test]
fn every_weight_receives_a_gradient() {
    let cfg = UNetConfig::test();
    let (unet, vm) = model(&cfg, 3);
    let x = rand(&[2, 4, 8, 8], 4);
    let t = Tensor::new(&[100f32, 900.0], &Device::Cpu).unwrap();
    let ctx = rand(&[2, 16, cfg.cross_attention_dim], 5);
    let target = rand(&[2, 4, 8, 8], 6);
    let loss = (unet.forward(&x, &t, &ctx, None).unwrap() - target)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in sorted_vars(&vm) {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}

#[test]
fn maps_kept_with_their_graph_match_the_recorded_ones_and_train_queries_and_keys() {
    let cfg = UNetConfig::test();
    let (unet, vm) = model(&cfg, 7);
    let x = rand(&[2, 4, 8, 8], 8);
    let t = Tensor::new(&[50f32, 700.0], &Device::Cpu).unwrap();
    let ctx = rand(&[2, 16, cfg.cross_attention_dim], 9);
    let plain = AttentionRecorder::cross();
    unet.forward(&x, &t, &ctx, Some(&plain)).unwrap();
    let kept = AttentionRecorder::cross_with_graph();
    let out = unet.forward(&x, &t, &ctx, Some(&kept)).unwrap();
    // The output still comes from the fused kernel, bit for bit.
    let fused = unet.forward(&x, &t, &ctx, None).unwrap();
    assert_eq!(max_abs_diff(&out, &fused), 0.0);
    let (plain, kept) = (plain.take(), kept.take());
    assert_eq!(plain.len(), kept.len());
    for (i, (a, b)) in plain.iter().zip(&kept).enumerate() {
        assert_eq!((&a.name, a.height), (&b.name, b.height));
        let d = max_abs_diff(&a.probs, &b.probs);
        // The first layer sees the same input either way (only the softmax differs); after it,
        // the recording path's unfused outputs round differently, a little more per layer.
        let tol = if i == 0 { 1e-5 } else { 1e-4 };
        assert!(d < tol, "{}: {d}", a.name);
    }
    // A loss on the kept maps reaches every cross-attention layer's queries and keys.
    let loss = Tensor::stack(
        &kept
            .iter()
            .map(|m| {
                m.probs
                    .narrow(3, 2, 1)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
            })
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap()
    .sum_all()
    .unwrap();
    let grads = loss.backward().unwrap();
    let mut checked = 0;
    for (name, var) in sorted_vars(&vm) {
        if name.contains("attn2.to_q") || name.contains("attn2.to_k") {
            let g = grads.get(var.as_tensor());
            assert!(
                g.is_some_and(|g| g
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0),
                "{name}: no gradient from the maps"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * kept.len());
}

#[test]
fn the_fused_inside_share_matches_candle_ops_in_value_and_gradient() {
    use candle_core::Var;
    use common::weighted_sum;
    use inkdrop::train::inside_share::inside_share;
    // Odd sizes: 3 samples, 2 heads, 5 cells, 7 tokens; probabilities softmaxed over tokens,
    // coverage in [0, 1] with some cells empty.
    let probs = candle_nn::ops::softmax_last_dim(&rand(&[3, 2, 5, 7], 1)).unwrap();
    let probs = Var::from_tensor(&probs).unwrap();
    let mask = rand(&[3, 5, 7], 2)
        .relu()
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap();
    let ours = inside_share(&probs, &mask).unwrap();
    // The composed formula it replaced: mean over heads, then the two sums over cells.
    let a = probs.mean(1).unwrap(); // (3, 5, 7)
    let total = a.sum(1).unwrap();
    let theirs = (&a * &mask)
        .unwrap()
        .sum(1)
        .unwrap()
        .div(&(total + 1e-8).unwrap())
        .unwrap();
    assert_eq!(ours.dims(), &[3, 7]);
    assert!(max_abs_diff(&ours, &theirs) < 1e-6);
    let w = rand(&[3, 7], 3);
    let g1 = weighted_sum(&ours, &w).backward().unwrap();
    let g2 = weighted_sum(&theirs, &w).backward().unwrap();
    let (d1, d2) = (g1.get(&probs).unwrap(), g2.get(&probs).unwrap());
    assert_eq!(d1.dims(), probs.dims());
    assert!(
        max_abs(d2) > 1e-3,
        "the reference gradient is not trivially zero"
    );
    assert!(max_abs_diff(d1, d2) < 1e-5, "{}", max_abs_diff(d1, d2));
    // No gradient reaches the mask (a constant target).
    let mask_var = Var::from_tensor(&mask).unwrap();
    let g = inside_share(&probs, &mask_var)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(&mask_var).is_none());
    // Shapes that do not match are an error, not a panic.
    assert!(inside_share(&probs, &rand(&[3, 4, 7], 4)).is_err());
    // An empty batch is an empty answer.
    let none = inside_share(
        &Tensor::zeros((0, 2, 5, 7), candle_core::DType::F32, &Device::Cpu).unwrap(),
        &Tensor::zeros((0, 5, 7), candle_core::DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    assert_eq!(none.dims(), &[0, 7]);
}

mod training {
    use super::*;
    use inkdrop::clip::bundle::ClipBundle;
    use inkdrop::clip::{Clip, ClipConfig};
    use inkdrop::shapes::{sample_at, WorldConfig};
    use inkdrop::text::ClipTokenizer;
    use inkdrop::train::unet::{latent_dataset, latent_dataset_of, train_unet, UNetTrainConfig};
    use inkdrop::vae::{AutoencoderKL, VaeConfig};

    fn clip() -> ClipBundle {
        let world = WorldConfig::default();
        let caps: Vec<String> = (0..300).map(|i| sample_at(&world, 0, i).caption).collect();
        let tokenizer = ClipTokenizer::train(caps.iter().map(String::as_str), 16).unwrap();
        let varmap = VarMap::new();
        let cfg = ClipConfig::test(tokenizer.vocab_size(), 16);
        let model = Clip::new(&cfg, seeded_var_builder(&varmap, 0, &Device::Cpu)).unwrap();
        ClipBundle {
            model,
            varmap,
            tokenizer,
            metadata: Default::default(),
            device: Device::Cpu,
        }
    }

    fn vae() -> AutoencoderKL {
        let vm = VarMap::new();
        AutoencoderKL::new(&VaeConfig::test(), seeded_var_builder(&vm, 0, &Device::Cpu)).unwrap()
    }

    #[test]
    fn caption_states_computed_once_equal_encoding_each_batch() {
        use inkdrop::train::caption_states::CaptionStates;
        use inkdrop::unet::text_encoder::{encoder_hidden_states, ContextPadding};
        let clip = clip();
        let world = WorldConfig::default();
        // 300 captions with repeats (Shapes World repeats the short ones often).
        let data: Vec<String> = (0..300).map(|i| sample_at(&world, 3, i).caption).collect();
        for padding in [ContextPadding::Kept, ContextPadding::Zeroed] {
            let encode = |t: &[String]| encoder_hidden_states(&clip, None, t, padding);
            let states = CaptionStates::new(&data, &encode).unwrap();
            let distinct: std::collections::HashSet<&String> = data.iter().collect();
            assert_eq!(
                states.len(),
                distinct.len() + 1,
                "the distinct captions and \"\""
            );
            // A batch as a training step draws it: repeats, the empty prompt of dropout.
            let batch: Vec<String> = [7, 0, 7, 299, 150]
                .iter()
                .map(|&i| data[i].clone())
                .chain([String::new()])
                .collect();
            let direct = encode(&batch).unwrap(); // (6, 16, W)
            let gathered = states.get(&batch).unwrap();
            assert_eq!(gathered.dims(), direct.dims());
            let (a, b) = (
                gathered.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                direct.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            let err = states
                .get(&["a caption nobody wrote".to_string()])
                .unwrap_err()
                .to_string();
            assert!(err.contains("a caption nobody wrote"), "{err}");
        }
    }

    #[test]
    fn object_tokens_point_at_each_objects_own_words() {
        use inkdrop::train::grounding::object_tokens;
        let tok = clip().tokenizer;
        let caption = "a large red circle above a red square";
        let enc = tok.encode(caption).unwrap();
        let found = object_tokens(&tok, caption).unwrap();
        let words: Vec<(usize, &str)> = found
            .iter()
            .map(|&(o, p)| (o, enc.tokens[p].trim_end_matches("</w>")))
            .collect();
        assert_eq!(
            words,
            [
                (0, "large"),
                (0, "red"),
                (0, "circle"),
                (1, "red"),
                (1, "square")
            ]
        );
        // The two "red"s are different tokens, one per object.
        assert_ne!(found[1].1, found[3].1);
        let shape_only = object_tokens(&tok, "an orange shape and a star").unwrap();
        assert_eq!(
            shape_only.iter().map(|f| f.0).collect::<Vec<_>>(),
            [0, 0, 1]
        );
        assert!(object_tokens(&tok, "").unwrap().is_empty());
    }

    #[test]
    fn the_grounding_loss_is_small_on_the_object_and_large_off_it() {
        use inkdrop::train::grounding::{inside_shares, token_loss, uniform_share};
        use inkdrop::unet::attention::AttentionMap;
        let dev = Device::Cpu;
        let t = targets_on_8x8(1.0);
        let m = &t.masks[&8]; // (1, 64, 16)
        assert_eq!(m.dims(), &[1, 64, 16]);
        // Attention that puts each token on its object's most covered cell (the rest of each
        // position's attention on the start token): inside = that cell's coverage.
        let mv: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap(); // (64 * 16)
        let best: Vec<usize> = (0..16)
            .map(|i| {
                (0..64)
                    .max_by(|&a, &b| mv[a * 16 + i].total_cmp(&mv[b * 16 + i]))
                    .unwrap()
            })
            .collect();
        let mut peaked = vec![0f32; 64 * 16];
        for u in 0..64 {
            peaked[u * 16] = 1.0;
        }
        for (i, &u) in best.iter().enumerate().skip(1) {
            peaked[u * 16] -= 0.1;
            peaked[u * 16 + i] = 0.1;
        }
        let map = |probs: Tensor| AttentionMap {
            name: "down_blocks.0.attentions.0.transformer_blocks.0.attn2".into(),
            height: 8,
            width: 8,
            probs,
        };
        let sel: Vec<f32> = t.selected.flatten_all().unwrap().to_vec1().unwrap();
        let expect = |inside: &dyn Fn(usize) -> f32| {
            (0..16)
                .filter(|&i| sel[i] > 0.0)
                .map(|i| (1.0 - inside(i)).powi(2))
                .sum::<f32>()
                / t.count as f32
        };
        let peaked = Tensor::from_vec(peaked, (1, 1, 64, 16), &dev).unwrap();
        let on = token_loss(&[map(peaked)], &t)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let want = expect(&|i| mv[best[i] * 16 + i]);
        assert!((on - want).abs() < 1e-5, "peaked: {on} vs {want}");
        assert!(
            on < 0.05,
            "an object covers its best cell nearly fully: {on}"
        );
        // Uniform attention: each token's share inside is its object's share of the grid.
        let uniform = Tensor::full(1f32 / 16.0, (1, 1, 64, 16), &dev).unwrap();
        let l = token_loss(&[map(uniform.clone())], &t)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let share: Vec<f32> = m.sum(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want = expect(&|i| share[i] / 64.0);
        assert!((l - want).abs() < 1e-5, "uniform: {l} vs {want}");
        // The share inside, per layer, is what the loss squares; spread evenly it is the
        // objects' mean share of the grid.
        let shares = inside_shares(&[map(uniform.clone())], &t).unwrap();
        let even = uniform_share(&t, 8).unwrap();
        assert_eq!(shares.len(), 1);
        assert_eq!(shares[0].1, 8);
        assert!((shares[0].2 - even).abs() < 1e-5, "{shares:?} vs {even}");
        assert!(even > 0.0 && even < 0.5);
        assert!(
            l > 0.5,
            "small objects: most uniform attention is off them ({l})"
        );
        // No layer on a grid with targets is an error.
        let four = AttentionMap {
            height: 4,
            width: 4,
            ..map(Tensor::zeros((1, 1, 16, 16), candle_core::DType::F32, &dev).unwrap())
        };
        assert!(token_loss(&[four], &t).is_err());
    }

    #[test]
    fn the_binding_loss_is_zero_when_each_object_reads_its_own_words() {
        use inkdrop::train::grounding::binding_loss;
        use inkdrop::unet::attention::AttentionMap;
        let dev = Device::Cpu;
        let t = targets_on_8x8(1.0);
        let mv: Vec<f32> = t.masks[&8].flatten_all().unwrap().to_vec1().unwrap(); // (64 * 16)
        let map = |probs: Vec<f32>| AttentionMap {
            name: "down_blocks.0.attentions.0.transformer_blocks.0.attn2".into(),
            height: 8,
            width: 8,
            probs: Tensor::from_vec(probs, (1, 1, 64, 16), &dev).unwrap(),
        };
        let loss = |probs: Vec<f32>| {
            binding_loss(&[map(probs)], &t)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        // Each cell puts its word attention on the tokens of the object covering it most
        // (or, `swapped`, on every other grounded token), the rest on the start token.
        let attend = |swapped: bool| {
            let mut p = vec![0f32; 64 * 16];
            for u in 0..64 {
                let row = &mv[u * 16..(u + 1) * 16];
                let top = row.iter().cloned().fold(0f32, f32::max);
                let chosen: Vec<usize> = (0..16)
                    .filter(|&i| row[i] > 0.0 && (row[i] == top) != swapped)
                    .collect();
                p[u * 16] = 1.0;
                for &i in &chosen {
                    p[u * 16 + i] = 0.1 / chosen.len() as f32;
                    p[u * 16] -= 0.1 / chosen.len() as f32;
                }
            }
            p
        };
        let bound = loss(attend(false));
        assert!(bound.abs() < 1e-6, "own words only: {bound}");
        // The other object's words: own / words = 0 where one object covers the cell alone,
        // so the loss is sum cover^3 / sum cover over those cells.
        let swapped = loss(attend(true));
        let (mut num, mut den) = (0f32, 0f32);
        for u in 0..64 {
            let row = &mv[u * 16..(u + 1) * 16];
            let top = row.iter().cloned().fold(0f32, f32::max);
            // Covered by one object only: every grounded token there has the same coverage.
            if row.iter().all(|&v| v == 0.0 || v == top) {
                num += top.powi(3);
            }
            den += top;
        }
        assert!(swapped > 0.3, "the other object's words: {swapped}");
        assert!(swapped >= num / den - 1e-5, "{swapped} vs {}", num / den);
        // One object: every word names it, so attention cannot bind wrongly.
        let t1 = targets_on_8x8(0.0);
        let uniform = Tensor::full(1f32 / 16.0, (1, 1, 64, 16), &dev).unwrap();
        let l1 = binding_loss(
            &[AttentionMap {
                probs: uniform,
                ..map(vec![0f32; 64 * 16])
            }],
            &t1,
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!(l1.abs() < 1e-6, "one object: {l1}");
    }

    #[test]
    fn training_with_the_grounding_or_binding_loss_moves_attention_onto_the_objects() {
        use inkdrop::train::grounding::{
            binding_loss, grounding_targets, latent_grids, token_loss,
        };
        use inkdrop::train::optim::{AdamW, AdamWConfig};
        let clip = clip();
        let cfg = model_for(&clip);
        let world = WorldConfig {
            p_two_objects: 1.0,
            ..WorldConfig::default()
        };
        let samples: Vec<_> = (0..6).map(|i| sample_at(&world, 1, i)).collect();
        let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
        let scenes: Vec<_> = samples.iter().map(|s| &s.scene).collect();
        let dev = Device::Cpu;
        let ctx = clip.encoder_hidden_states(&captions).unwrap().detach(); // (6, 16, W)
        let targets = grounding_targets(
            &clip.tokenizer,
            &captions,
            &scenes,
            &latent_grids(&cfg),
            16,
            &dev,
        )
        .unwrap()
        .unwrap();
        let x = rand(&[6, 4, 8, 8], 12);
        let t = Tensor::new(&[100f32, 200.0, 300.0, 400.0, 500.0, 600.0], &dev).unwrap();
        for binding in [false, true] {
            let (unet, vm) = model(&cfg, 11);
            let mut opt = AdamW::new(
                sorted_vars(&vm),
                AdamWConfig {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.0,
                },
            )
            .unwrap();
            let mut losses = Vec::new();
            for _ in 0..15 {
                let rec = AttentionRecorder::cross_with_graph();
                unet.forward(&x, &t, &ctx, Some(&rec)).unwrap();
                let loss = if binding {
                    binding_loss(&rec.take(), &targets).unwrap()
                } else {
                    token_loss(&rec.take(), &targets).unwrap()
                };
                losses.push(loss.to_scalar::<f32>().unwrap());
                opt.update(&loss.backward().unwrap(), 3e-3).unwrap();
            }
            let (first, last) = (losses[0], *losses.last().unwrap());
            assert!(
                last < 0.7 * first,
                "15 steps on the {} loss alone: {first} -> {last}",
                if binding { "binding" } else { "grounding" }
            );
        }
    }

    #[test]
    fn the_loop_reports_the_grounding_and_binding_losses_when_they_are_on() {
        let dir = tempfile::tempdir().unwrap();
        let (clip, vae) = (clip(), vae());
        let data = latent_dataset(&vae, 0, 16, None).unwrap();
        assert_eq!(data.scenes.len(), 16);
        let cfg = UNetTrainConfig {
            steps: 3,
            batch_size: 4,
            warmup: 1,
            dataset_size: 16,
            grounding_weight: Some(0.5),
            ..UNetTrainConfig::default()
        };
        // (grounding, binding) as each step reports them.
        let reported = |cfg: &UNetTrainConfig, name: &str| {
            let mut seen = Vec::new();
            train_unet(
                &model_for(&clip),
                cfg,
                &data,
                &clip,
                &vae,
                &dir.path().join(format!("{name}.safetensors")),
                &dir.path().join(format!("{name}.ckpt")),
                None,
                false,
                &mut |s| {
                    seen.push((s.token_loss, s.binding_loss));
                    true
                },
            )
            .unwrap()
            .unwrap();
            seen
        };
        let seen = reported(&cfg, "g");
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter()
                .all(|&(g, b)| g.is_some_and(|g| g > 0.0 && g <= 1.0) && b.is_none()),
            "{seen:?}"
        );
        // The binding loss alone: reported on its own, the grounding loss not.
        let binding = UNetTrainConfig {
            grounding_weight: None,
            binding_weight: Some(0.5),
            p_two_objects: 1.0,
            ..cfg
        };
        let seen = reported(&binding, "b");
        assert!(
            seen.iter()
                .all(|&(g, b)| g.is_none() && b.is_some_and(|b| (0.0..=1.0).contains(&b))),
            "{seen:?}"
        );
    }

    /// Grounding targets on the 8x8 grid for one Shapes World picture, of two objects when
    /// `p_two_objects` is 1 and of one when it is 0.
    fn targets_on_8x8(p_two_objects: f64) -> inkdrop::train::grounding::GroundingTargets {
        let world = WorldConfig {
            p_two_objects,
            ..WorldConfig::default()
        };
        let sample = sample_at(&world, 0, 3);
        inkdrop::train::grounding::grounding_targets(
            &clip().tokenizer,
            std::slice::from_ref(&sample.caption),
            &[&sample.scene],
            &[8],
            16,
            &Device::Cpu,
        )
        .unwrap()
        .unwrap()
    }

    /// A test-size UNet that reads the test CLIP's text width.
    fn model_for(clip: &ClipBundle) -> UNetConfig {
        UNetConfig {
            cross_attention_dim: clip.model.config.text_width,
            ..UNetConfig::test()
        }
    }

    /// `train_unet` from scratch to the last step, with no callback.
    fn train_to_end(
        model: &UNetConfig,
        cfg: &UNetTrainConfig,
        data: &inkdrop::train::unet::LatentDataset,
        clip: &ClipBundle,
        vae: &AutoencoderKL,
        out: &std::path::Path,
        ckpt: &std::path::Path,
    ) -> inkdrop::train::unet::UNetTrainReport {
        train_unet(
            model,
            cfg,
            data,
            clip,
            vae,
            out,
            ckpt,
            None,
            false,
            &mut |_| true,
        )
        .unwrap()
        .unwrap()
    }

    fn tensors(p: &std::path::Path) -> Vec<(String, Vec<f32>)> {
        let l = inkdrop::weights::load(p, &Device::Cpu).unwrap();
        let mut v: Vec<(String, Vec<f32>)> = l
            .tensors
            .into_iter()
            .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn the_loop_runs_caches_latents_and_resumes_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (clip, vae) = (clip(), vae());
        let cache = dir.path().join("latents.safetensors");
        let data = latent_dataset(&vae, 0, 40, Some(&cache)).unwrap();
        assert_eq!(data.latents.dims(), &[40, 4, 8, 8]);
        assert_eq!(data.captions.len(), 40);
        let again = latent_dataset(&vae, 0, 40, Some(&cache)).unwrap();
        assert_eq!(again.captions, data.captions, "the cache reads back");
        // Another share of two-object scenes is another data set: the cache is not reused.
        let all_two = WorldConfig {
            p_two_objects: 1.0,
            ..WorldConfig::default()
        };
        let two = latent_dataset_of(&vae, &all_two, 0, 40, Some(&cache)).unwrap();
        assert_ne!(two.captions, data.captions);
        for c in &two.captions {
            let claim = inkdrop::shapes::caption::parse_claim(c).unwrap();
            assert_eq!(claim.objects.len(), 2, "{c}");
        }
        let model = model_for(&clip);
        let cfg = UNetTrainConfig {
            steps: 8,
            batch_size: 4,
            warmup: 2,
            checkpoint_every: 3,
            dataset_size: 40,
            ..UNetTrainConfig::default()
        };
        let (full, full_ckpt) = (
            dir.path().join("full.safetensors"),
            dir.path().join("full.ckpt"),
        );
        let mut losses = Vec::new();
        let report = train_unet(
            &model,
            &cfg,
            &data,
            &clip,
            &vae,
            &full,
            &full_ckpt,
            None,
            false,
            &mut |s| {
                losses.push(s.loss);
                true
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(losses.len(), 8);
        assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0));
        assert_eq!(report.loss_by_t.len(), 10);
        assert!(report.held_out_mse.is_finite());
        let (part, part_ckpt) = (
            dir.path().join("part.safetensors"),
            dir.path().join("part.ckpt"),
        );
        let stopped = train_unet(
            &model,
            &cfg,
            &data,
            &clip,
            &vae,
            &part,
            &part_ckpt,
            None,
            false,
            &mut |s| s.step < 5,
        )
        .unwrap();
        assert!(stopped.is_none());
        let resumed = train_unet(
            &model,
            &cfg,
            &data,
            &clip,
            &vae,
            &part,
            &part_ckpt,
            None,
            true,
            &mut |_| true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(resumed.resumed_from, 5);
        assert_eq!(
            tensors(&full),
            tensors(&part),
            "resumed weights (EMA) differ from the uninterrupted run"
        );
        // --stop-after writes a model at step 6 of the 8-step schedule; resuming finishes it.
        let (early, early_ckpt) = (
            dir.path().join("early.safetensors"),
            dir.path().join("early.ckpt"),
        );
        let train = |cfg: &UNetTrainConfig, resume: bool| {
            train_unet(
                &model,
                cfg,
                &data,
                &clip,
                &vae,
                &early,
                &early_ckpt,
                None,
                resume,
                &mut |_| true,
            )
            .unwrap()
            .unwrap()
        };
        let stop6 = UNetTrainConfig {
            stop_after: Some(6),
            ..cfg.clone()
        };
        assert_eq!(train(&stop6, false).steps, 6);
        assert_ne!(tensors(&full), tensors(&early), "stopped before the end");
        let finished = train(&cfg, true);
        assert_eq!((finished.resumed_from, finished.steps), (6, 8));
        assert_eq!(
            tensors(&full),
            tensors(&early),
            "a run stopped early and resumed equals the uninterrupted run"
        );
    }

    #[test]
    fn the_ema_warms_up_from_the_trained_weights_as_diffusers_does() {
        use inkdrop::train::unet::ema_decay_at;
        // diffusers' EMAModel.get_decay (decay 0.999, no use_ema_warmup): 0 at the first
        // update, then (1 + s) / (10 + s) until that passes the decay (s = 8,991).
        assert_eq!(ema_decay_at(0, 0.999, true), 0.0);
        assert_eq!(ema_decay_at(1, 0.999, true), 2.0 / 11.0);
        assert_eq!(ema_decay_at(90, 0.999, true), 0.91);
        assert_eq!(ema_decay_at(8_990, 0.999, true), 8_991.0 / 9_000.0);
        assert_eq!(ema_decay_at(20_000, 0.999, true), 0.999);
        assert_eq!(ema_decay_at(0, 0.999, false), 0.999);
        // After one step the warmed-up average is the trained weights themselves; the constant
        // decay keeps 99.9% of the initial ones.
        let dir = tempfile::tempdir().unwrap();
        let (clip, vae) = (clip(), vae());
        let data = latent_dataset(&vae, 0, 8, None).unwrap();
        let model = model_for(&clip);
        let one_step = |warm: bool| {
            let cfg = UNetTrainConfig {
                steps: 1,
                batch_size: 4,
                warmup: 1,
                dataset_size: 8,
                ema_warmup: warm,
                ..UNetTrainConfig::default()
            };
            let (out, ckpt) = (
                dir.path().join(format!("{warm}.safetensors")),
                dir.path().join(format!("{warm}.ckpt")),
            );
            train_to_end(&model, &cfg, &data, &clip, &vae, &out, &ckpt);
            let trained: std::collections::HashMap<String, Vec<f32>> =
                tensors(&ckpt).into_iter().collect();
            let ema = tensors(&out);
            let same = ema
                .iter()
                .filter(|(n, v)| trained.get(n) == Some(v))
                .count();
            (same, ema.len())
        };
        let (same, all) = one_step(true);
        assert_eq!(
            same, all,
            "warmed up: the EMA after step 0 is a copy of the weights"
        );
        let (same, _) = one_step(false);
        assert!(
            same < all / 2,
            "constant decay: {same} of {all} tensors equal the weights"
        );
    }

    #[test]
    fn a_v_prediction_model_on_a_zero_snr_schedule_trains_and_says_so_in_its_file() {
        use inkdrop::schedulers::PredictionType;
        use inkdrop::train::unet::min_snr_weight;
        use inkdrop::unet::Parameterization;
        let dir = tempfile::tempdir().unwrap();
        let (clip, vae) = (clip(), vae());
        let data = latent_dataset(&vae, 0, 40, None).unwrap();
        let model = model_for(&clip);
        let v = Parameterization {
            prediction_type: PredictionType::VPrediction,
            rescale_betas_zero_snr: true,
        };
        let cfg = UNetTrainConfig {
            steps: 3,
            batch_size: 4,
            warmup: 1,
            dataset_size: 40,
            parameterization: v,
            ..UNetTrainConfig::default()
        };
        let out = dir.path().join("v.safetensors");
        let ckpt = dir.path().join("v.ckpt");
        let mut losses = Vec::new();
        let report = train_unet(
            &model,
            &cfg,
            &data,
            &clip,
            &vae,
            &out,
            &ckpt,
            None,
            false,
            &mut |s| {
                losses.push(s.loss);
                true
            },
        )
        .unwrap()
        .unwrap();
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        assert!(report.held_out_mse.is_finite());
        let bundle = inkdrop::unet::bundle::UNetBundle::load(&out).unwrap();
        assert_eq!(bundle.parameterization, v);
        assert_eq!(bundle.schedule().unwrap().alpha_bar(999), 0.0);
        // At alpha_bar = 0, x_t is the noise: a v model's noise estimate there is x_t itself.
        let x_t = data.latents.narrow(0, 0, 2).unwrap();
        let ctx = bundle
            .encoder_hidden_states(&clip, &["a red circle".to_string(), String::new()])
            .unwrap();
        let eps = bundle.predict_noise(&x_t, &[999, 999], &ctx).unwrap();
        assert!(max_abs(&(eps - &x_t).unwrap()) < 1e-6);
        // DDPM through every timestep, 999 included (alpha_bar = 0 there): finite throughout.
        let mut rng = inkdrop::support::seeded_rng(1);
        let latents = inkdrop::unet::sample::ddpm_sample(
            &bundle.unet,
            &bundle.schedule().unwrap(),
            v.prediction_type,
            &ctx.narrow(0, 0, 1).unwrap(),
            &ctx.narrow(0, 1, 1).unwrap(),
            4.0,
            1000,
            &mut rng,
        )
        .unwrap();
        assert!(max_abs(&latents).is_finite());
        // Epsilon prediction cannot learn anything at alpha_bar = 0, so it is refused.
        let eps_zero = UNetTrainConfig {
            parameterization: Parameterization {
                prediction_type: PredictionType::Epsilon,
                rescale_betas_zero_snr: true,
            },
            ..cfg.clone()
        };
        let err = train_unet(
            &model,
            &eps_zero,
            &data,
            &clip,
            &vae,
            &out,
            &ckpt,
            None,
            false,
            &mut |_| true,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("v_prediction"), "{err}");
        // Min-SNR: eps-MSE weights min(SNR, 5) / SNR; v-MSE min(SNR + 1, 5) / (SNR + 1), which
        // keeps full weight at SNR = 0 and caps the clean end.
        assert_eq!(min_snr_weight(0.01, 5.0, PredictionType::Epsilon), 1.0);
        assert_eq!(min_snr_weight(0.0, 5.0, PredictionType::VPrediction), 1.0);
        assert!((min_snr_weight(99.0, 5.0, PredictionType::VPrediction) - 0.05).abs() < 1e-12);
        assert!((min_snr_weight(100.0, 5.0, PredictionType::Epsilon) - 0.05).abs() < 1e-12);
    }

    #[test]
    fn a_fine_tuned_text_encoder_learns_ships_in_the_unet_file_and_is_used_with_its_padding() {
        let dir = tempfile::tempdir().unwrap();
        let (clip, vae) = (clip(), vae());
        let data = latent_dataset(&vae, 0, 40, None).unwrap();
        let model = model_for(&clip);
        let cfg = UNetTrainConfig {
            steps: 4,
            batch_size: 4,
            warmup: 1,
            dataset_size: 40,
            // No decay and no EMA: a tensor that moved was moved by its gradient.
            weight_decay: 0.0,
            ema_decay: 0.0,
            caption_dropout: 0.0,
            train_text_encoder: true,
            ..UNetTrainConfig::default()
        };
        let out = dir.path().join("unet.safetensors");
        let ckpt = dir.path().join("unet.ckpt");
        train_to_end(&model, &cfg, &data, &clip, &vae, &out, &ckpt);
        let saved = inkdrop::weights::load(&out, &Device::Cpu).unwrap();
        let clip_vars = clip.varmap.data().lock().unwrap().clone();
        let mut text_tensors = 0;
        for (name, clip_var) in &clip_vars {
            let Some(rest) = name.strip_prefix("text_model.") else {
                continue;
            };
            let tuned = &saved.tensors[&format!("text_encoder.{rest}")];
            assert_ne!(
                max_abs(&(tuned - clip_var.as_tensor()).unwrap()),
                0.0,
                "{name} did not move: the denoising loss's gradient does not reach it"
            );
            text_tensors += 1;
        }
        assert!(text_tensors > 10, "{text_tensors}");
        // CLIP itself is untouched, and the UNet's file carries the tuned tower, which the
        // bundle then conditions on.
        let bundle = inkdrop::unet::bundle::UNetBundle::load(&out).unwrap();
        assert!(bundle.text_encoder.is_some());
        let texts = vec![
            "a red circle above a blue square".to_string(),
            String::new(),
        ];
        let own = bundle.encoder_hidden_states(&clip, &texts).unwrap();
        let frozen = clip.encoder_hidden_states(&texts).unwrap();
        assert_eq!(own.dims(), frozen.dims());
        assert!(max_abs(&(own - frozen).unwrap()) > 0.0);
        // Without the option the file has no tower and the bundle reads CLIP's.
        let plain = UNetTrainConfig {
            train_text_encoder: false,
            ..cfg.clone()
        };
        let out2 = dir.path().join("plain.safetensors");
        train_to_end(&model, &plain, &data, &clip, &vae, &out2, &ckpt);
        let bundle = inkdrop::unet::bundle::UNetBundle::load(&out2).unwrap();
        assert!(bundle.text_encoder.is_none());
        let same = bundle.encoder_hidden_states(&clip, &texts).unwrap();
        let frozen = clip.encoder_hidden_states(&texts).unwrap();
        assert_eq!(max_abs(&(same - frozen.clone()).unwrap()), 0.0);
        // With zeroed padding the file says so, and the bundle reads CLIP's states up to each
        // text's <|endoftext|> and zeros after it.
        let zeroed = UNetTrainConfig {
            context_padding: inkdrop::unet::text_encoder::ContextPadding::Zeroed,
            ..plain.clone()
        };
        let out3 = dir.path().join("zeroed.safetensors");
        train_to_end(
            &model,
            &zeroed,
            &data,
            &clip,
            &vae,
            &out3,
            &dir.path().join("zeroed_ckpt.safetensors"),
        );
        let bundle = inkdrop::unet::bundle::UNetBundle::load(&out3).unwrap();
        assert_eq!(
            bundle.context_padding,
            inkdrop::unet::text_encoder::ContextPadding::Zeroed
        );
        let ctx = bundle.encoder_hidden_states(&clip, &texts).unwrap(); // (2, 16, W)
        for (row, text) in texts.iter().enumerate() {
            let eot = clip.tokenizer.encode(text).unwrap().eot_index;
            let kept = ctx.get(row).unwrap().narrow(0, 0, eot + 1).unwrap();
            let want = frozen.get(row).unwrap().narrow(0, 0, eot + 1).unwrap();
            assert_eq!(max_abs(&(kept - want).unwrap()), 0.0, "{text:?}");
            let pad = ctx.get(row).unwrap().narrow(0, eot + 1, 15 - eot).unwrap();
            assert_eq!(max_abs(&pad), 0.0, "{text:?}: padding not zeroed");
            assert!(
                max_abs(
                    &frozen
                        .get(row)
                        .unwrap()
                        .narrow(0, eot + 1, 15 - eot)
                        .unwrap()
                ) > 0.0
            );
        }
    }
}

#[test]
fn reweighting_one_token_edits_only_the_chosen_rows_and_token() {
    use inkdrop::unet::attention::Reweight;
    let cfg = UNetConfig::test();
    let (unet, _) = model(&cfg, 0);
    let x = rand(&[2, 4, 8, 8], 1);
    let t = Tensor::new(&[10f32, 20.0], &Device::Cpu).unwrap();
    let ctx = rand(&[2, 16, cfg.cross_attention_dim], 2);
    // The unedited output through the same (recording) attention path, so "scale 1" can be
    // compared bit for bit.
    let plain = unet
        .forward(&x, &t, &ctx, Some(&AttentionRecorder::cross()))
        .unwrap();
    let run = |scale: f64| {
        let rec = AttentionRecorder {
            reweight: Some(Reweight {
                token: 5,
                scale,
                rows: (1, 1),
            }),
            ..AttentionRecorder::cross()
        };
        let out = unet.forward(&x, &t, &ctx, Some(&rec)).unwrap();
        (out, rec.take())
    };
    let (same, _) = run(1.0);
    assert_eq!(max_abs_diff(&same, &plain), 0.0, "scale 1 changes nothing");
    let (silenced, maps) = run(0.0);
    assert_eq!(
        max_abs_diff(&silenced.get(0).unwrap(), &plain.get(0).unwrap()),
        0.0,
        "row 0 untouched"
    );
    assert!(
        max_abs_diff(&silenced.get(1).unwrap(), &plain.get(1).unwrap()) > 1e-6,
        "row 1 edited"
    );
    for m in &maps {
        let p = m.probs.get(1).unwrap().narrow(2, 5, 1).unwrap(); // (heads, HW, 1)
        assert_eq!(
            p.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let kept = m.probs.get(0).unwrap().narrow(2, 5, 1).unwrap();
        assert!(kept.max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }
}

#[test]
fn injected_maps_replace_the_chosen_rows_in_every_cross_attention_layer() {
    use inkdrop::unet::attention::Injection;
    let cfg = UNetConfig::test();
    let (unet, _) = model(&cfg, 0);
    let x = rand(&[2, 4, 8, 8], 1);
    let t = Tensor::new(&[10f32, 20.0], &Device::Cpu).unwrap();
    let source_ctx = rand(&[2, 16, cfg.cross_attention_dim], 2);
    let new_ctx = rand(&[2, 16, cfg.cross_attention_dim], 3);
    let record = |ctx: &Tensor, inject: Option<Injection>| {
        let rec = AttentionRecorder {
            inject,
            ..AttentionRecorder::cross()
        };
        let out = unet.forward(&x, &t, ctx, Some(&rec)).unwrap();
        (out, rec.take())
    };
    let (_, source) = record(&source_ctx, None);
    let (plain_out, plain) = record(&new_ctx, None);
    // Row 1's maps of the source run, one per layer, go into row 1 of the new run.
    let maps: Vec<Tensor> = source
        .iter()
        .map(|m| m.probs.narrow(0, 1, 1).unwrap())
        .collect();
    let (out, injected) = record(&new_ctx, Some(Injection::new(maps, (1, 1))));
    assert_eq!(injected.len(), source.len());
    for ((s, p), i) in source.iter().zip(&plain).zip(&injected) {
        let row = |m: &Tensor, r: usize| m.get(r).unwrap().flatten_all().unwrap();
        assert_eq!(
            max_abs(&(row(&i.probs, 1) - row(&s.probs, 1)).unwrap()),
            0.0
        );
        assert_eq!(
            max_abs(&(row(&i.probs, 0) - row(&p.probs, 0)).unwrap()),
            0.0
        );
        assert!(max_abs(&(row(&s.probs, 1) - row(&p.probs, 1)).unwrap()) > 1e-6);
    }
    let row_diff = |r: usize| max_abs(&(out.get(r).unwrap() - plain_out.get(r).unwrap()).unwrap());
    assert_eq!(row_diff(0), 0.0, "row 0 keeps its own attention");
    assert!(row_diff(1) > 1e-6, "row 1 follows the injected maps");
    // Too few maps for the layers is an error, not a silent partial edit.
    let short = source[..2]
        .iter()
        .map(|m| m.probs.narrow(0, 1, 1).unwrap())
        .collect();
    let rec = AttentionRecorder {
        inject: Some(Injection::new(short, (1, 1))),
        ..AttentionRecorder::cross()
    };
    assert!(unet.forward(&x, &t, &new_ctx, Some(&rec)).is_err());
}
