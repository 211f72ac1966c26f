use candle_core::Device;
use candle_nn::VarMap;
use inkdrop::train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use inkdrop::vae::{AutoencoderKL, VaeConfig};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    inkdrop::support::tune_allocator();
    inkdrop::support::single_threaded_candle_elementwise();
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vae = AutoencoderKL::new(
        &VaeConfig::tiny(),
        inkdrop::weights::seeded_var_builder(&vm, 0, &dev),
    )?;
    let vars = inkdrop::weights::sorted_vars(&vm);
    let plain: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(vars, AdamWConfig::default())?;
    let mut rng = inkdrop::support::seeded_rng(0);
    let x = inkdrop::noising::randn_tensor(&[32, 3, 32, 32], &mut rng, &dev)?;
    let eps = inkdrop::noising::randn_tensor(&[32, 4, 8, 8], &mut rng, &dev)?;
    let mut t = [0f64; 5];
    for it in 0..8 {
        let s = Instant::now();
        let d = vae.encode(&x)?;
        let z = d.sample(&eps)?;
        let t1 = s.elapsed().as_secs_f64();
        let r = vae.decode(&z)?;
        let loss = ((&r - &x)?.sqr()?.mean_all()? + (d.kl()?.mean_all()? * 1e-6)?)?;
        let t2 = s.elapsed().as_secs_f64();
        let mut g = loss.backward()?;
        let t3 = s.elapsed().as_secs_f64();
        clip_grad_norm(&mut g, &plain, 1.0)?;
        let t4 = s.elapsed().as_secs_f64();
        opt.update(&g, 1e-3)?;
        let t5 = s.elapsed().as_secs_f64();
        if it >= 3 {
            for (a, b) in t.iter_mut().zip([t1, t2 - t1, t3 - t2, t4 - t3, t5 - t4]) {
                *a += b / 5.0;
            }
        }
    }
    println!(
        "encode {:.1} ms, decode+loss {:.1} ms, backward {:.1} ms, clip {:.1} ms, adamw {:.1} ms",
        t[0] * 1e3,
        t[1] * 1e3,
        t[2] * 1e3,
        t[3] * 1e3,
        t[4] * 1e3
    );
    Ok(())
}
