//! Image names that become output paths: the one place that decides whether
//! an image's identity (its path relative to `--images`, or a tar member's
//! name, which a shard's author chooses freely) may name a file under an
//! output folder, and which relative path it names.
//!
//! The rule is the same on every OS, so a run gives the same files on Linux,
//! macOS and Windows. Components are separated by `/` only. A name is refused
//! when it is empty or absolute, has an empty or `..` component, or holds a
//! backslash, a control character (NUL included), `:` (drive letters,
//! Windows streams), one of `< > " | ? *`, a component ending in a dot or a
//! space, or a Windows device name (`CON`, `NUL`, `COM1`, ...). `.`
//! components are dropped (`./a/b.png` names `a/b.png`), the only rewrite.
//! What is left is a relative path of plain components: joined to a folder,
//! it stays inside it, whatever the OS.
//!
//! Symlinks are the other way out of a folder: [`SymlinkGuard`] refuses a
//! path whose existing folders resolve outside the output folder.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Why `name` cannot name an output file, as a phrase ("has a '..'
/// component"); else its components, `.` ones dropped.
pub fn output_components(name: &str) -> std::result::Result<Vec<&str>, String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!("holds the control character {c:?}"));
    }
    if name.contains('\\') {
        return Err("holds a backslash (a path separator on Windows)".into());
    }
    if name.starts_with('/') {
        return Err("is an absolute path".into());
    }
    if name.contains(':') {
        return Err("holds ':' (a drive letter or stream name on Windows)".into());
    }
    if let Some(c) = name.chars().find(|c| "<>\"|?*".contains(*c)) {
        return Err(format!(
            "holds {c:?}, which Windows does not allow in names"
        ));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" => return Err("has an empty path component ('//' or a trailing '/')".into()),
            "." => continue,
            ".." => return Err("has a '..' component".into()),
            _ => {}
        }
        if part.ends_with('.') || part.ends_with(' ') {
            return Err(format!(
                "has a component ending in a dot or space ({part:?}), which Windows drops"
            ));
        }
        if is_device_name(part) {
            return Err(format!("has {part:?}, a device name on Windows"));
        }
        parts.push(part);
    }
    if parts.is_empty() {
        return Err("names no file".into());
    }
    Ok(parts)
}

/// `CON`, `PRN`, `AUX`, `NUL`, `COM0`-`COM9`, `LPT0`-`LPT9` (any case, any
/// extension): Windows opens the device whatever the folder.
fn is_device_name(part: &str) -> bool {
    let stem = part.split('.').next().unwrap_or(part).trim_end();
    let upper = stem.to_ascii_uppercase();
    match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" => true,
        _ => {
            let b = upper.as_bytes();
            b.len() == 4
                && (upper.starts_with("COM") || upper.starts_with("LPT"))
                && b[3].is_ascii_digit()
        }
    }
}

/// The relative path (components joined by `/`) `name` names under an
/// output folder, with its extension replaced by `ext` when given, or an
/// error naming the image and why it cannot name one.
pub fn output_rel(name: &str, ext: Option<&str>) -> Result<String> {
    let parts = output_components(name).map_err(|why| refused(name, &why))?;
    let Some(ext) = ext else {
        return Ok(parts.join("/"));
    };
    // Path's own extension rule, as output_path applies it
    let mut p = PathBuf::new();
    p.set_file_name(parts[parts.len() - 1]);
    p.set_extension(ext);
    let last = p.to_string_lossy().into_owned();
    Ok(parts[..parts.len() - 1]
        .iter()
        .copied()
        .chain(std::iter::once(last.as_str()))
        .collect::<Vec<_>>()
        .join("/"))
}

/// `dir/<name>` with its extension replaced by `ext`: a path inside `dir` by
/// construction (plain components only), or an error naming the image.
pub fn output_path(dir: &Path, name: &str, ext: &str) -> Result<PathBuf> {
    let parts = output_components(name).map_err(|why| refused(name, &why))?;
    let mut p = dir.to_path_buf();
    for part in parts {
        p.push(part);
    }
    p.set_extension(ext);
    Ok(p)
}

fn refused(name: &str, why: &str) -> Error {
    Error::Usage(format!(
        "image {} cannot name an output file: it {why}",
        escaped(name)
    ))
}

/// `name` quoted, its control characters and quotes escaped: safe to print
/// on a terminal and to log.
pub fn escaped(name: &str) -> String {
    format!("{name:?}")
}

/// `s` as it is, or [`escaped`] when it holds control characters: how
/// messages show a name a stranger chose.
pub fn printable(s: &str) -> String {
    if s.chars().any(char::is_control) {
        escaped(s)
    } else {
        s.to_string()
    }
}

/// Refuses output paths that leave their folder through a symlink: a folder
/// on the way that is a symlink to somewhere outside `root` (a symlink
/// inside `root` that stays inside is fine). Folders are checked once each.
pub struct SymlinkGuard {
    root: PathBuf,
    /// `root` resolved, once it exists (looked up at the first check after).
    real_root: Option<PathBuf>,
    ok: HashSet<PathBuf>,
}

impl SymlinkGuard {
    pub fn new(root: &Path) -> Self {
        SymlinkGuard {
            root: root.to_path_buf(),
            real_root: None,
            ok: HashSet::new(),
        }
    }

