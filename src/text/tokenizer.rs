//! A CLIP-style tokenizer on the `tokenizers` crate: lower-case, byte-level BPE whose word-final
//! pieces end in `</w>`, wrapped as `<|startoftext|> ... <|endoftext|>` and padded with
//! `<|endoftext|>` to a fixed context length.
//!
//! ```text
//! "A red circle" -> <|startoftext|> a</w> red</w> circle</w> <|endoftext|> <|endoftext|> ...
//! ```
//!
//! The same code trains a tokenizer on Shapes World captions (every word of the data set becomes
//! one token) and loads a real CLIP tokenizer from its `vocab.json` + `merges.txt`.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::support::files::write_atomic;
use crate::{Error, Result};

/// Start of text, the first token of every sequence.
pub const START_OF_TEXT: &str = "<|startoftext|>";
/// End of text: closes the sequence, and CLIP pads with it too.
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// The end-of-word suffix: `red</w>` is the whole word "red", `re` would continue.
pub const END_OF_WORD: &str = "</w>";
/// Our context length. Stable Diffusion's CLIP uses 77; our captions are at most a dozen words.
pub const CONTEXT_LENGTH: usize = 16;

/// CLIP's pre-tokenizer pattern: contractions, runs of letters, single digits, runs of other
/// symbols; whitespace is dropped.
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A tokenized text: ids of length `context_length` and what happened on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// `[start, tokens..., end, end (padding)...]`, exactly `context_length` long.
    pub ids: Vec<u32>,
    /// The token strings, same length as `ids`.
    pub tokens: Vec<String>,
    /// Index of the first `<|endoftext|>`: where CLIP pools the sentence embedding.
    pub eot_index: usize,
    /// How many text tokens were cut off to fit the context (0 if none).
    pub truncated: usize,
}

/// The tokenizer plus CLIP's framing rules.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    pub context_length: usize,
    start_id: u32,
    end_id: u32,
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

/// CLIP's text pipeline around a BPE model: NFC, collapse whitespace, lower-case; split with
/// CLIP's pattern; bytes to printable characters (byte-level).
fn clip_pipeline(bpe: BPE) -> Result<Tokenizer> {
    let split = Split::new(
        tokenizers::pre_tokenizers::split::SplitPattern::Regex(CLIP_PATTERN.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| tok_err("CLIP pattern", e))?;
    let normalizer = NormalizerSequence::new(vec![
        NFC.into(),
        Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(|e| tok_err("whitespace rule", e))?
        .into(),
        Lowercase.into(),
    ]);
    let pre = PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ]);
    let mut tk = Tokenizer::new(bpe);
    tk.with_normalizer(Some(normalizer))
        .map_err(|e| tok_err("normalizer", e))?;
    tk.with_pre_tokenizer(Some(pre));
    tk.with_decoder(Some(tokenizers::decoders::bpe::BPEDecoder::new(
        END_OF_WORD.into(),
    )));
    let specials = [START_OF_TEXT, END_OF_TEXT].map(|s| AddedToken::from(s, true));
    tk.add_special_tokens(specials)
        .map_err(|e| tok_err("special tokens", e))?;
    Ok(tk)
}

