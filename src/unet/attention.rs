//! Attention inside the UNet (diffusers' `Attention`, `BasicTransformerBlock`,
//! `Transformer2DModel`): every latent position looks at every other one (self-attention) and
//! at every text token (cross-attention), which is how the prompt steers the picture.
//!
//! Attention probabilities can be recorded on request ([`AttentionRecorder`]); when no recorder
//! is passed nothing is kept.

use std::cell::{Cell, RefCell};

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{
    fused_attention, geglu, linear, linear_no_bias, softmax_last_dim, transpose_copy, Conv2d,
    GroupNorm, LayerNorm, Linear, Padding,
};

/// One recorded attention map.
#[derive(Clone, Debug)]
pub struct AttentionMap {
    /// The attention module, with diffusers' path, e.g.
    /// `down_blocks.0.attentions.0.transformer_blocks.0.attn2`.
    pub name: String,
    /// Latent height and width of the queries (positions are row-major over them).
    pub height: usize,
    pub width: usize,
    /// softmax(Q K^T / sqrt(d)): (B, heads, H*W, keys), detached from the graph unless the
    /// recorder keeps it (`keep_graph`).
    pub probs: Tensor,
}

/// Prompt-to-prompt style re-weighting (Hertz et al. 2022): multiply the cross-attention every
/// position pays to one text token by `scale` (0 silences the word, 2 doubles it), in batch
/// rows `rows.0 .. rows.0 + rows.1` only (the conditional half when guidance batches both).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reweight {
    pub token: usize,
    pub scale: f64,
    pub rows: (usize, usize),
}

/// Prompt-to-prompt's word swap (Hertz et al. 2022): in batch rows `rows.0 .. rows.0 + rows.1`,
/// every cross-attention layer uses the probabilities recorded from another prompt's run
/// (`maps`, one per cross-attention layer in the order the UNet calls them, each (rows.1,
/// heads, H*W, tokens)) instead of its own: `P_target <- P_source`. The values V still come from
/// the new prompt, so the swapped word changes *what* is drawn while the old maps keep *where*.
#[derive(Debug)]
pub struct Injection {
    pub maps: Vec<Tensor>,
    pub rows: (usize, usize),
    next: Cell<usize>,
}

impl Injection {
    pub fn new(maps: Vec<Tensor>, rows: (usize, usize)) -> Self {
        Self {
            maps,
            rows,
            next: Cell::new(0),
        }
    }

    /// The next layer's recorded map.
    fn next_map(&self, name: &str) -> Result<&Tensor> {
        let i = self.next.get();
        self.next.set(i + 1);
        self.maps.get(i).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{name}: only {} recorded cross-attention maps to inject",
                self.maps.len()
            ))
        })
    }
}

/// Collects attention maps during a forward pass (cross-attention only unless
/// `self_attention`; nothing unless `record`), and optionally edits the cross-attention
/// (re-weighting one token, or injecting another run's maps).
#[derive(Debug)]
pub struct AttentionRecorder {
    pub record: bool,
    pub self_attention: bool,
    /// Record the cross-attention probabilities *with* their graph, so a loss on them trains
    /// `to_q`, `to_k` and everything below (the grounding loss, `train::grounding`); the layer's
    /// output still comes from the fused kernel. Only with no edits (no re-weighting, no
    /// injection).
    pub keep_graph: bool,
    pub reweight: Option<Reweight>,
    pub inject: Option<Injection>,
    pub maps: RefCell<Vec<AttentionMap>>,
}

impl Default for AttentionRecorder {
    fn default() -> Self {
        Self {
            record: true,
            self_attention: false,
            keep_graph: false,
            reweight: None,
            inject: None,
            maps: RefCell::new(Vec::new()),
        }
    }
}

impl AttentionRecorder {
    /// A recorder for cross-attention maps.
    pub fn cross() -> Self {
        Self::default()
    }

    /// A recorder for cross-attention maps that keep their graph (see `keep_graph`).
    pub fn cross_with_graph() -> Self {
        Self {
            keep_graph: true,
            ..Self::default()
        }
    }

    /// No recording, only the re-weighting.
    pub fn reweighting(reweight: Reweight) -> Self {
        Self {
            record: false,
            reweight: Some(reweight),
            ..Self::default()
        }
    }

    /// Takes the maps recorded so far.
    pub fn take(&self) -> Vec<AttentionMap> {
        self.maps.take()
    }
}

