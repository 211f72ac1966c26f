//! Benchmarks of the convolution, GroupNorm, attention and linear-layer kernels against candle's own ops, at
//! the layer shapes of the VAE and UNet, with GFLOP/s and the machine's matrix-product peak for
//! scale.
//! Prints medians. GFLOP/s counts a direct convolution's 2 * C_in * kh * kw multiply-adds per
//! output value, also for the 3x3 convolutions that take the Winograd path (which does 16/36 of
//! them): the effective rate, as cuDNN's and oneDNN's benchmarks give it. Backward passes
//! start from a given output gradient (`support::bench::backward_with`), as a layer's does in
//! a network and as `benches/torch_kernels.py` does with PyTorch's `y.backward(dy)`.
//!
//! ```text
//! cargo run --release --example bench_kernels              # batch 32, 9 repetitions each
//! cargo run --release --example bench_kernels -- --batch-size 8 --reps 21
//! ```
//!
//! Timings vary with the machine and its load; compare numbers from one run. The sgemm peak is
//! the median of measurements taken between the convolution rows, so a slow stretch moves the
//! "of sgemm's" column less.

use inkdrop::support::bench::{backward_with, median_ms};

use candle_core::{Device, Module, Tensor, Var};
use clap::Parser;
use inkdrop::nn::{attention_reference, conv2d, fused_attention, group_norm, linear, Padding};
use inkdrop::support::table::Table;
use rayon::prelude::*;

/// Benchmark conv2d, GroupNorm, attention and linear layers, ours against candle's.
#[derive(Debug, Parser)]
struct Args {
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 9)]
    reps: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Only this table (for profiling or comparing one kernel).
    #[arg(long, value_enum)]
    only: Option<Kernel>,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum Kernel {
    Conv,
    GroupNorm,
    Attention,
    Linear,
}

