//! The convolution and GroupNorm kernels against candle's own ops (values and gradients) and
//! against finite differences, on odd shapes: batch 1, non-square channels, stride 2, asymmetric
//! padding, 1x1 kernels, non-square images, and channels == height == width.

use candle_core::{Device, Tensor, Var};
use inkdrop::nn::{conv2d, group_norm, Padding};

mod common;
use common::{max_abs_diff, rand, weighted_sum};

/// candle's conv2d with the same (possibly asymmetric) zero padding, as the reference.
fn candle_conv(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize, pad: Padding) -> Tensor {
    let x = x.pad_with_zeros(2, pad.top, pad.bottom).unwrap();
    let x = x.pad_with_zeros(3, pad.left, pad.right).unwrap();
    let y = x.conv2d(w, 0, stride, 1, 1).unwrap();
    y.broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap())
        .unwrap()
}

struct Case {
    x: [usize; 4],
    c_out: usize,
    k: usize,
    stride: usize,
    pad: Padding,
}

fn cases() -> Vec<Case> {
    let asym = Padding {
        top: 0,
        bottom: 1,
        left: 0,
        right: 1,
    };
    vec![
        Case {
            x: [1, 3, 5, 5],
            c_out: 4,
            k: 3,
            stride: 1,
            pad: Padding::same(1),
        },
        Case {
            x: [2, 5, 7, 7],
            c_out: 3,
            k: 3,
            stride: 2,
            pad: Padding::same(1),
        },
        // Stride 2 with odd left padding on an even width: the UNet's and VAE's downsamplers.
        Case {
            x: [2, 5, 8, 8],
            c_out: 3,
            k: 3,
            stride: 2,
            pad: Padding::same(1),
        },
        Case {
            x: [2, 4, 4, 4],
            c_out: 4,
            k: 3,
            stride: 1,
            pad: Padding::same(1),
        },
        // 1x1, stride 1, no padding: the pointwise path, also with batch 1 on an odd number
        // of pixels and with channels == height == width.
        Case {
            x: [3, 6, 8, 8],
            c_out: 2,
            k: 1,
            stride: 1,
            pad: Padding::same(0),
        },
        Case {
            x: [1, 7, 5, 5],
            c_out: 3,
            k: 1,
            stride: 1,
            pad: Padding::same(0),
        },
        Case {
            x: [2, 4, 4, 4],
            c_out: 4,
            k: 1,
            stride: 1,
            pad: Padding::same(0),
        },
        Case {
            x: [2, 3, 8, 8],
            c_out: 5,
            k: 3,
            stride: 2,
            pad: asym,
        },
        Case {
            x: [1, 2, 6, 9],
            c_out: 3,
            k: 3,
            stride: 1,
            pad: Padding::same(1),
        },
        Case {
            x: [2, 3, 9, 9],
            c_out: 2,
            k: 5,
            stride: 3,
            pad: Padding::same(2),
        },
        // Small 3x3 convolutions take the column-matrix path, from 20x20 on the padded-plane one.
        Case {
            x: [2, 3, 20, 20],
            c_out: 4,
            k: 3,
            stride: 1,
            pad: Padding::same(1),
        },
        // The padded-plane path without padding (rows share no zeros; 16 input channels, so
        // the forward pass multiplies each tap's window in place) and with a 5x5 kernel (two
        // zero rows and columns shared between neighbours; 3 input channels, so it builds the
        // column matrix).
        Case {
            x: [1, 16, 40, 40],
            c_out: 3,
            k: 3,
            stride: 1,
            pad: Padding::same(0),
        },
        Case {
            x: [2, 3, 40, 40],
            c_out: 2,
            k: 5,
            stride: 1,
            pad: Padding::same(2),
        },
        // Stride 2 on rows wide enough for the blocks of 16 pairs that split (and rejoin) a
        // row's even and odd pixels and the 16-float copies of the column rows, plus the
        // leftover pairs and, at odd widths, the last single pixel.
        Case {
            x: [2, 3, 67, 67],
            c_out: 4,
            k: 3,
            stride: 2,
            pad: Padding::same(1),
        },
        Case {
            x: [1, 2, 34, 34],
            c_out: 3,
            k: 3,
            stride: 2,
            pad: Padding::same(1),
        },
        // The column-matrix path with several chunks per thread's run of images (3 images per
        // chunk at this size).
        Case {
            x: [9, 128, 16, 16],
            c_out: 8,
            k: 3,
            stride: 1,
            pad: Padding::same(1),
        },
        // Winograd's F(2x2, 3x3) path (3x3, stride 1, padding 1, even sides, 16 channels or
        // more on both sides, 32 tiles of 2x2 or more per thread's run of images, here with up
        // to 4 threads): non-square image and channels, batch 1, and channels == height ==
        // width.
        Case {
            x: [24, 16, 4, 6],
            c_out: 20,
            k: 3,
            stride: 1,
            pad: Padding::same(1),
        },
        Case {
            x: [1, 24, 8, 16],
            c_out: 16,
            k: 3,
            stride: 1,
            pad: Padding::same(1),
        },
        Case {
            x: [2, 16, 16, 16],
            c_out: 32,
            k: 3,
            stride: 1,
            pad: Padding::same(1),
        },
        // Winograd on a narrow image, square so the gradients are compared with candle's, and
        // batch 1 (one run, parallel inside).
        Case {
            x: [1, 16, 12, 12],
            c_out: 16,
            k: 3,
            stride: 1,
            pad: Padding::same(1),
        },
        // Winograd with several chunks per thread's run of images, the last one shorter (4
        // images per chunk here; runs of 17, 9, 6 or 5 images with 1 to 4 threads).
        Case {
            x: [17, 32, 16, 16],
            c_out: 32,
            k: 3,
            stride: 1,
            pad: Padding::same(1),
        },
        // The VAE's size: Winograd (runs of 5 and 4 images with 2 threads).
        Case {
            x: [9, 64, 32, 32],
            c_out: 32,
            k: 3,
            stride: 1,
            pad: Padding::same(1),
        },
    ]
}