impl ClipTokenizer {
    fn wrap(inner: Tokenizer, context_length: usize) -> Result<Self> {
        if context_length < 3 {
            return Err(Error::Tokenizer(format!(
                "context length {context_length} leaves no room for text; use at least 3"
            )));
        }
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| Error::Tokenizer(format!("the vocabulary has no {t} token")))
        };
        Ok(ClipTokenizer {
            start_id: id(START_OF_TEXT)?,
            end_id: id(END_OF_TEXT)?,
            inner,
            context_length,
        })
    }

    /// Trains byte-level BPE with `</w>` on `corpus` (no size limit: merging stops when every
    /// word of the corpus is a single token), then lays the vocabulary out as OpenAI's CLIP does:
    /// the 256 byte symbols, the same 256 with `</w>` (so any word can be spelled), the merges in
    /// order, and the two specials last.
    pub fn train<'a>(
        corpus: impl Iterator<Item = &'a str> + Send,
        context_length: usize,
    ) -> Result<Self> {
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(4096)
            .min_frequency(0)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect::<HashSet<char>>())
            .end_of_word_suffix(END_OF_WORD.into())
            .build();
        let bpe = BPE::builder()
            .end_of_word_suffix(END_OF_WORD.into())
            .build()
            .map_err(|e| tok_err("BPE", e))?;
        let mut trainer = tokenizers::models::TrainerWrapper::BpeTrainer(trainer);
        let mut trained = clip_pipeline(bpe)?;
        trained
            .train(&mut trainer, corpus)
            .map_err(|e| tok_err("training", e))?;
        let merges = merges_of(&trained)?;

        let bytes = bytes_to_unicode();
        let mut vocab: Vec<String> = bytes.iter().map(char::to_string).collect();
        vocab.extend(bytes.iter().map(|c| format!("{c}{END_OF_WORD}")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.extend([START_OF_TEXT.to_string(), END_OF_TEXT.to_string()]);
        let vocab: tokenizers::models::bpe::Vocab = vocab
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .end_of_word_suffix(END_OF_WORD.into())
            .build()
            .map_err(|e| tok_err("BPE", e))?;
        Self::wrap(clip_pipeline(bpe)?, context_length)
    }

    /// Loads a tokenizer saved by [`ClipTokenizer::save`] (a `tokenizer.json`).
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Tokenizer(format!(
                "tokenizer file '{}' not found; rebuild it with `inkdrop train clip`",
                path.display()
            )));
        }
        let inner = Tokenizer::from_file(path)
            .map_err(|e| tok_err(&format!("'{}' is not a tokenizer.json", path.display()), e))?;
        Self::wrap(inner, context_length)
    }

    /// Loads a real CLIP tokenizer from OpenAI's `vocab.json` and `merges.txt`.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path, context_length: usize) -> Result<Self> {
        let (v, m) = (vocab.to_string_lossy(), merges.to_string_lossy());
        let bpe = BPE::from_file(&v, &m)
            .end_of_word_suffix(END_OF_WORD.into())
            .build()
            .map_err(|e| tok_err(&format!("cannot load BPE from '{v}' and '{m}'"), e))?;
        Self::wrap(clip_pipeline(bpe)?, context_length)
    }

    /// Saves as `tokenizer.json`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| tok_err("serialising", e))?;
        write_atomic(path, json.as_bytes())
    }

    /// Writes the BPE model as `vocab.json` + `merges.txt` (OpenAI CLIP's format) into `dir`.
    pub fn save_vocab_merges(&self, dir: &Path) -> Result<()> {
        use tokenizers::Model;
        match self.inner.get_model() {
            tokenizers::ModelWrapper::BPE(bpe) => {
                bpe.save(dir, None)
                    .map_err(|e| tok_err("saving vocab.json and merges.txt", e))?;
                Ok(())
            }
            _ => Err(Error::Tokenizer("not a BPE tokenizer".into())),
        }
    }

    /// Number of ids, specials included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of `<|endoftext|>` (also the padding id).
    pub fn end_id(&self) -> u32 {
        self.end_id
    }

    /// Id of `<|startoftext|>`.
    pub fn start_id(&self) -> u32 {
        self.start_id
    }

    /// The string of one id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The BPE pieces of `text` without specials or padding: `["a</w>", "red</w>", ...]`.
    pub fn pieces(&self, text: &str) -> Result<Vec<(u32, String)>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(&format!("encoding {text:?}"), e))?;
        Ok(enc
            .get_ids()
            .iter()
            .copied()
            .zip(enc.get_tokens().iter().cloned())
            .collect())
    }

    /// Frames `text` the way CLIP does: `[start] pieces [end]`, cut to fit, padded with `end`.
    pub fn encode(&self, text: &str) -> Result<Encoding> {
        let mut pieces = self.pieces(text)?;
        let room = self.context_length - 2;
        let truncated = pieces.len().saturating_sub(room);
        pieces.truncate(room);
        let eot_index = pieces.len() + 1;
        let mut ids = Vec::with_capacity(self.context_length);
        ids.push(self.start_id);
        ids.extend(pieces.iter().map(|(id, _)| *id));
        ids.resize(self.context_length, self.end_id);
        let tokens = ids
            .iter()
            .map(|&id| self.inner.id_to_token(id).unwrap_or_default())
            .collect();
        Ok(Encoding {
            ids,
            tokens,
            eot_index,
            truncated,
        })
    }

    /// Decodes ids back to text, dropping specials.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .inner
            .decode(ids, true)
            .map_err(|e| tok_err("decoding", e))?;
        Ok(text.trim().to_string())
    }
}

/// The ordered merge list of a trained BPE tokenizer (read from its serialised form).
fn merges_of(tk: &Tokenizer) -> Result<Vec<(String, String)>> {
    let json: serde_json::Value =
        serde_json::to_value(tk).map_err(|e| tok_err("serialising", e))?;
    let merges = json["model"]["merges"]
        .as_array()
        .ok_or_else(|| Error::Tokenizer("trained model has no merges".into()))?;
    merges
        .iter()
        .map(|m| match m {
            serde_json::Value::Array(pair) if pair.len() == 2 => Ok((
                pair[0].as_str().unwrap_or_default().to_string(),
                pair[1].as_str().unwrap_or_default().to_string(),
            )),
            serde_json::Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Tokenizer(format!("bad merge {s:?}"))),
            other => Err(Error::Tokenizer(format!("bad merge {other}"))),
        })
        .collect()
}

/// GPT-2 / CLIP's byte-to-symbol table, in CLIP's vocabulary order: the printable bytes map to
/// themselves, the other 68 bytes to the code points 256, 257, ... so every byte is a visible
/// character (a space becomes `Ġ`).
pub fn bytes_to_unicode() -> Vec<char> {
    let printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut symbols: Vec<char> = printable
        .iter()
        .filter_map(|&b| char::from_u32(b))
        .collect();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            symbols.push(char::from_u32(256 + extra).unwrap_or('?'));
            extra += 1;
        }
    }
    symbols
}
