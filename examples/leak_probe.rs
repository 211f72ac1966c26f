use candle_core::{Device, Tensor, Var};
fn rss() -> u64 { std::fs::read_to_string("/proc/self/status").unwrap().lines().find(|l| l.starts_with("VmRSS")).unwrap().split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024 }
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let which = std::env::args().nth(1).unwrap_or_default();
    let x = Var::randn(0f32, 1., (64, 17, 128), &dev)?;
    let g = Var::ones(128, candle_core::DType::F32, &dev)?;
    let b = Var::zeros(128, candle_core::DType::F32, &dev)?;
    let img = Var::randn(0f32, 1., (64, 3, 32, 32), &dev)?;
    let k = Var::randn(0f32, 0.1, (32, 3, 3, 3), &dev)?;
    for i in 0..201 {
        let loss = match which.as_str() {
            "ln" => inkdrop::nn::layer_norm(&x, &g, &b, 1e-5)?.sum_all()?,
            "softmax" => inkdrop::nn::softmax_last_dim(&x)?.sqr()?.sum_all()?,
            "gelu" => inkdrop::nn::quick_gelu(&x)?.sum_all()?,
            "bias" => inkdrop::nn::bias_add(&x, &b)?.sqr()?.sum_all()?,
            "conv" => img.conv2d(&k, 1, 2, 1, 1)?.sqr()?.sum_all()?,
            _ => x.sqr()?.sum_all()?,
        };
        let grads = loss.backward()?;
        drop(grads);
        if i % 50 == 0 { println!("{which} iter {i}: rss {} MB", rss()); }
    }
    let _ = Tensor::zeros(1, candle_core::DType::F32, &dev)?;
    Ok(())
}
