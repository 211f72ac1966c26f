//! The library's error type: every message names the input at fault and says how to fix it.

use std::path::PathBuf;

/// Errors from inkdrop's library code. Binaries wrap them with `anyhow` context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown beta schedule '{0}': use one of linear, scaled_linear, squaredcos_cap_v2")]
    UnknownSchedule(String),

    #[error("invalid noise schedule: {0}")]
    InvalidSchedule(String),

    #[error("timestep {t} is outside [0, {n}): training timesteps run from 0 to {last}", last = n - 1)]
    TimestepOutOfRange { t: usize, n: usize },

    #[error("image file '{}' not found: check the path, or leave out --image to use the bundled photograph", path.display())]
    ImageNotFound { path: PathBuf },

    #[error("cannot read image '{}': {reason}", path.display())]
    ImageUnreadable { path: PathBuf, reason: String },

    #[error("'{}' is not an image inkdrop can read ({reason}): give a PNG or JPEG file", path.display())]
    NotAnImage { path: PathBuf, reason: String },

    #[error("cannot write '{}': {reason}", path.display())]
    Write { path: PathBuf, reason: String },

    #[error("cannot create output directory '{}': {reason}; pick another with --out", path.display())]
    OutputDir { path: PathBuf, reason: String },

    #[error("shape mismatch in {what}: expected {expected:?}, got {got:?}")]
    Shape {
        what: &'static str,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("cannot draw figure '{name}': {reason}")]
    Plot { name: String, reason: String },

    #[error("weights file '{}': {reason}", path.display())]
    Weights { path: PathBuf, reason: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("{what}: {reason}")]
    InvalidSetting { what: String, reason: String },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with inkdrop's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
