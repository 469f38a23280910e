//! Finding images under a path: image files, a folder walked recursively, or
//! WebDataset tar shards (a `.tar` file, the `.tar` files of a folder, or a
//! brace pattern such as `data-{000000..000146}.tar`). A shard's members are
//! grouped by key (the member path up to the first dot of its file name); each
//! key with an image member is one image, labelled by its `.cls` member when
//! there is one.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Extensions we decode (lower case).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "webp", "gif", "tif", "tiff"];

/// One image: a file, or a member of a tar shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// The image file, or the shard holding it.
    pub path: PathBuf,
    /// Path relative to `--images` (with `/`); for a shard member, its key
    /// and extension (`n01440764/img_001.jpg`).
    pub rel: String,
    /// Where the member's bytes lie in the shard: (offset, length).
    pub member: Option<(u64, u64)>,
    /// The label a shard's `.cls` member gives.
    pub label: Option<u32>,
}

impl ImageEntry {
    fn file(path: PathBuf, rel: String) -> Self {
        ImageEntry {
            path,
            rel,
            member: None,
            label: None,
        }
    }

    /// The encoded image's bytes.
    pub fn read(&self) -> Result<Vec<u8>> {
        let Some((offset, len)) = self.member else {
            return std::fs::read(&self.path).map_err(|e| Error::io(&self.path, e));
        };
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(&self.path, e))?;
        let mut bytes = Vec::with_capacity(len as usize);
        f.take(len)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        if bytes.len() as u64 != len {
            return Err(Error::Usage(format!(
                "{}: member {} is cut short ({} of {len} bytes): the shard is truncated",
                self.path.display(),
                self.rel,
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// How messages name the image (control characters escaped, so that a
    /// name cannot drive the terminal).
    pub fn display(&self) -> String {
        let shown = match self.member {
            Some(_) => format!("{}:{}", self.path.display(), self.rel),
            None => self.path.display().to_string(),
        };
        super::names::printable(&shown)
    }
}

/// What discovery found: images, and what it had to skip (keys without an
/// image, truncated shards, missing shards of a pattern).
#[derive(Debug, Default)]
pub struct Discovered {
    pub entries: Vec<ImageEntry>,
    pub skipped: Vec<super::Skipped>,
}

fn is_tar(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("tar"))
}

/// Expands `{a,b}` and `{000..146}` (zero-padded like its first bound) in a
/// path pattern; `None` when it has no braces.
pub fn expand_braces(pattern: &str) -> Result<Option<Vec<String>>> {
    let Some(open) = pattern.find('{') else {
        return Ok(None);
    };
    let bad = |why: &str| Error::Usage(format!("--images {pattern:?}: {why}"));
    let close = pattern[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| bad("a `{` without its `}`"))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let items: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (x, y): (u64, u64) = match (a.parse(), b.parse()) {
            (Ok(x), Ok(y)) if x <= y => (x, y),
            _ => return Err(bad("a range must be {FIRST..LAST} with FIRST <= LAST")),
        };
        if y - x > 10_000_000 {
            return Err(bad("the range is too long"));
        }
        let width = a.len();
        (x..=y).map(|i| format!("{i:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let mut out = Vec::new();
    for item in items {
        let rest = format!("{item}{tail}");
        match expand_braces(&rest)? {
            Some(v) => out.extend(v.into_iter().map(|r| format!("{head}{r}"))),
            None => out.push(format!("{head}{rest}")),
        }
    }
    Ok(Some(out))
}

/// What one key of a shard holds: its image member (extension, offset,
/// length) and the text of its `.cls` member.
type KeyMembers = (Option<(String, u64, u64)>, Option<String>);

/// The images of one tar shard, keyed as WebDataset does.
fn read_shard(path: &Path, found: &mut Discovered) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut keys: std::collections::BTreeMap<String, KeyMembers> = Default::default();
    let skip = |found: &mut Discovered, image: String, reason: String| {
        let image = super::names::printable(&image);
        found.skipped.push(super::Skipped { image, reason })
    };
    let entries = archive.entries().map_err(|e| Error::io(path, e))?;
    for (members, entry) in entries.enumerate() {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                skip(
                    found,
                    path.display().to_string(),
                    format!("truncated or corrupt tar after {members} members ({e}); the rest of the shard is skipped"),
                );
                break;
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        // The member's name as the shard spells it (a shard's author chooses
        // it freely): kept as is, so reports show the source; whether it may
        // name an output file is decided by data::names, once, for every format.
        let name = match entry.path() {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(_) => continue,
        };
        let (dir, base) = name
            .rsplit_once('/')
            .map_or(("", name.as_str()), |(d, b)| (d, b));
        let Some((stem, ext)) = base.split_once('.') else {
            continue;
        };
        let key = if dir.is_empty() {
            stem.to_string()
        } else {
            format!("{dir}/{stem}")
        };
        let ext = ext.to_ascii_lowercase();
        let slot = keys.entry(key).or_default();
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            slot.0 = Some((ext, entry.raw_file_position(), entry.size()));
        } else if ext == "cls" {
            let mut text = String::new();
            use std::io::Read;
            if entry.read_to_string(&mut text).is_ok() {
                slot.1 = Some(text.trim().to_string());
            }
        }
    }
    for (key, (image, cls)) in keys {
        let Some((ext, offset, len)) = image else {
            skip(
                found,
                format!("{}:{key}", path.display()),
                "no image member (png, jpg, ...) for this key".into(),
            );
            continue;
        };
        let label = match cls.as_deref().map(str::parse::<u32>) {
            None => None,
            Some(Ok(l)) => Some(l),
            Some(Err(_)) => {
                skip(
                    found,
                    format!("{}:{key}", path.display()),
                    format!(
                        "its .cls member {:?} is not a class index",
                        cls.unwrap_or_default()
                    ),
                );
                continue;
            }
        };
        found.entries.push(ImageEntry {
            path: path.to_path_buf(),
            rel: format!("{key}.{ext}"),
            member: Some((offset, len)),
            label,
        });
    }
    Ok(())
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// A file, every image (and `.tar` shard) under a folder, recursively, or the
/// shards a brace pattern names; sorted by relative path.
pub fn discover(root: &Path) -> Result<Discovered> {
    let mut found = Discovered::default();
    let text = root.to_string_lossy();
    if let Some(paths) = expand_braces(&text)? {
        let existing: Vec<PathBuf> = paths
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .collect();
        if existing.is_empty() {
            return Err(Error::Usage(format!(
                "--images {text}: the pattern matches no file ({} names, e.g. {})",
                paths.len(),
                paths.first().map(String::as_str).unwrap_or("")
            )));
        }
        for p in paths.iter().map(PathBuf::from) {
            if !p.is_file() {
                found.skipped.push(super::Skipped {
                    image: p.display().to_string(),
                    reason: "no such shard (named by the --images pattern)".into(),
                });
            } else if is_tar(&p) {
                read_shard(&p, &mut found)?;
            } else if is_image(&p) {
                let rel = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                found.entries.push(ImageEntry::file(p, rel));
            }
        }
        return finish(root, found);
    }
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if meta.is_file() {
        if is_tar(root) {
            read_shard(root, &mut found)?;
            return finish(root, found);
        }
        let rel = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        found
            .entries
            .push(ImageEntry::file(root.to_path_buf(), rel));
        return Ok(found);
    }
    for entry in walkdir::WalkDir::new(root).follow_links(true) {
        let entry = entry.map_err(|e| {
            let path = e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.to_path_buf());
            Error::io(path, std::io::Error::other(e.to_string()))
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        if is_tar(entry.path()) {
            read_shard(entry.path(), &mut found)?;
        } else if is_image(entry.path()) {
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap_or(entry.path())
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            found
                .entries
                .push(ImageEntry::file(entry.path().to_path_buf(), rel));
        }
    }
    finish(root, found)
}

/// Sort by relative path, drop duplicate keys (two shards with one key), and
/// refuse an empty result.
fn finish(root: &Path, mut found: Discovered) -> Result<Discovered> {
    found.entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    let mut kept: Vec<ImageEntry> = Vec::with_capacity(found.entries.len());
    for e in std::mem::take(&mut found.entries) {
        if kept.last().is_some_and(|k| k.rel == e.rel) {
            found.skipped.push(super::Skipped {
                image: e.display(),
                reason: format!(
                    "{} appears twice (another shard has the same key)",
                    super::names::printable(&e.rel)
                ),
            });
            continue;
        }
        kept.push(e);
    }
    found.entries = kept;
    if found.entries.is_empty() {
        return Err(Error::Usage(format!(
            "no images found under {} (looked for {} files and .tar shards){}",
            root.display(),
            IMAGE_EXTENSIONS.join(", "),
            if found.skipped.is_empty() {
                String::new()
            } else {
                format!(
                    "; skipped {}: {}",
                    found.skipped.len(),
                    found.skipped[0].reason
                )
            }
        )));
    }
    Ok(found)
}
