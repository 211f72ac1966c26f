//! The frozen text tower's `encoder_hidden_states` for every caption of a training set,
//! computed once.
//!
//! With CLIP's text tower frozen, a caption's states are the same at every step, yet encoding a
//! batch of 64 captions took 20-25 ms of each 0.37 s UNet training step (tokenizing, then three
//! transformer layers over 64 x 16 tokens of width 128: small matrix products). The data set's
//! distinct captions, and the empty prompt of caption dropout, are encoded once (a few seconds
//! for the 40,000 captions of `train unet`'s data set, whose distinct states take about 130 MB
//! more peak memory), and each step gathers its rows:
//!
//! ```text
//! states[d]      = encoder_hidden_states(distinct[d])       (D, T, W), once
//! context[b]     = states[index(caption_b)]                 (B, T, W), every step
//! ```
//!
//! Each caption's states do not depend on the other captions of its batch (every layer works
//! row by row or within one caption), so a step sees the same numbers either way.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::{Error, Result};

/// Captions encoded per call while filling the table.
const CHUNK: usize = 256;

/// One row of text states per distinct caption.
pub struct CaptionStates {
    index: HashMap<String, u32>,
    /// (D, T, W): the states of the distinct captions, the empty prompt first.
    states: Tensor,
}

impl CaptionStates {
    /// Encodes the empty prompt and every distinct caption of `captions` with `encode`.
    pub fn new(captions: &[String], encode: &dyn Fn(&[String]) -> Result<Tensor>) -> Result<Self> {
        let mut distinct = vec![String::new()];
        let mut index = HashMap::from([(String::new(), 0u32)]);
        for caption in captions {
            index.entry(caption.clone()).or_insert_with(|| {
                distinct.push(caption.clone());
                (distinct.len() - 1) as u32
            });
        }
        let parts = distinct
            .chunks(CHUNK)
            .map(|chunk| encode(chunk).map(|s| s.detach())) // (chunk, T, W) each
            .collect::<Result<Vec<_>>>()?;
        let states = Tensor::cat(&parts, 0)?; // (D, T, W)
        Ok(Self { index, states })
    }

    /// How many distinct texts the table holds (the empty prompt included).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the table is empty (never: it always holds the empty prompt).
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The states of `texts` (B, T, W), each of them a caption the table was built from or the
    /// empty prompt.
    pub fn get(&self, texts: &[String]) -> Result<Tensor> {
        let rows = texts
            .iter()
            .map(|t| {
                self.index
                    .get(t)
                    .copied()
                    .ok_or_else(|| Error::InvalidSetting {
                        what: format!("caption {t:?}"),
                        reason: "it is not in the training set whose text states were encoded"
                            .into(),
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        let rows = Tensor::new(rows.as_slice(), self.states.device())?; // (B,)
        Ok(self.states.index_select(&rows, 0)?) // (B, T, W)
    }
}
