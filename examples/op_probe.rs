use candle_core::{DType, Device, Tensor, Var, D};
use std::time::Instant;
fn time<F: FnMut() -> candle_core::Result<()>>(name: &str, mut f: F) {
    f().unwrap();
    let t = Instant::now();
    for _ in 0..5 { f().unwrap(); }
    println!("{name}: {:?}", t.elapsed() / 5);
}
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Var::randn(0f32, 1., (128, 65, 128), &dev)?;
    let w = Var::randn(0f32, 0.1, (512, 128), &dev)?;
    let b = Var::randn(0f32, 0.1, 512, &dev)?;
    time("matmul fwd+bwd", || { let y = x.broadcast_matmul(&w.t()?)?; let g = y.sum_all()?.backward()?; let _ = g; Ok(()) });
    time("linear (matmul+bias) fwd+bwd", || { let y = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?; let g = y.sum_all()?.backward()?; let _ = g; Ok(()) });
    time("candle_nn linear", || { let l = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone())); let y = candle_core::Module::forward(&l, x.as_tensor())?; y.sum_all()?.backward()?; Ok(()) });
    let ones = Tensor::ones((128 * 65, 1), DType::F32, &dev)?;
    time("linear with bias as rank-1 matmul", || { let y = x.reshape((128*65, 128))?.matmul(&w.t()?)?; let y = (y + ones.matmul(&b.unsqueeze(0)?)?)?; y.sum_all()?.backward()?; Ok(()) });
    let y = Var::randn(0f32, 1., (128, 65, 512), &dev)?;
    time("bias grad sum over (0,1)", || { let _ = y.sum_keepdim(0)?.sum_keepdim(1)?; Ok(()) });
    time("bias grad reshape sum", || { let _ = y.reshape((128*65, 512))?.sum_keepdim(0)?; Ok(()) });
    let s = Var::randn(0f32, 1., (128, 4, 65, 65), &dev)?;
    time("softmax fwd+bwd", || { let p = candle_nn::ops::softmax(&s, D::Minus1)?; p.sum_all()?.backward()?; Ok(()) });
    time("softmax via last-dim sum_keepdim", || {
        let m = s.max_keepdim(D::Minus1)?.detach(); let e = s.broadcast_sub(&m)?.exp()?; let z = e.sum_keepdim(D::Minus1)?; let p = e.broadcast_div(&z)?; p.sum_all()?.backward()?; Ok(()) });
    time("softmax_last_dim fwd only", || { let _ = candle_nn::ops::softmax_last_dim(&s)?; Ok(()) });
    let q = Var::randn(0f32, 1., (128, 4, 65, 32), &dev)?;
    time("bmm qk fwd+bwd", || { let p = q.matmul(&q.t()?.contiguous()?)?; p.sum_all()?.backward()?; Ok(()) });
    time("layernorm fwd+bwd", || {
        let mean = x.mean_keepdim(D::Minus1)?; let c = x.broadcast_sub(&mean)?; let v = c.sqr()?.mean_keepdim(D::Minus1)?;
        let n = c.broadcast_div(&(v + 1e-5)?.sqrt()?)?; n.sum_all()?.backward()?; Ok(()) });
    time("transpose12 contiguous fwd+bwd", || { let t = q.transpose(1, 2)?.contiguous()?; t.sum_all()?.backward()?; Ok(()) });
    let _ = DType::F32;
    Ok(())
}
