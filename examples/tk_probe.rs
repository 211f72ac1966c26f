use inkdrop::shapes::{sample_at, WorldConfig};
use inkdrop::text::ClipTokenizer;
fn main() {
    let cfg = WorldConfig::default();
    let caps: Vec<String> = (0..20000).map(|i| sample_at(&cfg, 1, i).caption).collect();
    for c in caps.iter().take(12) { println!("{c}"); }
    let t = ClipTokenizer::train(caps.iter().map(|s| s.as_str()), 16).unwrap();
    println!("vocab {}", t.vocab_size());
    for s in ["A red circle above a blue square", "a girl with a dog under a tree", "an orange star at the top left on a white background"] {
        let e = t.encode(s).unwrap();
        println!("{:?}\n{:?} eot {} trunc {}", e.tokens, e.ids, e.eot_index, e.truncated);
        println!("decoded: {:?}", t.decode(&e.ids).unwrap());
    }
    t.save(std::path::Path::new("/tmp/tk/tokenizer.json")).unwrap();
    t.save_vocab_merges(std::path::Path::new("/tmp/tk")).unwrap();
    let t2 = ClipTokenizer::from_vocab_merges(std::path::Path::new("/tmp/tk/vocab.json"), std::path::Path::new("/tmp/tk/merges.txt"), 16).unwrap();
    println!("{:?}", t2.encode("a girl with a dog").unwrap().tokens);
}
