//! Finding images under a path.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Extensions we decode (lower case).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "webp", "gif", "tif", "tiff"];

/// One image file: its path and its path relative to `--images` (with `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub path: PathBuf,
    pub rel: String,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// A file, or every image under a folder (recursively, sorted by relative path).
pub fn discover(root: &Path) -> Result<Vec<ImageEntry>> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if meta.is_file() {
        let rel = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(vec![ImageEntry {
            path: root.to_path_buf(),
            rel,
        }]);
    }
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(true) {
        let entry = entry.map_err(|e| {
            let path = e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.to_path_buf());
            Error::io(path, std::io::Error::other(e.to_string()))
        })?;
        if entry.file_type().is_file() && is_image(entry.path()) {
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap_or(entry.path())
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push(ImageEntry {
                path: entry.path().to_path_buf(),
                rel,
            });
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    if out.is_empty() {
        return Err(Error::Usage(format!(
            "no images found under {} (looked for {})",
            root.display(),
            IMAGE_EXTENSIONS.join(", ")
        )));
    }
    Ok(out)
}