    /// Whether writing `path` (below `root`, as [`output_path`] builds it)
    /// stays inside `root`: every existing folder between them resolves
    /// inside `root`'s own resolution, and the file itself, if it exists, is
    /// not a symlink (atomic writes would replace it, but a reader of the
    /// folder would follow it). `Err` says which folder leads out.
    pub fn check(&mut self, path: &Path) -> std::result::Result<(), String> {
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return Err(format!(
                "{} is not under {}",
                path.display(),
                self.root.display()
            ));
        };
        if self.real_root.is_none() {
            self.real_root = std::fs::canonicalize(&self.root).ok();
        }
        let Some(real_root) = self.real_root.clone() else {
            // The output folder does not exist yet: nothing under it does.
            return Ok(());
        };
        let mut at = self.root.clone();
        let parts: Vec<_> = rel.components().collect();
        for (i, part) in parts.iter().enumerate() {
            at.push(part);
            let last = i + 1 == parts.len();
            if !last && self.ok.contains(&at) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&at) else {
                return Ok(()); // not there yet: neither is anything below it
            };
            if meta.file_type().is_symlink() {
                if last {
                    return Err(format!("{} is a symlink", at.display()));
                }
                let real = std::fs::canonicalize(&at)
                    .map_err(|_| format!("{} is a broken symlink", at.display()))?;
                if !real.starts_with(&real_root) {
                    return Err(format!(
                        "{} is a symlink to {}, outside {}",
                        at.display(),
                        real.display(),
                        self.root.display()
                    ));
                }
            }
            if !last {
                self.ok.insert(at.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_dots_drop() {
        for (name, want) in [
            ("a.png", "a.png"),
            ("dir/sub/b.JPG", "dir/sub/b.JPG"),
            ("./c.png", "c.png"),
            ("x/./y.png", "x/y.png"),
            ("..a/b..c.png", "..a/b..c.png"),
            ("icon.d/e.png", "icon.d/e.png"),
            ("COM10.png", "COM10.png"),
            ("é ü/ñ.png", "é ü/ñ.png"),
        ] {
            assert_eq!(output_rel(name, None).unwrap(), want, "{name:?}");
        }
    }

    /// The relative name `output_rel` gives is the path `output_path` builds
    /// (what the collision check compares against what the writer writes).
    #[test]
    fn output_rel_is_output_path() {
        for name in ["a/.hidden", "x/b.tar.gz", "c", "./d/e.JPG", "f."] {
            let Ok(p) = output_path(Path::new("out"), name, "png") else {
                continue;
            };
            let want: Vec<String> = p
                .strip_prefix("out")
                .unwrap()
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                output_rel(name, Some("png")).unwrap(),
                want.join("/"),
                "{name:?}"
            );
        }
    }

    #[test]
    fn hostile_names_are_refused() {
        for name in [
            "",
            ".",
            "./",
            "../../../escaped1.png",
            "ok/../../escaped2.png",
            "..",
            "a/..",
            "/tmp/abs.png",
            "//server/share/x.png",
            "a//b.png",
            "a/b/",
            "C:evil.png",
            "C:/evil.png",
            "c:\\evil.png",
            "\\\\server\\share\\x.png",
            "..\\..\\x.png",
            "a\\b.png",
            "nul\0.png",
            "a\nb.png",
            "esc\u{1b}[31m.png",
            "del\u{7f}.png",
            "file.png:stream",
            "a<b.png",
            "a>b.png",
            "a\"b.png",
            "a|b.png",
            "a?.png",
            "a*.png",
            "dir./x.png",
            "dir /x.png",
            "x.png.",
            "CON",
            "con.png",
            "sub/Nul.txt.png",
            "aux/x.png",
            "COM1.png",
            "lpt9.png",
        ] {
            assert!(output_rel(name, None).is_err(), "{name:?} passed");
            let err = output_path(Path::new("out"), name, "png").unwrap_err();
            assert!(
                err.to_string().contains("cannot name an output file"),
                "{err}"
            );
        }
    }

    /// Random names from an alphabet rich in separators, dots and specials:
    /// whatever passes joins to a path of plain components inside the folder.
    #[test]
    fn random_names_stay_inside() {
        use rand::{Rng, SeedableRng};
        let alphabet: Vec<char> = "ab./\\:.. \0\n*?<>|\"CONULPT1~é".chars().collect();
        let mut r = rand::rngs::StdRng::seed_from_u64(25);
        let dir = Path::new("root/eps_0.1");
        let mut passed = 0;
        for _ in 0..20_000 {
            let len = r.random_range(0..12);
            let name: String = (0..len)
                .map(|_| alphabet[r.random_range(0..alphabet.len())])
                .collect();
            if let Ok(p) = output_path(dir, &name, "png") {
                passed += 1;
                let rel = p.strip_prefix(dir).expect("under the folder");
                assert!(rel.components().count() >= 1, "{name:?}");
                for c in rel.components() {
                    assert!(
                        matches!(c, std::path::Component::Normal(_)),
                        "{name:?} gives {}",
                        p.display()
                    );
                }
            }
        }
        assert!(
            passed > 100,
            "only {passed} names passed: the test means little"
        );
    }
}