#[test]
fn conv2d_matches_candle_values_and_gradients() {
    for (i, c) in cases().iter().enumerate() {
        check_against_candle(i, c);
    }
}

/// With more threads than images the batch is one run, parallel inside, and Winograd's chunk
/// holds several interleaved images (written channel by channel): the case a 2-core machine
/// never reaches on its own.
#[test]
fn conv2d_matches_candle_with_more_threads_than_images() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let cases = [[3, 16, 8, 8], [2, 24, 4, 4], [3, 16, 16, 16]].map(|x| Case {
        x,
        c_out: 16,
        k: 3,
        stride: 1,
        pad: Padding::same(1),
    });
    pool.install(|| {
        for (i, c) in cases.iter().enumerate() {
            check_against_candle(100 + i, c);
        }
    });
}

/// Values and (on square maps with equal padding) gradients of case `i` against candle's.
fn check_against_candle(i: usize, c: &Case) {
    let seed = 10 * i as u64;
    let x = Var::from_tensor(&rand(&c.x, seed)).unwrap();
    let w = Var::from_tensor(&rand(&[c.c_out, c.x[1], c.k, c.k], seed + 1)).unwrap();
    let b = Var::from_tensor(&rand(&[c.c_out], seed + 2)).unwrap();
    let ours = conv2d(&x, &w, &b, c.stride, c.pad).unwrap();
    let theirs = candle_conv(&x, &w, &b, c.stride, c.pad);
    assert_eq!(ours.dims(), theirs.dims(), "case {i}");
    let scale = theirs
        .abs()
        .unwrap()
        .max_keepdim(0)
        .unwrap()
        .max_all()
        .unwrap();
    let tol = 1e-5 * (1.0 + scale.to_scalar::<f32>().unwrap());
    assert!(max_abs_diff(&ours, &theirs) < tol, "case {i}: values");
    let r = rand(ours.dims(), seed + 3);
    let g1 = weighted_sum(&ours, &r).backward().unwrap();
    let g2 = weighted_sum(&theirs, &r).backward().unwrap();
    // candle's backward reuses the H padding for W, so only square maps with equal
    // padding are compared with it; the others are covered by finite differences.
    let candle_ok = c.x[2] == c.x[3] && c.pad.top == c.pad.left && c.pad.bottom == c.pad.right;
    if candle_ok {
        for (name, v) in [("dx", &x), ("dW", &w), ("db", &b)] {
            let (a, e) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            let tol = 1e-4
                * (1.0
                    + e.abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap());
            assert!(max_abs_diff(a, e) < tol, "case {i}: {name}");
        }
    }
}

/// Central finite differences of `loss` at a few coordinates of `v`, against autograd.
fn check_finite_differences(v: &Var, loss: &dyn Fn() -> Tensor, picks: &[usize]) {
    let grads = loss().backward().unwrap();
    let analytic: Vec<f32> = grads
        .get(v)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let base: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
    let h = 1e-2f32;
    for &i in picks {
        let at = |d: f32| {
            let mut p = base.clone();
            p[i] += d;
            v.set(&Tensor::from_vec(p, v.shape(), &Device::Cpu).unwrap())
                .unwrap();
            loss().to_scalar::<f32>().unwrap()
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (numeric - analytic[i]).abs() < 2e-2 * (1.0 + numeric.abs()),
            "coordinate {i}: finite difference {numeric}, autograd {}",
            analytic[i]
        );
    }
    v.set(&Tensor::from_vec(base, v.shape(), &Device::Cpu).unwrap())
        .unwrap();
}

