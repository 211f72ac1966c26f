//! Text: the CLIP-style tokenizer, and (with CLIP) the text transformer.

pub mod tokenizer;

pub use tokenizer::{ClipTokenizer, Encoding, CONTEXT_LENGTH};
