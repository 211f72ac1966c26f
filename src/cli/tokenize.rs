//! `inkdrop tokenize`: show how a text becomes token ids, specials and padding included.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::Args;
use inkdrop::clip::bundle::default_tokenizer_path;
use inkdrop::support::table::Table;
use inkdrop::text::{ClipTokenizer, CONTEXT_LENGTH};

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// The text to tokenize.
    pub text: String,
    /// Print JSON: {"text", "tokens", "ids", "eot_index", "truncated"}.
    #[arg(long)]
    pub json: bool,
    /// Tokenizer file [default: data/tokenizer.json].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Context length (CLIP's is 77; ours 16).
    #[arg(long, default_value_t = CONTEXT_LENGTH, value_parser = clap::value_parser!(u16).range(3..=512).map(usize::from))]
    pub context_length: usize,
}

pub fn run(args: &TokenizeArgs) -> anyhow::Result<()> {
    if args.text.trim().is_empty() {
        anyhow::bail!("the text is empty: give some words, e.g. inkdrop tokenize \"a red circle\"");
    }
    let path = args
        .tokenizer
        .clone()
        .unwrap_or_else(default_tokenizer_path);
    let tok = ClipTokenizer::from_file(&path, args.context_length)?;
    let enc = tok.encode(&args.text)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "text": args.text, "tokens": enc.tokens, "ids": enc.ids,
                "eot_index": enc.eot_index, "truncated": enc.truncated,
            })
        );
        return Ok(());
    }
    let mut table = Table::new(["position", "id", "token", "note"]);
    for (i, (id, token)) in enc.ids.iter().zip(&enc.tokens).enumerate() {
        let note = if i == 0 {
            "start of text"
        } else if i == enc.eot_index {
            "end of text (CLIP pools here)"
        } else if i > enc.eot_index {
            "padding"
        } else if token.ends_with("</w>") && (i == 1 || enc.tokens[i - 1].ends_with("</w>")) {
            "word"
        } else if token.ends_with("</w>") {
            "last piece of a word"
        } else {
            "piece of a word"
        };
        table.row([
            i.to_string(),
            id.to_string(),
            token.clone(),
            note.to_string(),
        ]);
    }
    println!(
        "{:?} -> {} ids (vocabulary of {}, context {})\n\n{table}",
        args.text,
        enc.ids.len(),
        tok.vocab_size(),
        tok.context_length
    );
    if enc.truncated > 0 {
        eprintln!(
            "warning: {} tokens did not fit in the context of {} and were cut off",
            enc.truncated, tok.context_length
        );
    }
    Ok(())
}