/// Multi-head attention, `softmax(Q K^T / sqrt(d)) V`, with Q from `x` and K, V from `context`
/// (cross-attention) or from `x` itself (self-attention). Names: `to_q`, `to_k`, `to_v` (no
/// bias), `to_out.0`.
#[derive(Clone, Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    name: String,
}

impl Attention {
    pub fn new(
        dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        name: String,
        vb: VarBuilder,
    ) -> Result<Self> {
        if heads == 0 || dim % heads != 0 {
            candle_core::bail!("{name}: width {dim} is not divisible by {heads} heads");
        }
        let kv = context_dim.unwrap_or(dim);
        Ok(Self {
            to_q: linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: linear_no_bias(kv, dim, vb.pp("to_k"))?,
            to_v: linear_no_bias(kv, dim, vb.pp("to_v"))?,
            to_out: linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
            name,
        })
    }

    /// x (B, N, C), context (B, T, D) or None -> (B, N, C). `hw` = (H, W) of the N queries, for
    /// the recorder.
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        hw: (usize, usize),
        rec: Option<&AttentionRecorder>,
    ) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let d = c / self.heads;
        let kv_src = context.unwrap_or(x);
        let t = kv_src.dim(1)?;
        let scale = (d as f64).powf(-0.5);
        let split = |y: Tensor, len: usize| -> Result<Tensor> {
            transpose_copy(&y.reshape((b, len, self.heads, d))?, 1) // (B, heads, len, d)
        };
        // Q K^T / sqrt(d) per head, from the projections q (B, N, C) and k (B, T, C).
        let scores = |q: Tensor, k: Tensor| -> Result<Tensor> {
            split((q * scale)?, n)?.matmul(&split(k, t)?.t()?.contiguous()?) // (B, h, N, T)
        };
        let map = |probs: Tensor| AttentionMap {
            name: self.name.clone(),
            height: hw.0,
            width: hw.1,
            probs,
        };
        let graph = rec.filter(|r| r.keep_graph && r.inject.is_none() && r.reweight.is_none());
        if rec.is_none() || graph.is_some() {
            // Nothing to change in the maps: the fused kernel, which never materialises them
            // (`nn::attention`). Same formula as below.
            let (q, k) = (self.to_q.forward(x)?, self.to_k.forward(kv_src)?); // (B, N, C), (B, T, C)
            let out = fused_attention(
                &q,
                &k,
                &self.to_v.forward(kv_src)?, // (B, T, C)
                self.heads,
                scale,
            )?; // (B, N, C)
            if let (Some(rec), Some(_)) = (graph, context) {
                // The same probabilities again, differentiable (`nn::softmax_last_dim` is one
                // fused op each way; candle-nn's function of that name would cut the gradient).
                let probs = softmax_last_dim(&scores(q, k)?)?;
                rec.maps.borrow_mut().push(map(probs)); // (B, h, N, T)
            }
            return self.to_out.forward(&out);
        }
        let v = split(self.to_v.forward(kv_src)?, t)?; // (B, h, T, d)
        let qk = scores(self.to_q.forward(x)?, self.to_k.forward(kv_src)?)?; // (B, h, N, T)
        let mut probs = softmax_last_dim(&qk)?; // (B, h, N, T)
        if let (Some(inj), Some(_)) = (rec.and_then(|r| r.inject.as_ref()), context) {
            probs = replace_rows(&probs, inj.rows.0, inj.next_map(&self.name)?)?;
        }
        if let (Some(rw), Some(_)) = (rec.and_then(|r| r.reweight), context) {
            probs = reweight(&probs, rw)?;
        }
        if let Some(rec) = rec.filter(|r| r.record) {
            if context.is_some() || rec.self_attention {
                rec.maps.borrow_mut().push(map(probs.detach()));
            }
        }
        let out = transpose_copy(&probs.matmul(&v)?, 1)?.reshape((b, n, c))?; // (B, N, C)
        self.to_out.forward(&out)
    }
}

/// `P[rows, :, :, token] *= scale`, the other entries unchanged (no renormalisation, as in
/// prompt-to-prompt's re-weighting).
fn reweight(probs: &Tensor, rw: Reweight) -> Result<Tensor> {
    let (b, _, _, t) = probs.dims4()?;
    if rw.token >= t || rw.rows.0 + rw.rows.1 > b {
        candle_core::bail!(
            "re-weighting token {} of rows {:?}: the attention has {t} tokens and {b} rows",
            rw.token,
            rw.rows
        );
    }
    let w: Vec<f32> = (0..t)
        .map(|i| if i == rw.token { rw.scale as f32 } else { 1.0 })
        .collect();
    let w = Tensor::from_vec(w, (1, 1, 1, t), probs.device())?;
    let (start, len) = rw.rows;
    replace_rows(
        probs,
        start,
        &probs.narrow(0, start, len)?.broadcast_mul(&w)?,
    )
}

