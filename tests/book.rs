//! The book cannot drift from the code: every `{{#include}}` names a file and anchor that exist,
//! and every image or generated table it shows is produced by running the chapter programs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Chapter folders under `book/src/generated/`, the binaries that write them, and flags that
/// make a run quick (same figures, fewer samples).
const CHAPTERS: &[(&str, &str, &[&str])] = &[
    (
        "ch01",
        env!("CARGO_BIN_EXE_ch01_forward_noising"),
        &["--chains", "500"],
    ),
    (
        "ch02",
        env!("CARGO_BIN_EXE_ch02_noise_prediction"),
        &["--steps", "20", "--live-steps", "5"],
    ),
    (
        "ch03",
        env!("CARGO_BIN_EXE_ch03_reverse_sampling"),
        &["--reference-steps", "50", "--steps", "2,4"],
    ),
    (
        "ch04",
        env!("CARGO_BIN_EXE_ch04_clip_similarity"),
        &["--demo-steps", "3", "--tower-steps", "3", "--per-pair", "2"],
    ),
    (
        "ch05",
        env!("CARGO_BIN_EXE_ch05_cross_attention"),
        &["--steps", "3", "--seeds", "1"],
    ),
    (
        "ch06",
        env!("CARGO_BIN_EXE_ch06_latent_space"),
        &["--eval-images", "20"],
    ),
    (
        "ch07",
        env!("CARGO_BIN_EXE_ch07_text_to_image"),
        &["--steps", "3", "--per-prompt", "1"],
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn markdown_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir()
            && path
                .file_name()
                .is_some_and(|n| n != "generated" && n != "measured")
        {
            out.extend(markdown_files(&path));
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `{{#include path}}` / `{{#include path:anchor}}` directives: (path, anchor).
fn includes(text: &str) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{#") {
        let after = &rest[i + 3..];
        let end = after.find("}}").expect("unclosed {{# directive");
        let directive = after[..end].trim();
        if let Some(arg) = directive
            .strip_prefix("include")
            .or_else(|| directive.strip_prefix("rustdoc_include"))
        {
            let arg = arg.trim();
            let (path, anchor) = match arg.split_once(':') {
                Some((p, a)) if !a.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
                    (p, Some(a.to_string()))
                }
                Some((p, _)) => (p, None), // line ranges
                None => (arg, None),
            };
            found.push((path.to_string(), anchor));
        }
        rest = &after[end..];
    }
    found
}

/// Markdown image links `![alt](path)`.
fn images(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("![") {
        let after = &rest[i + 2..];
        if let Some(close) = after.find("](") {
            let link = &after[close + 2..];
            if let Some(end) = link.find(')') {
                found.push(
                    link[..end]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string(),
                );
            }
        }
        rest = after;
    }
    found
}

/// Runs every chapter into a temporary folder and returns the `generated/chNN/file` paths made.
fn generated_by_chapters(tmp: &Path) -> BTreeSet<String> {
    let mut made = BTreeSet::new();
    for (name, bin, quick) in CHAPTERS {
        let out = tmp.join(name);
        let status = Command::new(bin)
            .args(["--out", out.to_str().unwrap()])
            .args(*quick)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{name} failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        for entry in std::fs::read_dir(&out).unwrap() {
            made.insert(format!(
                "generated/{name}/{}",
                entry.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    made
}

#[test]
fn every_include_and_image_in_the_book_resolves() {
    let src = root().join("book/src");
    let tmp = tempfile::tempdir().unwrap();
    let generated = generated_by_chapters(tmp.path());
    let (mut n_includes, mut n_anchors, mut n_images) = (0, 0, 0);
    let mut problems = Vec::new();
    for md in markdown_files(&src) {
        let text = std::fs::read_to_string(&md).unwrap();
        let dir = md.parent().unwrap();
        let name = md.strip_prefix(root()).unwrap().display().to_string();
        for (path, anchor) in includes(&text) {
            n_includes += 1;
            if path.starts_with("generated/") {
                if !generated.contains(&path) {
                    problems.push(format!("{name}: includes {path}, which no chapter writes"));
                }
                continue;
            }
            let file = dir.join(&path);
            let Ok(code) = std::fs::read_to_string(&file) else {
                problems.push(format!("{name}: includes missing file {path}"));
                continue;
            };
            if let Some(anchor) = anchor {
                n_anchors += 1;
                let start = code.lines().any(|l| {
                    l.trim_start().trim_start_matches("//").trim() == format!("ANCHOR: {anchor}")
                });
                let end = code.lines().any(|l| {
                    l.trim_start().trim_start_matches("//").trim()
                        == format!("ANCHOR_END: {anchor}")
                });
                if !(start && end) {
                    problems.push(format!(
                        "{name}: anchor '{anchor}' not found (ANCHOR and ANCHOR_END) in {path}"
                    ));
                }
            }
        }
        for path in images(&text) {
            n_images += 1;
            let ok = if path.starts_with("generated/") {
                generated.contains(&path)
            } else {
                dir.join(&path).exists()
            };
            if !ok {
                problems.push(format!(
                    "{name}: image {path} is not produced by the figure generation"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "book problems:\n{}",
        problems.join("\n")
    );
    assert!(
        n_includes >= 10 && n_anchors >= 5 && n_images >= 6,
        "parser found too little: {n_includes} includes, {n_anchors} anchors, {n_images} images"
    );
}

#[test]
fn parser_catches_broken_links() {
    let text = "{{#include ../../chapters/x.rs:cell}}\n{{#include generated/ch01/t.md}}\n![a](generated/ch01/p.png) ![b](x.png \"t\")";
    assert_eq!(
        includes(text),
        vec![
            ("../../chapters/x.rs".into(), Some("cell".into())),
            ("generated/ch01/t.md".into(), None)
        ]
    );
    assert_eq!(
        images(text),
        vec!["generated/ch01/p.png".to_string(), "x.png".to_string()]
    );
}

#[test]
fn readme_images_exist() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let imgs = images(&readme);
    assert!(!imgs.is_empty(), "the README shows a generated picture");
    for path in imgs {
        assert!(
            root().join(&path).exists(),
            "README image {path} missing: run `bash book/generate.sh`"
        );
    }
}

#[test]
fn summary_lists_every_page() {
    let src = root().join("book/src");
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).unwrap();
    for md in markdown_files(&src) {
        let rel = md.strip_prefix(&src).unwrap().display().to_string();
        if rel != "SUMMARY.md" {
            assert!(
                summary.contains(&format!("({rel})")),
                "{rel} is not in SUMMARY.md"
            );
        }
    }
}
