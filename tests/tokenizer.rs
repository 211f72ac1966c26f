//! The CLIP-style tokenizer: framing, every Shapes World word one token, sub-word pieces for
//! unknown words, truncation, and loading OpenAI-format vocab.json + merges.txt.

use inkdrop::shapes::scene::{Background, Color, Position, Relation, Shape, Size};
use inkdrop::shapes::{sample_at, WorldConfig};
use inkdrop::text::tokenizer::{END_OF_TEXT, START_OF_TEXT};
use inkdrop::text::ClipTokenizer;

fn trained() -> ClipTokenizer {
    let w = WorldConfig::default();
    let caps: Vec<String> = (0..5000).map(|i| sample_at(&w, 0, i).caption).collect();
    ClipTokenizer::train(caps.iter().map(String::as_str), 16).unwrap()
}

#[test]
fn frames_pads_and_lowercases_like_clip() {
    let t = trained();
    let e = t.encode("A  Red CIRCLE").unwrap();
    assert_eq!(e.ids.len(), 16);
    assert_eq!(
        e.tokens[..5],
        [START_OF_TEXT, "a</w>", "red</w>", "circle</w>", END_OF_TEXT]
    );
    assert_eq!(e.eot_index, 4);
    assert!(
        e.ids[4..].iter().all(|&id| id == t.end_id()),
        "padded with <|endoftext|>"
    );
    assert_eq!(e.truncated, 0);
    assert_eq!(t.decode(&e.ids).unwrap(), "a red circle");
    // CLIP's layout: 256 bytes, 256 bytes + </w>, merges, then the two specials last.
    assert_eq!(t.start_id() as usize, t.vocab_size() - 2);
    assert_eq!(t.end_id() as usize, t.vocab_size() - 1);
    assert_eq!(t.id_to_token(0).as_deref(), Some("!"));
    assert_eq!(t.id_to_token(256).as_deref(), Some("!</w>"));
}

#[test]
fn every_shapes_world_word_is_one_token() {
    let t = trained();
    let mut words: Vec<&str> = vec![
        "a",
        "an",
        "and",
        "at",
        "the",
        "in",
        "on",
        "background",
        "of",
        "to",
        "next",
        "shape",
    ];
    words.extend(Shape::ALL.iter().map(|s| s.word()));
    words.extend(Color::ALL.iter().map(|s| s.word()));
    words.extend(Size::ALL.iter().map(|s| s.word()));
    words.extend(Background::ALL.iter().map(|s| s.word()));
    let phrases: Vec<&str> = Position::ALL
        .iter()
        .map(|p| p.word())
        .chain(Relation::ALL.iter().map(|r| r.word()))
        .collect();
    for p in &phrases {
        words.extend(p.split(' '));
    }
    for w in words {
        let pieces = t.pieces(w).unwrap();
        assert_eq!(pieces.len(), 1, "{w:?} -> {pieces:?}");
        assert_eq!(pieces[0].1, format!("{w}</w>"));
    }
}

#[test]
fn unknown_words_split_into_pieces_and_long_texts_are_cut() {
    let t = trained();
    let pieces = t.pieces("zebra").unwrap();
    assert!(pieces.len() > 1, "{pieces:?}");
    assert!(pieces.last().unwrap().1.ends_with("</w>") && !pieces[0].1.ends_with("</w>"));
    let spelled: String = pieces
        .iter()
        .map(|p| p.1.trim_end_matches("</w>"))
        .collect();
    assert_eq!(spelled, "zebra", "no byte is lost");
    let long = "a red circle ".repeat(10);
    let e = t.encode(&long).unwrap();
    assert_eq!(e.ids.len(), 16);
    assert_eq!(e.truncated, 30 - 14);
    assert_eq!(e.eot_index, 15);
    assert_eq!(e.tokens[15], END_OF_TEXT);
}

#[test]
fn loads_openai_vocab_and_merges() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    t.save_vocab_merges(dir.path()).unwrap();
    let merges = std::fs::read_to_string(dir.path().join("merges.txt")).unwrap();
    assert!(merges.starts_with("#version"), "OpenAI's merges.txt header");
    let u = ClipTokenizer::from_vocab_merges(
        &dir.path().join("vocab.json"),
        &dir.path().join("merges.txt"),
        16,
    )
    .unwrap();
    for s in [
        "a large purple star below a white circle",
        "a girl with a dog under a tree",
    ] {
        assert_eq!(t.encode(s).unwrap(), u.encode(s).unwrap(), "{s}");
    }
    // And the JSON round trip.
    let path = dir.path().join("tokenizer.json");
    t.save(&path).unwrap();
    let v = ClipTokenizer::from_file(&path, 16).unwrap();
    assert_eq!(
        t.encode("a blue star").unwrap(),
        v.encode("a blue star").unwrap()
    );
}

#[test]
fn missing_or_bad_tokenizer_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = ClipTokenizer::from_file(&dir.path().join("none.json"), 16)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not found") && err.contains("inkdrop train"),
        "{err}"
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{}").unwrap();
    let err = ClipTokenizer::from_file(&bad, 16)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a tokenizer.json"), "{err}");
}
