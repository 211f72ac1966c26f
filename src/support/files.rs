//! Output folders and atomic writes: a file is either the old one or the complete new one,
//! never half written, even if the process dies mid-write.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The crate root (where `Cargo.toml`, `data/` and `book/` live), fixed at compile time.
pub fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Default output folder for a command: `target/inkdrop/<name>` under the crate root.
pub fn default_out_dir(name: &str) -> PathBuf {
    crate_root().join("target").join("inkdrop").join(name)
}

/// The output folder of a chapter, created if needed: `book/src/generated/<chapter>` with
/// `--book`, else `--out`, else `target/inkdrop/<chapter>`.
pub fn chapter_out_dir(chapter: &str, book: bool, out: Option<&Path>) -> Result<PathBuf> {
    let dir = match (out, book) {
        (_, true) => crate_root().join("book/src/generated").join(chapter),
        (Some(dir), false) => dir.to_path_buf(),
        (None, false) => default_out_dir(chapter),
    };
    prepare_out_dir(&dir)
}

/// Creates `dir` (and its parents) if needed and returns it.
pub fn prepare_out_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::OutputDir {
            path: dir.to_path_buf(),
            reason: "a file with that name exists".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::OutputDir {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(dir.to_path_buf())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
/// The folder is created if it does not exist yet (a training run must not end, after minutes
/// of work, on "No such file or directory" for its `--out`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |e: std::io::Error| Error::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        prepare_out_dir(parent)?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Write {
            path: path.to_path_buf(),
            reason: "the path has no file name".into(),
        })?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}