/// `probs` with batch rows `start .. start + rows.dim(0)` replaced by `rows`.
fn replace_rows(probs: &Tensor, start: usize, rows: &Tensor) -> Result<Tensor> {
    let (b, len) = (probs.dim(0)?, rows.dim(0)?);
    if start + len > b || rows.dims()[1..] != probs.dims()[1..] {
        candle_core::bail!(
            "cannot put attention rows {:?} at row {start} of attention {:?}",
            rows.dims(),
            probs.dims()
        );
    }
    let mut parts = Vec::new();
    if start > 0 {
        parts.push(probs.narrow(0, 0, start)?);
    }
    parts.push(rows.clone());
    if start + len < b {
        parts.push(probs.narrow(0, start + len, b - start - len)?);
    }
    Tensor::cat(&parts, 0)
}

/// GEGLU feed-forward: `net.2(h * gelu(gate))` with `[h, gate] = net.0.proj(x)` (4x wider).
#[derive(Clone, Debug)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: linear(dim, 2 * inner, vb.pp("net.0.proj"))?,
            out: linear(inner, dim, vb.pp("net.2"))?,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hg = self.proj.forward(x)?; // (B, N, 8C) = [h, gate]
        self.out.forward(&geglu(&hg)?) // h * gelu(gate): (B, N, 4C)
    }
}

/// diffusers' `BasicTransformerBlock`: `x += attn1(norm1(x))`, `x += attn2(norm2(x), context)`,
/// `x += ff(norm3(x))`.
#[derive(Clone, Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(
        dim: usize,
        heads: usize,
        context_dim: usize,
        name: &str,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(dim, vb.pp("norm1"))?,
            attn1: Attention::new(dim, None, heads, format!("{name}.attn1"), vb.pp("attn1"))?,
            norm2: LayerNorm::new(dim, vb.pp("norm2"))?,
            attn2: Attention::new(
                dim,
                Some(context_dim),
                heads,
                format!("{name}.attn2"),
                vb.pp("attn2"),
            )?,
            norm3: LayerNorm::new(dim, vb.pp("norm3"))?,
            ff: FeedForward::new(dim, vb.pp("ff"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        hw: (usize, usize),
        rec: Option<&AttentionRecorder>,
    ) -> Result<Tensor> {
        let x = (x + self.attn1.forward(&self.norm1.forward(x)?, None, hw, rec)?)?;
        let x = (&x
            + self
                .attn2
                .forward(&self.norm2.forward(&x)?, Some(context), hw, rec)?)?;
        &x + self.ff.forward(&self.norm3.forward(&x)?)?
    }
}

/// diffusers' `Transformer2DModel` (SD 1.x: 1x1 conv projections): the feature map becomes a
/// sequence of H*W tokens, goes through one [`BasicTransformerBlock`], and comes back, plus a
/// residual: `y = x + proj_out(block(proj_in(norm(x))))`.
#[derive(Clone, Debug)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Conv2d,
    block: BasicTransformerBlock,
    proj_out: Conv2d,
}

impl Transformer2DModel {
    pub fn new(
        channels: usize,
        heads: usize,
        context_dim: usize,
        groups: usize,
        name: &str,
        vb: VarBuilder,
    ) -> Result<Self> {
        let none = Padding::same(0);
        Ok(Self {
            norm: GroupNorm::new(groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: Conv2d::new(channels, channels, 1, 1, none, vb.pp("proj_in"))?,
            block: BasicTransformerBlock::new(
                channels,
                heads,
                context_dim,
                &format!("{name}.transformer_blocks.0"),
                vb.pp("transformer_blocks.0"),
            )?,
            proj_out: Conv2d::new(channels, channels, 1, 1, none, vb.pp("proj_out"))?,
        })
    }

    /// x (B, C, H, W), context (B, T, D) -> (B, C, H, W)
    pub fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        rec: Option<&AttentionRecorder>,
    ) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self.proj_in.forward(&self.norm.forward(x)?)?; // (B, C, H, W)
        let tokens = transpose_copy(&tokens.reshape((b, c, h * w))?, 1)?; // (B, HW, C)
        let tokens = self.block.forward(&tokens, context, (h, w), rec)?; // (B, HW, C)
        let y = transpose_copy(&tokens, 1)?.reshape((b, c, h, w))?; // (B, C, H, W)
        x + self.proj_out.forward(&y)?
    }
}
