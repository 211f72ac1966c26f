use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use inkdrop::clip::*;
use inkdrop::shapes::{render, sample_at, WorldConfig};
use inkdrop::text::ClipTokenizer;
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    inkdrop::support::tune_allocator();
    let dev = Device::Cpu;
    let cfg = WorldConfig::default();
    let caps: Vec<String> = (0..20000).map(|i| sample_at(&cfg, 1, i).caption).collect();
    let tok = ClipTokenizer::train(caps.iter().map(|s| s.as_str()), 16)?;
    let args: Vec<String> = std::env::args().collect();
    let mut c = ClipConfig::tiny(tok.vocab_size(), 16);
    if args.len() > 1 { c.patch_size = args[1].parse()?; }
    if args.len() > 2 { c.vision_width = args[2].parse()?; c.text_width = args[2].parse()?; }
    let b: usize = if args.len() > 3 { args[3].parse()? } else { 128 };
    let vm = VarMap::new();
    let model = Clip::new(&c, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
    let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    println!("params {n}");
    let mut opt = candle_nn::AdamW::new(vm.all_vars(), candle_nn::ParamsAdamW { lr: 5e-4, ..Default::default() })?;
    for step in 0..30 {
        let t0 = Instant::now();
        let samples: Vec<_> = (0..b as u64).map(|i| sample_at(&cfg, 7, step * 1000 + i)).collect();
        let imgs: Vec<_> = samples.iter().map(|s| render(&s.scene, 32)).collect();
        let x = images_tensor(&imgs, &dev)?;
        let encs: Vec<_> = samples.iter().map(|s| tok.encode(&s.caption).unwrap()).collect();
        let ids: Vec<u32> = encs.iter().flat_map(|e| e.ids.clone()).collect();
        let ids = Tensor::from_vec(ids, (b, 16), &dev)?;
        let eot: Vec<usize> = encs.iter().map(|e| e.eot_index).collect();
        let caps: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
        let t1 = Instant::now();
        let out = contrastive_loss(&model.image_features(&x)?, &model.text_features(&ids, &eot)?, &model.scale()?, &match_targets(&caps, &dev)?, true)?;
        let t2 = Instant::now();
        let grads = out.loss.backward()?;
        let t3 = Instant::now();
        opt.step(&grads)?;
        if step % 5 == 0 || step == 29 {
            let missing: Vec<String> = vm.data().lock().unwrap().iter().filter(|(_, v)| grads.get(v.as_tensor()).is_none()).map(|(k, _)| k.clone()).collect();
            println!("step {step} loss {:.3} data {:?} fwd {:?} bwd {:?} opt {:?} no-grad {:?}", out.loss.to_scalar::<f32>()?, t1 - t0, t2 - t1, t3 - t2, t3.elapsed(), missing);
        }
    }
    Ok(())
}
