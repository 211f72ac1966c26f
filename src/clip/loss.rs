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

/// The match matrix when identical captions count as matches: `M[i][j] = 1` if caption j equals
/// caption i (the identity when all captions differ). What CLIP can do without ground truth.
pub fn match_targets(captions: &[String], device: &candle_core::Device) -> Result<Tensor> {
    let b = captions.len();
    let m: Vec<f32> = (0..b * b)
        .map(|k| f32::from(u8::from(captions[k / b] == captions[k % b])))
        .collect();
    Tensor::from_vec(m, (b, b), device)
}

/// The match matrix from ground truth: `M[i][j] = 1` if caption j is a true description of
/// image i ("a circle" matches every single circle in the batch), so no true pair is ever
/// pushed apart as a negative.
pub fn truth_targets(
    samples: &[crate::shapes::Sample],
    device: &candle_core::Device,
) -> Result<Tensor> {
    let b = samples.len();
    let m: Vec<f32> = (0..b * b)
        .map(|k| {
            f32::from(u8::from(
                k / b == k % b || samples[k % b].claim.is_true_of(&samples[k / b].scene),
            ))
        })
        .collect();
    Tensor::from_vec(m, (b, b), device)
}

/// Rows scaled to sum to 1: a 0/1 match matrix as target distributions.
fn row_normalize(m: &Tensor) -> Result<Tensor> {
    m.broadcast_div(&m.sum_keepdim(1)?.clamp(1e-12, f64::MAX)?)
}

/// Symmetric cross-entropy over scaled cosine similarities:
///
/// ```text
/// I = normalize(image_features), T = normalize(text_features)       (B, E) each
/// logits = exp(logit_scale) * I T^T                                  (B, B)
/// loss = ( CE(logits, rows(M)) + CE(logits^T, rows(M^T)) ) / 2,  CE(z, y) = -mean_i sum_j y_ij log softmax(z_i)_j
/// ```
///
/// `matches` is the 0/1 matrix M (image i, caption j); `rows` spreads each row's probability
/// evenly over its matches (the identity matrix gives CLIP's original loss).
///
/// `normalize = false` skips the L2 normalisation: one of the classic mistakes chapter 4 shows.
pub fn contrastive_loss(
    image_features: &Tensor,
    text_features: &Tensor,
    scale: &Tensor,
    matches: &Tensor,
    normalize: bool,
) -> Result<ContrastiveOutput> {
    let (img, txt) = if normalize {
        (
            super::l2_normalize(image_features)?,
            super::l2_normalize(text_features)?,
        )
    } else {
        (image_features.clone(), text_features.clone())
    };
    let logits = img.matmul(&txt.t()?)?.broadcast_mul(scale)?; // (B, B)
    let ce = |z: &Tensor, y: &Tensor| -> Result<Tensor> {
        let log_p = candle_nn::ops::log_softmax(z, D::Minus1)?; // (B, B)
        (log_p * y)?.sum(D::Minus1)?.mean_all()?.neg()
    };
    let per_image = row_normalize(matches)?; // (B, B): image i -> its true captions
    let per_text = row_normalize(&matches.t()?.contiguous()?)?; // (B, B): caption j -> its images
    let loss = ((ce(&logits, &per_image)? + ce(&logits.t()?, &per_text)?)? * 0.5)?;
    Ok(ContrastiveOutput { loss, logits })
}
