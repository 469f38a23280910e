//! Measured kernel choices per adapter (the autotune's results), kept in a JSON
//! file between runs so a layer is timed once per adapter and driver.
//!
//! The file holds `{"format": 1, "adapters": {ADAPTER: {KEY: CHOICE}}}`, ADAPTER
//! being "name | driver | backend". Keys name the kernel source's hash, so an
//! edited shader is tuned afresh. Saving merges with what is on disk (another
//! process may have tuned other layers) and replaces the file atomically. A
//! missing or unreadable file is an empty table, never an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// Where the table lives by default: `ADVEX_TUNE_CACHE` (a file path; empty or
/// `off` keeps the table in memory only), else `$XDG_CACHE_HOME/advex/tune.json`,
/// else `$HOME/.cache/advex/tune.json`.
pub fn default_cache_path() -> Option<PathBuf> {
    if let Ok(v) = std::env::var("ADVEX_TUNE_CACHE") {
        let v = v.trim();
        if v.is_empty() || v.eq_ignore_ascii_case("off") {
            return None;
        }
        return Some(PathBuf::from(v));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("advex").join("tune.json"))
}

/// One adapter's measured choices.
#[derive(Debug, Default)]
pub struct TuneTable {
    path: Option<PathBuf>,
    adapter: String,
    entries: BTreeMap<String, String>,
    /// Keys set since the last save.
    fresh: BTreeMap<String, String>,
}

fn read_file(path: &Path) -> Option<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("tuning cache {}: {e}; starting empty", path.display());
            return None;
        }
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v["format"] == 1 && v["adapters"].is_object() => Some(v),
        _ => {
            log::warn!(
                "tuning cache {} is not an advex tuning file; it will be rewritten",
                path.display()
            );
            None
        }
    }
}

fn entries_of(file: &Value, adapter: &str) -> BTreeMap<String, String> {
    file["adapters"][adapter]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

impl TuneTable {
    /// The table of `adapter` from `path` (empty if absent or unreadable);
    /// `None` keeps it in memory only.
    pub fn load(path: Option<PathBuf>, adapter: &str) -> Self {
        let entries = path
            .as_deref()
            .and_then(read_file)
            .map(|f| entries_of(&f, adapter))
            .unwrap_or_default();
        TuneTable {
            path,
            adapter: adapter.to_string(),
            entries,
            fresh: BTreeMap::new(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    pub fn insert(&mut self, key: String, choice: String) {
        self.entries.insert(key.clone(), choice.clone());
        self.fresh.insert(key, choice);
    }

    /// Take `other`'s choices when it describes the same adapter (they are
    /// saved by `other`, so they are not fresh here).
    pub fn adopt(&mut self, other: &TuneTable) {
        if other.adapter == self.adapter {
            for (k, v) in &other.entries {
                self.entries.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Write the choices made since the last save (merged into the file).
    /// Nothing to do without a path or without new choices.
    pub fn save(&mut self) -> Result<()> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        if self.fresh.is_empty() {
            return Ok(());
        }
        let io = |e: std::io::Error| Error::Io {
            path: path.clone(),
            source: e,
        };
        let mut file = read_file(&path).unwrap_or_else(|| json!({"format": 1, "adapters": {}}));
        let adapters = file["adapters"].as_object_mut().expect("checked on read");
        let mine = adapters
            .entry(self.adapter.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !mine.is_object() {
            *mine = Value::Object(Map::new());
        }
        let mine = mine.as_object_mut().expect("just made an object");
        for (k, v) in &self.fresh {
            mine.insert(k.clone(), Value::String(v.clone()));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let text = serde_json::to_string_pretty(&file).expect("JSON values serialise");
        std::fs::write(&tmp, text + "\n").map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        // What others wrote meanwhile is ours too from now on.
        self.entries.extend(entries_of(&file, &self.adapter));
        self.fresh.clear();
        Ok(())
    }
}