fn main() -> std::process::ExitCode {
    inkdrop::support::run_main(|| run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let wanted = |k: Kernel| args.only.is_none_or(|only| only == k);
    if wanted(Kernel::Conv) {
        conv(&args)?;
    }
    if wanted(Kernel::GroupNorm) {
        group_norms(&args)?;
    }
    if wanted(Kernel::Attention) {
        attention(&args)?;
    }
    if wanted(Kernel::Linear) {
        linears(&args)?;
    }
    Ok(())
}

/// A standard normal tensor source, seeded.
fn randn_source() -> impl FnMut(&[usize]) -> inkdrop::Result<Tensor> {
    let mut rng = inkdrop::support::seeded_rng(0);
    move |shape: &[usize]| inkdrop::noising::randn_tensor(shape, &mut rng, &Device::Cpu)
}

/// The convolution table, with the sgemm peak for scale.
fn conv(args: &Args) -> anyhow::Result<()> {
    let (r, n) = (args.reps, args.batch_size);
    let mut randn = randn_source();

    // The matrix-product peak that the convolutions are compared with, measured before every
    // convolution row and once more at the end (the median of those medians), so that one
    // slow stretch of a shared machine does not set the scale for the whole table.
    let a = randn(&[1024, 1024])?;
    let sgemm = || median_ms(r, || a.matmul(&a).map(drop));
    let mut sgemm_ms = vec![];

    let mut table = Table::new([
        "conv2d",
        "input",
        "candle fwd ms",
        "ours fwd ms",
        "ours fwd GFLOP/s",
        "candle fwd+bwd ms",
        "ours fwd+bwd ms",
        "ours fwd+bwd GFLOP/s",
        "of sgemm's",
        "fwd+bwd speed-up",
    ]);
    let mut rows = vec![];
    // (C_in, C_out, size, kernel, stride): the VAE's and UNet's layers.
    for (c_in, c_out, size, k, stride) in [
        (3, 32, 32, 3, 1),
        (32, 32, 32, 3, 1),
        (64, 32, 32, 3, 1),
        (32, 32, 32, 3, 2),
        (64, 64, 16, 3, 1),
        (64, 64, 8, 3, 1),
        (128, 128, 8, 3, 1),
        (192, 64, 8, 3, 1),
        (128, 128, 4, 3, 1),
        (64, 128, 8, 1, 1),
    ] {
        let pad = if k == 3 {
            Padding::same(1)
        } else {
            Padding::same(0)
        };
        sgemm_ms.push(sgemm()?);
        let x = Var::from_tensor(&randn(&[n, c_in, size, size])?)?;
        let w = Var::from_tensor(&(randn(&[c_out, c_in, k, k])? * 0.1)?)?;
        let b = Var::from_tensor(&randn(&[c_out])?)?;
        let out = (size + 2 * pad.top - k) / stride + 1;
        let flops = 2.0 * (n * c_out * out * out * c_in * k * k) as f64;
        let theirs = || {
            x.conv2d(&w, pad.top, stride, 1, 1)?
                .broadcast_add(&b.reshape((1, c_out, 1, 1))?)
        };
        let ours = || conv2d(&x, &w, &b, stride, pad);
        let tf = median_ms(r, || theirs().map(drop))?;
        let of = median_ms(r, || ours().map(drop))?;
        // Backward from a given output gradient, as a layer's gradient arrives in a network.
        let dy = ours()?.ones_like()?;
        let tb = median_ms(r, || backward_with(&theirs()?, &dy).map(drop))?;
        let ob = median_ms(r, || backward_with(&ours()?, &dy).map(drop))?;
        rows.push((k, stride, c_in, c_out, size, tf, of, tb, ob, flops));
    }
    sgemm_ms.push(sgemm()?);
    sgemm_ms.sort_by(f64::total_cmp);
    let gflops = |ms: f64| 2.0 * 1024f64.powi(3) / ms / 1e6;
    let mm = sgemm_ms[sgemm_ms.len() / 2];
    let sgemm_gflops = gflops(mm);
    println!(
        "sgemm 1024^3: {mm:.2} ms = {sgemm_gflops:.0} GFLOP/s (the machine's matrix-product peak; \
         median of {} measurements between the rows, {:.0}-{:.0} GFLOP/s)\n",
        sgemm_ms.len(),
        gflops(sgemm_ms[sgemm_ms.len() - 1]),
        gflops(sgemm_ms[0]),
    );
    for (k, stride, c_in, c_out, size, tf, of, tb, ob, flops) in rows {
        table.row([
            format!("{k}x{k} s{stride} {c_in}->{c_out}"),
            format!("{n}x{c_in}x{size}x{size}"),
            format!("{tf:.2}"),
            format!("{of:.2}"),
            format!("{:.0}", flops / of / 1e6),
            format!("{tb:.2}"),
            format!("{ob:.2}"),
            format!("{:.0}", 3.0 * flops / ob / 1e6),
            format!("{:.0}%", 100.0 * 3.0 * flops / ob / 1e6 / sgemm_gflops),
            format!("{:.1}x", tb / ob),
        ]);
    }
    println!("{table}\n");
    Ok(())
}

/// The GroupNorm table, with a memory-bandwidth bound for scale.
fn group_norms(args: &Args) -> anyhow::Result<()> {
    let (dev, r, n) = (Device::Cpu, args.reps, args.batch_size);
    let mut randn = randn_source();
    let mut gn = Table::new([
        "GroupNorm",
        "input",
        "candle fwd+bwd ms",
        "ours fwd ms",
        "ours fwd+bwd ms",
        "ours GB/s",
        "bound ms",
        "ours / bound",
        "2-core bound ms",
        "ours / 2-core bound",
        "speed-up",
    ]);
    // Plain GroupNorm (the attention blocks' norm) and GroupNorm + SiLU (every ResNet block's).
    let gn_shapes = [(32, 32), (64, 16), (128, 8)];
    for (silu, (c, size)) in [false, true]
        .into_iter()
        .flat_map(|s| gn_shapes.map(|cs| (s, cs)))
    {
        let x = Var::from_tensor(&randn(&[n, c, size, size])?)?;
        let g = Var::from_tensor(&Tensor::ones(c, candle_core::DType::F32, &dev)?)?;
        let b = Var::from_tensor(&Tensor::zeros(c, candle_core::DType::F32, &dev)?)?;
        let reference =
            candle_nn::GroupNorm::new(g.as_tensor().clone(), b.as_tensor().clone(), c, 32, 1e-6)?;
        // Backward from a given output gradient, as a layer's gradient arrives in a network.
        let dy = x.ones_like()?;
        let tb = median_ms(r, || {
            let y = reference.forward(&x)?;
            let y = if silu { candle_nn::ops::silu(&y)? } else { y };
            backward_with(&y, &dy).map(drop)
        })?;
        let of = median_ms(r, || group_norm(&x, &g, &b, 32, 1e-6, silu).map(drop))?;
        let ob = median_ms(r, || {
            backward_with(&group_norm(&x, &g, &b, 32, 1e-6, silu)?, &dy).map(drop)
        })?;
        // Bytes moved at the least: read x, write y; read x and dy, write dx: five passes
        // over a tensor of x's size. A copy of x (one read, one write: two passes) measures
        // what this machine's memory moves at that size, so the bound is 2.5 copies.
        let bytes = 5.0 * (x.elem_count() * 4) as f64;
        let copy = median_ms(r, || x.as_tensor().copy().map(drop))?;
        let bound = 2.5 * copy;
        // The same copy on every core (candle's runs on one): our kernels use both cores,
        // and at these sizes each core moves its share within its own L2 cache.
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let copy_all_cores = median_ms(r, || {
            let copied: Vec<f32> = xs.par_iter().copied().collect();
            drop(copied);
            Ok::<(), anyhow::Error>(())
        })?;
        let bound_all_cores = 2.5 * copy_all_cores;
        gn.row([
            format!(
                "32 groups, {c} channels{}",
                if silu { " + SiLU" } else { "" }
            ),
            format!("{n}x{c}x{size}x{size}"),
            format!("{tb:.2}"),
            format!("{of:.2}"),
            format!("{ob:.2}"),
            format!("{:.1}", bytes / ob / 1e6),
            format!("{bound:.2}"),
            format!("{:.1}x", ob / bound),
            format!("{bound_all_cores:.2}"),
            format!("{:.1}x", ob / bound_all_cores),
            format!("{:.1}x", tb / ob),
        ]);
    }
    println!("{gn}\n");
    Ok(())
}

/// The attention table: the UNets' shapes, against candle's composed ops.
fn attention(args: &Args) -> anyhow::Result<()> {
    let (r, n) = (args.reps, args.batch_size);
    let mut randn = randn_source();
    let mut attn = Table::new([
        "attention (8 heads)",
        "q / k, v",
        "candle fwd ms",
        "ours fwd ms",
        "candle fwd+bwd ms",
        "ours fwd+bwd ms",
        "fwd+bwd speed-up",
    ]);
    // (N, T, C): the UNets' self-attention (T = N) and cross-attention over the 16 text tokens,
    // at 16x16 and 8x8 (the reference config, 32 and 64 channels) and 8x8 and 4x4 (ours,
    // 64 and 128).
    let tokens = inkdrop::text::tokenizer::CONTEXT_LENGTH;
    for (kind, n_q, t, c) in [
        ("self", 256, 256, 32),
        ("cross", 256, tokens, 32),
        ("self", 64, 64, 64),
        ("cross", 64, tokens, 64),
        ("self", 16, 16, 128),
        ("cross", 16, tokens, 128),
    ] {
        let heads = 8;
        let q = Var::from_tensor(&randn(&[n, n_q, c])?)?;
        let k = Var::from_tensor(&randn(&[n, t, c])?)?;
        let v = Var::from_tensor(&randn(&[n, t, c])?)?;
        let scale = 1.0 / ((c / heads) as f64).sqrt();
        let theirs = || attention_reference(&q, &k, &v, heads, scale);
        let ours = || fused_attention(&q, &k, &v, heads, scale);
        let tf = median_ms(r, || theirs().map(drop))?;
        let of = median_ms(r, || ours().map(drop))?;
        let dy = ours()?.ones_like()?;
        let tb = median_ms(r, || backward_with(&theirs()?, &dy).map(drop))?;
        let ob = median_ms(r, || backward_with(&ours()?, &dy).map(drop))?;
        attn.row([
            format!("{kind}, {} channels each", c / heads),
            format!("{n}x{n_q}x{c} / {n}x{t}x{c}"),
            format!("{tf:.2}"),
            format!("{of:.2}"),
            format!("{tb:.2}"),
            format!("{ob:.2}"),
            format!("{:.1}x", tb / ob),
        ]);
    }
    println!("{attn}");
    Ok(())
}

/// The linear-layer table: `y = x W^T + b` at the shapes of a `train all` UNet step (the
/// reference config's transformers at 16x16 and 8x8 and the 128-wide text encoder it trains,
/// over a batch of captions of 16 tokens), against candle's `matmul` + `broadcast_add`.
fn linears(args: &Args) -> anyhow::Result<()> {
    let (r, n) = (args.reps, args.batch_size);
    let mut randn = randn_source();
    let tokens = inkdrop::text::tokenizer::CONTEXT_LENGTH;
    let mut table = Table::new([
        "linear",
        "x",
        "candle fwd ms",
        "ours fwd ms",
        "candle fwd+bwd ms",
        "ours fwd+bwd ms",
        "ours fwd+bwd GFLOP/s",
        "fwd+bwd speed-up",
    ]);
    // (what, rows per image, in, out)
    for (what, per_image, din, dout) in [
        ("attention q/k/v/out, 16x16", 256, 32, 32),
        ("GEGLU in, 16x16", 256, 32, 256),
        ("GEGLU out, 16x16", 256, 128, 32),
        ("attention q/k/v/out, 8x8", 64, 64, 64),
        ("GEGLU in, 8x8", 64, 64, 512),
        ("cross-attention k/v", tokens, 128, 64),
        ("text encoder q/k/v/out", tokens, 128, 128),
        ("text encoder MLP in", tokens, 128, 512),
        ("text encoder MLP out", tokens, 512, 128),
    ] {
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
        let layer = linear(din, dout, vb)?;
        let (w, b) = {
            let vars = varmap.data().lock().map_err(|e| anyhow::anyhow!("{e}"))?;
            (vars["weight"].clone(), vars["bias"].clone())
        };
        let rows = n * per_image;
        let x = Var::from_tensor(&randn(&[rows, din])?)?;
        let theirs = || x.matmul(&w.t()?)?.broadcast_add(&b);
        let ours = || layer.forward(&x);
        let tf = median_ms(r, || theirs().map(drop))?;
        let of = median_ms(r, || ours().map(drop))?;
        let dy = ours()?.ones_like()?;
        let tb = median_ms(r, || backward_with(&theirs()?, &dy).map(drop))?;
        let ob = median_ms(r, || backward_with(&ours()?, &dy).map(drop))?;
        let flops = 3.0 * 2.0 * (rows * din * dout) as f64;
        table.row([
            what.to_string(),
            format!("{rows}x{din} -> {dout}"),
            format!("{tf:.3}"),
            format!("{of:.3}"),
            format!("{tb:.3}"),
            format!("{ob:.3}"),
            format!("{:.0}", flops / ob / 1e6),
            format!("{:.1}x", tb / ob),
        ]);
    }
    println!("{table}");
    Ok(())
}
