//! The fused ops against candle's composed ops (values and gradients) and against finite
//! differences, on odd shapes.

use candle_core::{DType, Device, Module, Tensor, Var, D};
use inkdrop::nn::{
    bias_add, layer_norm, layer_norm_reference, linear, linear_no_bias, quick_gelu,
    quick_gelu_reference, softmax_last_dim,
};

mod common;
use common::{max_abs_diff, rand, weighted_sum};

#[test]
fn softmax_matches_candle_values_and_gradients() {
    for shape in [vec![1, 7], vec![3, 5, 65], vec![2, 1, 16, 16]] {
        let x = Var::from_tensor(&(rand(&shape, 1) * 3.0).unwrap()).unwrap();
        let w = rand(&shape, 2);
        let ours = softmax_last_dim(&x).unwrap();
        let theirs = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-6);
        let g1 = weighted_sum(&ours, &w).backward().unwrap();
        let g2 = weighted_sum(&theirs, &w).backward().unwrap();
        assert!(
            max_abs_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-5,
            "{shape:?}"
        );
    }
}

#[test]
fn softmax_gives_exact_zeros_under_a_causal_mask_and_splits_rows_across_threads() {
    // 2,100 rows of 37: several parallel work items; the mask's -inf must give exactly 0.
    let scores = (rand(&[3, 700, 37], 7) * 4.0).unwrap();
    let mask = inkdrop::nn::causal_mask(37, &candle_core::Device::Cpu)
        .unwrap()
        .narrow(0, 0, 37)
        .unwrap();
    let mask = mask.repeat((1, 19, 1)).unwrap().narrow(1, 0, 700).unwrap(); // (1, 700, 37)
    let x = scores.broadcast_add(&mask).unwrap();
    let ours = softmax_last_dim(&x).unwrap();
    let theirs = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
    assert!(max_abs_diff(&ours, &theirs) < 1e-6);
    let (p, m) = (
        ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert!(p.iter().zip(&m).all(|(&p, &m)| m.is_finite() || p == 0.0));
}

#[test]
fn fused_attention_matches_the_composed_ops_values_and_all_three_gradients() {
    // (B, N, T, C, heads): self- and cross-attention, one head, batch 1, N != T, odd sizes;
    // the row kernels' head widths 1, 2, 4, 8, 16 with T a whole vector (16), a partial one
    // (37, 3, 17) and N past one parallel task (70 rows); widths 5, 6 and 32 take the
    // matrix-product path.
    let shapes = [
        (2, 7, 7, 12, 3),
        (1, 9, 4, 10, 2),
        (3, 5, 11, 6, 1),
        (1, 6, 3, 16, 16),
        (2, 9, 37, 16, 8),
        (1, 70, 9, 8, 2),
        (2, 20, 16, 64, 8),
        (2, 5, 17, 32, 2),
        (1, 4, 5, 64, 2),
    ];
    for (b, n, t, c, heads) in shapes {
        let q = Var::from_tensor(&rand(&[b, n, c], 11)).unwrap();
        let k = Var::from_tensor(&rand(&[b, t, c], 12)).unwrap();
        let v = Var::from_tensor(&rand(&[b, t, c], 13)).unwrap();
        let w = rand(&[b, n, c], 14);
        let scale = 1.0 / ((c / heads) as f64).sqrt();
        let ours = inkdrop::nn::fused_attention(&q, &k, &v, heads, scale).unwrap();
        let theirs = inkdrop::nn::attention_reference(&q, &k, &v, heads, scale).unwrap();
        assert!(
            max_abs_diff(&ours, &theirs) < 1e-5,
            "{b} {n} {t} {c} {heads}"
        );
        let at = format!("{b} {n} {t} {c} {heads}");
        assert_qkv_gradients_match(&ours, &theirs, &w, [&q, &k, &v], &at);
    }
}

/// dQ, dK and dV of `sum(w * ours)` and `sum(w * theirs)` agree within 1e-4.
fn assert_qkv_gradients_match(
    ours: &Tensor,
    theirs: &Tensor,
    w: &Tensor,
    qkv: [&Var; 3],
    at: &str,
) {
    let g1 = weighted_sum(ours, w).backward().unwrap();
    let g2 = weighted_sum(theirs, w).backward().unwrap();
    for (name, x) in ["q", "k", "v"].into_iter().zip(qkv) {
        let diff = max_abs_diff(g1.get(x).unwrap(), g2.get(x).unwrap());
        assert!(diff < 1e-4, "d{name} differs by {diff} at {at}");
    }
}

#[test]
fn causal_attention_matches_the_masked_composed_ops_values_and_gradients() {
    // (B, T, C, heads): CLIP's text transformer (heads of 32, the matrix-product path), a head
    // width the row kernels would take (4), one token.
    for (b, t, c, heads) in [(2, 16, 128, 4), (3, 7, 8, 2), (1, 1, 6, 3)] {
        let q = Var::from_tensor(&rand(&[b, t, c], 21)).unwrap();
        let k = Var::from_tensor(&rand(&[b, t, c], 22)).unwrap();
        let v = Var::from_tensor(&rand(&[b, t, c], 23)).unwrap();
        let w = rand(&[b, t, c], 24);
        let d = c / heads;
        let scale = 1.0 / (d as f64).sqrt();
        let ours = inkdrop::nn::fused_causal_attention(&q, &k, &v, heads, scale).unwrap();
        // The composition the text transformer used: scores plus the (T, T) mask of 0 and -inf.
        let split = |y: &Tensor| {
            y.reshape((b, t, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let mask = inkdrop::nn::causal_mask(t, &Device::Cpu).unwrap();
        let scores = (split(&q).matmul(&split(&k).t().unwrap()).unwrap() * scale)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let theirs = probs
            .matmul(&split(&v))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, c))
            .unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-5, "{b} {t} {c} {heads}");
        // The first token sees only itself: its output is its own value.
        let first = |x: &Tensor| x.narrow(1, 0, 1).unwrap();
        assert!(max_abs_diff(&first(&ours), &first(&v)) < 1e-6);
        let at = format!("causal, {b} {t} {c} {heads}");
        assert_qkv_gradients_match(&ours, &theirs, &w, [&q, &k, &v], &at);
    }
    // Queries and keys of different lengths are not one sequence.
    let (q, k) = (rand(&[1, 3, 4], 1), rand(&[1, 5, 4], 2));
    assert!(inkdrop::nn::fused_causal_attention(&q, &k, &k, 2, 0.5).is_err());
}

#[test]
fn fused_attention_refuses_bad_shapes_and_scales() {
    let q = rand(&[1, 4, 6], 1);
    let k = rand(&[1, 3, 6], 2);
    let err = inkdrop::nn::fused_attention(&q, &k, &k, 4, 0.5).unwrap_err();
    assert!(
        err.to_string().contains("not divisible by 4 heads"),
        "{err}"
    );
    let err = inkdrop::nn::fused_attention(&q, &k, &rand(&[1, 2, 6], 3), 2, 0.5).unwrap_err();
    assert!(err.to_string().contains("do not fit together"), "{err}");
    let none = rand(&[1, 0, 6], 4);
    let err = inkdrop::nn::fused_attention(&q, &none, &none, 2, 0.5).unwrap_err();
    assert!(err.to_string().contains("at least one query, key"), "{err}");
    let err = inkdrop::nn::fused_attention(&q, &k, &k, 2, -1.0).unwrap_err();
    assert!(
        err.to_string().contains("must be a positive number"),
        "{err}"
    );
}

#[test]
fn layer_norm_matches_reference_values_and_all_three_gradients() {
    // The last shape's 2,100 rows are split into several parallel chunks, whose partial dw
    // and db are summed.
    for shape in [vec![1, 3], vec![4, 9, 33], vec![2, 128], vec![3, 700, 37]] {
        let n = *shape.last().unwrap();
        let x = Var::from_tensor(&rand(&shape, 3)).unwrap();
        let g = Var::from_tensor(&(rand(&[n], 4) + 1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&rand(&[n], 5)).unwrap();
        let w = rand(&shape, 6);
        let ours = layer_norm(&x, &g, &b, 1e-5).unwrap();
        let theirs = layer_norm_reference(&x, &g, &b, 1e-5).unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-5);
        let g1 = weighted_sum(&ours, &w).backward().unwrap();
        let g2 = weighted_sum(&theirs, &w).backward().unwrap();
        for (name, v) in [("x", &x), ("weight", &g), ("bias", &b)] {
            let (ours, theirs) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            // Relative to the largest gradient: dweight over 2,100 rows reaches about 50, where
            // f32 sums in another order differ by a few 1e-5.
            let size = theirs.abs().unwrap().max_all().unwrap();
            let size = size.to_scalar::<f32>().unwrap().max(1.0);
            let d = max_abs_diff(ours, theirs) / size;
            assert!(d < 1e-5, "{shape:?} d{name}: {d} relative");
        }
    }
}

#[test]
fn quick_gelu_and_bias_add_match_reference_gradients() {
    // 5 * 700 rows of 12: several parallel chunks, in the sum too.
    let x = Var::from_tensor(&(rand(&[5, 700, 12], 7) * 2.0).unwrap()).unwrap();
    let b = Var::from_tensor(&rand(&[12], 8)).unwrap();
    let w = rand(&[5, 700, 12], 9);
    let ours = quick_gelu(&bias_add(&x, &b).unwrap()).unwrap();
    let theirs = quick_gelu_reference(&x.broadcast_add(&b).unwrap()).unwrap();
    assert!(max_abs_diff(&ours, &theirs) < 1e-5);
    let g1 = weighted_sum(&ours, &w).backward().unwrap();
    let g2 = weighted_sum(&theirs, &w).backward().unwrap();
    assert!(max_abs_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-5);
    assert!(max_abs_diff(g1.get(&b).unwrap(), g2.get(&b).unwrap()) < 1e-4);
}

#[test]
fn linear_matches_the_composed_product_values_and_all_three_gradients() {
    // (leading dims, in, out, bias): one row, odd widths, a 3-D input, rows across threads.
    let cases = [
        (vec![1], 1, 1, true),
        (vec![7], 5, 3, true),
        (vec![2, 33], 17, 9, false),
        (vec![3, 700], 64, 96, true),
        (vec![300], 128, 256, false),
    ];
    for (lead, din, dout, with_bias) in cases {
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let layer = if with_bias {
            linear(din, dout, vb.pp("l"))
        } else {
            linear_no_bias(din, dout, vb.pp("l"))
        }
        .unwrap();
        let vars = varmap.data().lock().unwrap().clone();
        let (w, b) = (&vars["l.weight"], vars.get("l.bias"));
        let shape = [lead.clone(), vec![din]].concat();
        let x = Var::from_tensor(&rand(&shape, 3)).unwrap();
        let ours = layer.forward(&x).unwrap();
        let rows = shape[..shape.len() - 1].iter().product::<usize>();
        let product = x.reshape((rows, din)).unwrap().matmul(&w.t().unwrap());
        let mut theirs = product.unwrap();
        if let Some(b) = b {
            theirs = theirs.broadcast_add(b).unwrap();
        }
        let theirs = theirs.reshape([lead, vec![dout]].concat()).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        assert!(max_abs_diff(&ours, &theirs) < 1e-5, "{shape:?} -> {dout}");
        let r = rand(ours.dims(), 4);
        let g1 = weighted_sum(&ours, &r).backward().unwrap();
        let g2 = weighted_sum(&theirs, &r).backward().unwrap();
        let mut params = vec![("x", x.as_tensor()), ("weight", w.as_tensor())];
        params.extend(b.map(|b| ("bias", b.as_tensor())));
        for (name, t) in params {
            let (a, e) = (g1.get(t).unwrap(), g2.get(t).unwrap());
            assert_eq!(a.dims(), t.dims(), "d{name}");
            // Relative to the gradient's size: dW and db sum 2,100 rows, in pieces (f32 rounding
            // of about 1e-6 of the largest entry).
            let scale = e
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = max_abs_diff(a, e);
            assert!(
                diff < 1e-5 * scale.max(1.0),
                "d{name}, {shape:?} -> {dout}: {diff} of {scale}"
            );
        }
    }
}

/// No rows: an empty output, and a weight gradient of zeros (an empty sum), not a panic.
#[test]
fn linear_takes_an_empty_batch() {
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let layer = linear(4, 3, vb.pp("l")).unwrap();
    let w = varmap.data().lock().unwrap()["l.weight"].clone();
    let x = Var::from_tensor(&Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let y = layer.forward(&x).unwrap();
    assert_eq!(y.dims(), &[0, 3]);
    let g = y.sum_all().unwrap().backward().unwrap();
    let dw: Vec<f32> = g.get(&w).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(dw, vec![0f32; 12]);
}

/// The products split rows (and the weight gradient's sum over rows) across threads in a way
/// fixed by the shape alone: one thread and three give the same bits.
#[test]
fn linear_gives_the_same_bits_on_any_number_of_threads() {
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let layer = linear(48, 40, vb.pp("l")).unwrap();
    let w = varmap.data().lock().unwrap()["l.weight"].clone();
    let x = Var::from_tensor(&rand(&[2100, 48], 5)).unwrap();
    let r = rand(&[2100, 40], 6);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let y = layer.forward(&x).unwrap();
            let g = weighted_sum(&y, &r).backward().unwrap();
            [y, g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone()]
                .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn transpose_copy_matches_candle_values_and_gradients() {
    use inkdrop::nn::transpose_copy;
    // A feature map to tokens (D = 1), heads split (D = 3), a last pair of axes, a batch of one.
    for (shape, dim) in [
        (vec![2, 5, 7], 1),
        (vec![3, 4, 2, 3], 1),
        (vec![2, 3, 5, 4], 2),
        (vec![1, 33, 65], 1),
    ] {
        let x = Var::from_tensor(&rand(&shape, 7)).unwrap();
        let ours = transpose_copy(&x, dim).unwrap();
        let theirs = x.transpose(dim, dim + 1).unwrap().contiguous().unwrap();
        assert_eq!(ours.dims(), theirs.dims(), "{shape:?}");
        assert_eq!(max_abs_diff(&ours, &theirs), 0.0, "{shape:?}");
        let r = rand(ours.dims(), 8);
        let g1 = weighted_sum(&ours, &r).backward().unwrap();
        let g2 = weighted_sum(&theirs, &r).backward().unwrap();
        let (a, e) = (g1.get(&x).unwrap(), g2.get(&x).unwrap());
        assert_eq!(a.dims(), x.dims());
        assert_eq!(max_abs_diff(a, e), 0.0, "gradient, {shape:?}");
    }
    // The last axis has no neighbour after it: an error, not a panic.
    assert!(transpose_copy(&rand(&[2, 3], 1), 1).is_err());
}

/// Central finite differences of a scalar function, checked against autograd, element by element.
fn finite_difference_check(f: &dyn Fn(&Tensor) -> Tensor, shape: &[usize], seed: u64) {
    let x0: Vec<f32> = rand(shape, seed).flatten_all().unwrap().to_vec1().unwrap();
    let to_f64 = |v: &[f32]| {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    };
    let x = Var::from_tensor(&Tensor::from_vec(x0.clone(), shape, &Device::Cpu).unwrap()).unwrap();
    let grad = f(&x)
        .backward()
        .unwrap()
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let h = 1e-2f32;
    for i in 0..x0.len() {
        let eval = |delta: f32| {
            let mut v = x0.clone();
            v[i] += delta;
            let t = to_f64(&v).to_dtype(DType::F32).unwrap();
            f64::from(f(&t).to_scalar::<f32>().unwrap())
        };
        let numeric = (eval(h) - eval(-h)) / (2.0 * f64::from(h));
        let analytic = f64::from(grad[i]);
        assert!(
            (numeric - analytic).abs() < 2e-2 * (1.0 + numeric.abs()),
            "element {i}: numeric {numeric}, autograd {analytic}"
        );
    }
}

#[test]
fn fused_ops_agree_with_finite_differences() {
    let w = rand(&[3, 6], 11);
    let gain = (rand(&[6], 12) + 1.0).unwrap();
    let bias = rand(&[6], 13);
    finite_difference_check(
        &|x| weighted_sum(&softmax_last_dim(&(x * 2.0).unwrap()).unwrap(), &w),
        &[3, 6],
        20,
    );
    finite_difference_check(
        &|x| weighted_sum(&layer_norm(x, &gain, &bias, 1e-5).unwrap(), &w),
        &[3, 6],
        21,
    );
    finite_difference_check(&|x| weighted_sum(&quick_gelu(x).unwrap(), &w), &[3, 6], 22);
}

#[test]
fn geglu_matches_the_composed_op_values_and_gradients() {
    for shape in [vec![3, 8], vec![2, 5, 64]] {
        let x = Var::from_tensor(&(rand(&shape, 11) * 2.0).unwrap()).unwrap();
        let half = shape[shape.len() - 1] / 2;
        let last = shape.len() - 1;
        let ours = inkdrop::nn::geglu(&x).unwrap();
        let theirs = (x.narrow(last, 0, half).unwrap()
            * x.narrow(last, half, half).unwrap().gelu_erf().unwrap())
        .unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-5, "{shape:?}");
        let w = rand(ours.dims(), 12);
        let g1 = weighted_sum(&ours, &w).backward().unwrap();
        let g2 = weighted_sum(&theirs, &w).backward().unwrap();
        assert!(
            max_abs_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-5,
            "{shape:?}"
        );
    }
}

/// The kernels run compiled for AVX-512 or AVX2 where the CPU has them
/// (`fastmath::wide_kernels`); the same seed must still give the same bytes on every machine.
/// Plain loops in this test binary (compiled for baseline x86-64) with the same formulas must
/// give exactly the same bits.
#[test]
fn wide_kernels_give_the_same_bits_as_plain_loops() {
    use inkdrop::nn::fastmath::{exp, sigmoid, sum, sum_map};
    // Softmax over rows of 37 (a tail after two blocks of 16 lanes).
    let x = (rand(&[5, 37], 3) * 4.0).unwrap();
    let ours: Vec<f32> = softmax_last_dim(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let rows: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let mut plain = Vec::new();
    for row in rows.chunks(37) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut e: Vec<f32> = row.iter().map(|&v| exp(v - max)).collect();
        let inv = 1.0 / sum(&e);
        e.iter_mut().for_each(|v| *v *= inv);
        plain.extend(e);
    }
    assert_eq!(ours, plain, "softmax");
    // GroupNorm + SiLU: 2 samples, 6 channels in 3 groups, 5x7 pixels.
    let x = (rand(&[2, 6, 5, 7], 4) * 2.0).unwrap();
    let gamma = rand(&[6], 5);
    let beta = rand(&[6], 6);
    let ours: Vec<f32> = inkdrop::nn::group_norm(&x, &gamma, &beta, 3, 1e-5, true)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (xs, g, b): (Vec<f32>, Vec<f32>, Vec<f32>) = (
        x.flatten_all().unwrap().to_vec1().unwrap(),
        gamma.to_vec1().unwrap(),
        beta.to_vec1().unwrap(),
    );
    let mut plain = Vec::new();
    for (i, seg) in xs.chunks(2 * 35).enumerate() {
        let mean = sum(seg) / seg.len() as f32;
        let var = sum_map(seg, |v| (v - mean) * (v - mean)) / seg.len() as f32;
        let rstd = 1.0 / (var + 1e-5f32).sqrt();
        for (j, xc) in seg.chunks(35).enumerate() {
            let c = (i % 3) * 2 + j;
            let scale = rstd * g[c];
            let shift = b[c] - mean * scale;
            plain.extend(xc.iter().map(|&v| {
                let z = v * scale + shift;
                z * sigmoid(z)
            }));
        }
    }
    assert_eq!(ours, plain, "group norm");
}
