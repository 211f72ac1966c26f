//! Training loops and what they share: the optimizer and schedule ([`optim`]), checkpoints that
//! resume exactly ([`checkpoint`]), and one loop per model.

pub mod caption_states;
pub mod checkpoint;
pub mod clip;
pub mod grounding;
pub mod inside_share;
pub mod optim;
pub mod prefetch;
pub mod unet;
pub mod vae;
