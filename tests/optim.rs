//! The fused optimizer passes against the same formulas written with candle ops.

mod common;

use candle_core::{Tensor, Var};
use inkdrop::train::optim::{ema_update, AdamW, AdamWConfig};

/// One variable's AdamW state, updated with candle ops (the formula the fused pass replaces).
struct Reference {
    theta: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

impl Reference {
    fn new(theta: &Tensor, decay: bool) -> Self {
        let zeros = theta.zeros_like().unwrap();
        Reference {
            theta: theta.clone(),
            m: zeros.clone(),
            v: zeros,
            decay,
        }
    }

    fn step(&mut self, g: &Tensor, c: AdamWConfig, t: i32, lr: f64) {
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        self.m = ((&self.m * c.beta1).unwrap() + (g * (1.0 - c.beta1)).unwrap()).unwrap();
        self.v =
            ((&self.v * c.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - c.beta2)).unwrap()).unwrap();
        let m_hat = (&self.m / bc1).unwrap();
        let v_hat = (&self.v / bc2).unwrap();
        let mut step = (m_hat / (v_hat.sqrt().unwrap() + c.eps).unwrap()).unwrap();
        if self.decay {
            step = (step + (&self.theta * c.weight_decay).unwrap()).unwrap();
        }
        self.theta = (&self.theta - (step * lr).unwrap()).unwrap();
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn fused_adamw_gives_the_candle_formula_bit_for_bit() {
    let c = AdamWConfig::default();
    // A matrix (decayed) and a bias (not decayed), odd sizes, over three steps.
    let w0 = common::rand(&[37, 29], 1);
    let b0 = common::rand(&[41], 2);
    let (w, b) = (
        Var::from_tensor(&w0).unwrap(),
        Var::from_tensor(&b0).unwrap(),
    );
    let mut opt = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], c).unwrap();
    let mut reference = [Reference::new(&w0, true), Reference::new(&b0, false)];
    for t in 1..=3 {
        let gw = common::rand(&[37, 29], 10 + t as u64);
        let gb = common::rand(&[41], 20 + t as u64);
        // A gradient store holding exactly these gradients: d(sum(w * gw) + sum(b * gb)).
        let loss = ((w.as_tensor() * &gw).unwrap().sum_all().unwrap()
            + (b.as_tensor() * &gb).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let lr = 1e-2 * t as f64;
        opt.update(&grads, lr).unwrap();
        for (r, g) in reference.iter_mut().zip([&gw, &gb]) {
            r.step(g, c, t, lr);
        }
        assert_eq!(
            bits(w.as_tensor()),
            bits(&reference[0].theta),
            "w after step {t}"
        );
        assert_eq!(
            bits(b.as_tensor()),
            bits(&reference[1].theta),
            "b after step {t}"
        );
    }
    // The moments saved for checkpoints are the reference's too.
    let state = opt.state().unwrap();
    let m_w = &state.iter().find(|(n, _)| n == "adamw.m.w").unwrap().1;
    assert_eq!(bits(m_w), bits(&reference[0].m));
}

#[test]
fn fused_ema_gives_the_candle_formula_and_leaves_the_weights_alone() {
    let w = Var::from_tensor(&common::rand(&[5, 7, 3], 5)).unwrap();
    let ema = w.as_tensor().copy().unwrap();
    let w_before = bits(w.as_tensor());
    let new_w = common::rand(&[5, 7, 3], 6);
    w.set(&new_w).unwrap();
    let expected = ((&ema * 0.999).unwrap() + (w.as_tensor() * (1.0 - 0.999)).unwrap()).unwrap();
    ema_update(&ema, w.as_tensor(), 0.999).unwrap();
    assert_eq!(bits(&ema), bits(&expected));
    assert_eq!(
        bits(w.as_tensor()),
        bits(&new_w),
        "the weights must not move"
    );
    assert_ne!(bits(w.as_tensor()), w_before);
}

#[test]
fn clip_grad_norm_measures_the_global_norm_and_scales_only_above_the_limit() {
    use inkdrop::train::optim::clip_grad_norm;
    // Three variables, one large enough to be summed in several chunks, one without a gradient.
    let (a, b, c) = (
        Var::from_tensor(&common::rand(&[300, 200], 1)).unwrap(),
        Var::from_tensor(&common::rand(&[7], 2)).unwrap(),
        Var::from_tensor(&common::rand(&[3], 3)).unwrap(),
    );
    let (ga, gb) = (common::rand(&[300, 200], 4), common::rand(&[7], 5));
    let grads = || {
        ((a.as_tensor() * &ga).unwrap().sum_all().unwrap()
            + (b.as_tensor() * &gb).unwrap().sum_all().unwrap())
        .unwrap()
        .backward()
        .unwrap()
    };
    let squares = |g: &Tensor| -> f64 {
        let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
    };
    let want = (squares(&ga) + squares(&gb)).sqrt();
    let vars = [a.clone(), b.clone(), c.clone()];
    // Below the limit: the norm, and the gradients untouched.
    let mut store = grads();
    let norm = clip_grad_norm(&mut store, &vars, 1e9).unwrap();
    assert!((norm - want).abs() < 1e-4 * want, "{norm} vs {want}");
    assert_eq!(bits(store.get(a.as_tensor()).unwrap()), bits(&ga));
    assert!(store.get(c.as_tensor()).is_none());
    // Above it: every gradient scaled by the same factor, to a global norm of the limit.
    let limit = want / 4.0;
    let mut store = grads();
    clip_grad_norm(&mut store, &vars, limit).unwrap();
    let (sa, sb) = (
        store.get(a.as_tensor()).unwrap(),
        store.get(b.as_tensor()).unwrap(),
    );
    let clipped = (squares(sa) + squares(sb)).sqrt();
    assert!(
        (clipped - limit).abs() < 1e-4 * limit,
        "{clipped} vs {limit}"
    );
    let ratio = |g: &Tensor, orig: &Tensor| {
        (g.sum_all().unwrap().to_scalar::<f32>().unwrap()
            / orig.sum_all().unwrap().to_scalar::<f32>().unwrap()) as f64
    };
    assert!((ratio(sa, &ga) - 0.25).abs() < 1e-3 && (ratio(sb, &gb) - 0.25).abs() < 1e-3);
    // The same bits on one thread as on all of them.
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let single = one.install(|| clip_grad_norm(&mut grads(), &vars, limit).unwrap());
    let all = clip_grad_norm(&mut grads(), &vars, limit).unwrap();
    assert_eq!(single.to_bits(), all.to_bits());
}
