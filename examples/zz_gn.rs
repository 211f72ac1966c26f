use candle_core::{Device, Tensor, Var};
use std::time::Instant;
fn med(mut f: impl FnMut()) -> f64 {
    f();
    let mut v: Vec<f64> = (0..9)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[4]
}
fn main() -> anyhow::Result<()> {
    inkdrop::support::tune_allocator();
    inkdrop::support::single_threaded_candle_elementwise();
    let dev = Device::Cpu;
    let mut rng = inkdrop::support::seeded_rng(0);
    let x = Var::from_tensor(&inkdrop::noising::randn_tensor(
        &[32, 32, 32, 32],
        &mut rng,
        &dev,
    )?)?;
    let g = Var::from_tensor(&Tensor::ones(32, candle_core::DType::F32, &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros(32, candle_core::DType::F32, &dev)?)?;
    let dy = inkdrop::noising::randn_tensor(&[32, 32, 32, 32], &mut rng, &dev)?;
    println!(
        "fwd {:.2} ms",
        med(|| {
            inkdrop::nn::group_norm(&x, &g, &b, 32, 1e-6, true).unwrap();
        })
    );
    println!(
        "fwd nosilu {:.2} ms",
        med(|| {
            inkdrop::nn::group_norm(&x, &g, &b, 32, 1e-6, false).unwrap();
        })
    );
    println!(
        "fwd+bwd nosilu {:.2} ms",
        med(|| {
            (inkdrop::nn::group_norm(&x, &g, &b, 32, 1e-6, false).unwrap() * &dy)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
        })
    );
    let v: Vec<f32> = (0..1 << 20).map(|i| (i as f32) * 1e-5 - 5.0).collect();
    println!(
        "1M fast sigmoid {:.2} ms",
        med(|| {
            let s: f32 = v
                .iter()
                .map(|&z| z * inkdrop::nn::fastmath::sigmoid(z))
                .sum();
            std::hint::black_box(s);
        })
    );
    println!(
        "1M libm sigmoid {:.2} ms",
        med(|| {
            let s: f32 = v.iter().map(|&z| z / (1.0 + (-z).exp())).sum();
            std::hint::black_box(s);
        })
    );
    println!(
        "fwd+bwd (y*dy).sum {:.2} ms",
        med(|| {
            (inkdrop::nn::group_norm(&x, &g, &b, 32, 1e-6, true).unwrap() * &dy)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
        })
    );
    println!(
        "mul+sum+bwd only {:.2} ms",
        med(|| {
            (x.as_tensor() * &dy)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
        })
    );
    println!(
        "add fwd {:.2} ms",
        med(|| {
            (x.as_tensor() + &dy).unwrap();
        })
    );
    println!(
        "copy contiguous of transposed {:.2} ms",
        med(|| {
            x.as_tensor().transpose(2, 3).unwrap().contiguous().unwrap();
        })
    );
    Ok(())
}
#[allow(dead_code)]
fn extra() {}
