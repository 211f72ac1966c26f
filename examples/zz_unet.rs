use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use inkdrop::unet::{UNet2DConditionModel, UNetConfig};
fn main() -> anyhow::Result<()> {
    inkdrop::support::tune_allocator();
    inkdrop::support::single_threaded_candle_elementwise();
    let dev = Device::Cpu;
    let heads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let cfg = UNetConfig {
        attention_heads: heads,
        ..UNetConfig::tiny()
    };
    let vm = VarMap::new();
    let unet = UNet2DConditionModel::new(&cfg, inkdrop::weights::seeded_var_builder(&vm, 0, &dev))?;
    let mut rng = inkdrop::support::seeded_rng(0);
    let b = 64;
    let x = inkdrop::noising::randn_tensor(&[b, 4, 8, 8], &mut rng, &dev)?;
    let t = Tensor::from_vec(
        (0..b).map(|i| (i * 37 % 1000) as f32).collect::<Vec<_>>(),
        b,
        &dev,
    )?;
    let ctx = inkdrop::noising::randn_tensor(&[b, 16, 128], &mut rng, &dev)?;
    for _ in 0..6 {
        let s = std::time::Instant::now();
        let y = unet.forward(&x, &t, &ctx, None)?;
        let f = s.elapsed().as_secs_f64();
        let loss = y.sqr()?.mean_all()?;
        let _g = loss.backward()?;
        println!(
            "fwd {:.0} ms, bwd {:.0} ms",
            f * 1e3,
            (s.elapsed().as_secs_f64() - f) * 1e3
        );
    }
    Ok(())
}
