//! CLIP's contrastive loss: in a batch of B (image, caption) pairs, each image must pick out its
//! caption among B, and each caption its image.

use candle_core::{Result, Tensor, D};

/// What one loss evaluation gives back.
pub struct ContrastiveOutput {
    /// Scalar loss.
    pub loss: Tensor,
    /// logits_per_image (B, B): row i scores image i against every caption.
    pub logits: Tensor,
}

/// Targets for a batch where identical captions count as matches: row i spreads probability
/// 1/k over the k captions equal to caption i (k = 1 when all captions differ, the identity).
pub fn match_targets(captions: &[String], device: &candle_core::Device) -> Result<Tensor> {
    let b = captions.len();
    let mut t = vec![0f32; b * b];
    for i in 0..b {
        let same: Vec<usize> = (0..b).filter(|&j| captions[j] == captions[i]).collect();
        for &j in &same {
            t[i * b + j] = 1.0 / same.len() as f32;
        }
    }
    Tensor::from_vec(t, (b, b), device)
}

/// Symmetric cross-entropy over scaled cosine similarities:
///
/// ```text
/// I = normalize(image_features), T = normalize(text_features)       (B, E) each
/// logits = exp(logit_scale) * I T^T                                  (B, B)
/// loss = ( CE(logits, targets) + CE(logits^T, targets^T) ) / 2,  CE(z, y) = -mean_i sum_j y_ij log softmax(z_i)_j
/// ```
///
/// `normalize = false` skips the L2 normalisation: one of the classic mistakes chapter 4 shows.
pub fn contrastive_loss(
    image_features: &Tensor,
    text_features: &Tensor,
    scale: &Tensor,
    targets: &Tensor,
    normalize: bool,
) -> Result<ContrastiveOutput> {
    let (img, txt) = if normalize {
        (super::l2_normalize(image_features)?, super::l2_normalize(text_features)?)
    } else {
        (image_features.clone(), text_features.clone())
    };
    let logits = img.matmul(&txt.t()?)?.broadcast_mul(scale)?; // (B, B)
    let ce = |z: &Tensor, y: &Tensor| -> Result<Tensor> {
        let log_p = candle_nn::ops::log_softmax(z, D::Minus1)?; // (B, B)
        (log_p * y)?.sum(D::Minus1)?.mean_all()?.neg()
    };
    let loss = ((ce(&logits, targets)? + ce(&logits.t()?, &targets.t()?)?)? * 0.5)?;
    Ok(ContrastiveOutput { loss, logits })
}