#[test]
fn conv2d_gradients_match_finite_differences_on_non_square_and_asymmetric_cases() {
    let asym = Padding {
        top: 0,
        bottom: 1,
        left: 0,
        right: 1,
    };
    // 5x7 takes the column-matrix path, 20x22 the padded-plane path (see `Geometry` in
    // src/nn/conv.rs), 16 channels at 8x16 the Winograd path, the stride-2 cases the column
    // path with even and odd left padding (the stride's column phases) and an odd width, the
    // 1x1 kernel on 3x7 the pointwise path.
    for (shape, c_out, k, stride, pad) in [
        ([1, 2, 5, 7], 3, 3, 1, Padding::same(1)),
        ([1, 2, 20, 22], 3, 3, 1, Padding::same(1)),
        ([1, 16, 8, 16], 17, 3, 1, Padding::same(1)),
        ([2, 3, 6, 6], 3, 3, 2, asym),
        ([1, 3, 7, 9], 3, 3, 2, Padding::same(2)),
        ([3, 5, 3, 7], 4, 1, 1, Padding::same(0)),
    ] {
        let x = Var::from_tensor(&rand(&shape, 1)).unwrap();
        let w = Var::from_tensor(&rand(&[c_out, shape[1], k, k], 2)).unwrap();
        let b = Var::from_tensor(&rand(&[c_out], 3)).unwrap();
        let out = conv2d(&x, &w, &b, stride, pad).unwrap();
        let r = rand(out.dims(), 4);
        let loss = || weighted_sum(&conv2d(&x, &w, &b, stride, pad).unwrap(), &r);
        let n = x.elem_count();
        check_finite_differences(&x, &loss, &[0, 1, n / 2, n - 1]);
        check_finite_differences(&w, &loss, &[0, 7 % w.elem_count(), w.elem_count() - 1]);
        check_finite_differences(&b, &loss, &[0, 2]);
    }
}

#[test]
fn conv2d_names_the_mismatch() {
    let x = rand(&[1, 3, 4, 4], 1);
    let w = rand(&[2, 4, 3, 3], 2);
    let b = rand(&[2], 3);
    let err = conv2d(&x, &w, &b, 1, Padding::same(1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3 channels") && err.contains("expects 4"),
        "{err}"
    );
    // An empty dimension is an error, not a panic inside the kernels.
    let empty = Tensor::zeros((1, 3, 0, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = rand(&[2, 3, 3, 3], 2);
    let err = conv2d(&empty, &w, &b, 1, Padding::same(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("size 0"), "{err}");
}

#[test]
fn group_norm_matches_candle_and_fused_silu_matches_composition() {
    for (shape, groups) in [
        (vec![1, 4, 3, 3], 2),
        (vec![2, 6, 5, 7], 3),
        (vec![3, 32, 8, 8], 32),
        (vec![2, 8, 16], 4),
    ] {
        let c = shape[1];
        let x = Var::from_tensor(&rand(&shape, 1).affine(2.0, 0.5).unwrap()).unwrap();
        let gamma = Var::from_tensor(&(rand(&[c], 2) + 1.0).unwrap()).unwrap();
        let beta = Var::from_tensor(&rand(&[c], 3)).unwrap();
        let r = rand(&shape, 4);
        let reference = candle_nn::GroupNorm::new(
            gamma.as_tensor().clone(),
            beta.as_tensor().clone(),
            c,
            groups,
            1e-5,
        )
        .unwrap();
        let theirs = candle_core::Module::forward(&reference, &x).unwrap();
        for silu in [false, true] {
            let ours = group_norm(&x, &gamma, &beta, groups, 1e-5, silu).unwrap();
            let expected = if silu {
                candle_nn::ops::silu(&theirs).unwrap()
            } else {
                theirs.clone()
            };
            assert!(
                max_abs_diff(&ours, &expected) < 1e-5,
                "{shape:?} silu={silu}"
            );
            let g1 = weighted_sum(&ours, &r).backward().unwrap();
            let g2 = weighted_sum(&expected, &r).backward().unwrap();
            for (name, v) in [("dx", &x), ("dgamma", &gamma), ("dbeta", &beta)] {
                let (a, e) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(max_abs_diff(a, e) < 1e-4, "{shape:?} silu={silu}: {name}");
            }
        }
    }
}

#[test]
fn group_norm_silu_gradients_match_finite_differences() {
    let x = Var::from_tensor(&rand(&[2, 4, 3, 5], 1)).unwrap();
    let gamma = Var::from_tensor(&(rand(&[4], 2) + 1.0).unwrap()).unwrap();
    let beta = Var::from_tensor(&rand(&[4], 3)).unwrap();
    let r = rand(&[2, 4, 3, 5], 4);
    let loss = || weighted_sum(&group_norm(&x, &gamma, &beta, 2, 1e-5, true).unwrap(), &r);
    check_finite_differences(&x, &loss, &[0, 13, 59, 119]);
    check_finite_differences(&gamma, &loss, &[0, 3]);
    check_finite_differences(&beta, &loss, &[1, 2]);
}

#[test]
fn group_norm_rejects_channels_not_divisible_by_groups() {
    let x = rand(&[1, 6, 2, 2], 1);
    let g = rand(&[6], 2);
    let err = group_norm(&x, &g, &g, 4, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("divisible by 4 groups"), "{err}");
}
