//! Sharded, resumable runs (`--out`): the layout under `DIR`, the run
//! manifest, per-shard commits and `advex merge`.
//!
//! ```text
//! DIR/advex-run.json                 the manifest: written once, compared on every rerun
//! DIR/eps_<value>/...                images (png files, or tar / safetensors shards)
//! DIR/shards/shard-000000.csv        that shard's predictions rows (no header)
//! DIR/shards/shard-000000.json       its marker: sums, skipped images, worker, and every
//!                                    file the shard wrote (size, XXH3 digest); written last
//! DIR/report.json, predictions.csv, accuracy.svg   once every shard is committed
//! ```
//!
//! The work is a fixed list of shards of `--shard-size` images sorted by path.
//! A shard's images and predictions are written under temporary names and
//! renamed; its marker is created last and only if absent (a hard link of a
//! finished temporary file), so a shard is committed exactly once even when two
//! workers race on it, and whatever a killed worker left is redone on rerun.
//! Sums are merged in shard order, so a run split over any number of workers
//! reports exactly what one unsplit run does.
//!
//! Nothing committed is trusted unchecked. A rerun checks every committed
//! shard: its rows file whole (size and digest: it is small), each other
//! file by its size (one stat), or by its digest too with `--verify`. A shard
//! that fails is redone, with a warning naming the file. A merge refuses a
//! shard whose rows do not match its marker, naming it and what to run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::worker::Worker;
use crate::data::{write_atomic, FileRecord, Skipped};
use crate::error::{Error, Result};
use crate::gpu::AdapterSummary;
use crate::report::{prediction_header, EpsAccumulator, ModelInfo, Report, Timing};

pub const MANIFEST: &str = "advex-run.json";

/// What a run is: a rerun into the same `--out` must match it field by field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub advex: String,
    pub images: String,
    pub image_count: usize,
    /// FNV-1a of the sorted relative paths.
    pub images_digest: String,
    /// FNV-1a of the labels used (given or from folders, shards, a CSV).
    pub labels_digest: String,
    pub model: ModelInfo,
    /// FNV-1a of the model file's bytes.
    pub model_digest: String,
    pub method: String,
    /// The method's settings (`steps=10`, ...; empty for fgsm).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attack: Vec<String>,
    pub eps: Vec<String>,
    pub target: Option<String>,
    pub quantized: bool,
    pub precision: String,
    pub format: String,
    pub shard_size: usize,
    pub shards: usize,
    pub labels: crate::data::LabelSource,
    pub class_names: bool,
    /// Images discovery could not use (they belong to no shard).
    pub discovery_skipped: Vec<Skipped>,
}

/// 64-bit FNV-1a, as hex: enough to tell two inputs apart, not a security hash.
pub fn digest(parts: impl IntoIterator<Item = impl AsRef<[u8]>>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.as_ref() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A committed shard: what merging needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardRecord {
    pub shard: usize,
    pub images: usize,
    pub seconds: f64,
    pub clean: EpsAccumulator,
    pub per_eps: Vec<EpsAccumulator>,
    pub skipped: Vec<Skipped>,
    pub worker: Worker,
    pub adapter: AdapterSummary,
    /// Every device of a `--devices` run with more than one (see [`Report::devices`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<AdapterSummary>,
    /// Rows of its predictions file (one per image and eps, and the clean one).
    #[serde(default)]
    pub rows: usize,
    /// Every file it wrote, its rows file first (markers of older versions
    /// have none, and are trusted as they were).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRecord>,
}

impl ShardRecord {
    /// Whether what the shard wrote is still there: its rows file by size and
    /// digest, every other file by size, or by digest too with `digest`.
    /// `Err`: the first thing wrong.
    pub fn check_files(&self, dir: &Path, digest: bool) -> std::result::Result<(), String> {
        for (i, f) in self.files.iter().enumerate() {
            f.check(dir, digest || i == 0)?;
        }
        Ok(())
    }
}

/// How a rerun checks the shards committed before ([`committed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trust {
    /// Rows files whole, other files by size: one stat each.
    #[default]
    Sizes,
    /// Every file by its digest too (`--verify`): a full read.
    Digests,
}

fn shard_dir(dir: &Path) -> PathBuf {
    dir.join("shards")
}

pub fn marker_path(dir: &Path, shard: usize) -> PathBuf {
    shard_dir(dir).join(format!("shard-{shard:06}.json"))
}

pub fn rows_path(dir: &Path, shard: usize) -> PathBuf {
    shard_dir(dir).join(format!("shard-{shard:06}.csv"))
}

/// Create `path` with `bytes` only if it does not exist yet; `false` when it did.
fn create_only(path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = crate::data::tmp_path(path);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    std::fs::write(&tmp, bytes).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(&tmp, e)
    })?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Start or rejoin the run in `dir`: write the manifest, or check that the one
/// there describes the same run. `--overwrite` starts over.
pub fn open_run(dir: &Path, manifest: &Manifest, overwrite: bool) -> Result<()> {
    let path = dir.join(MANIFEST);
    if overwrite && dir.is_dir() {
        for e in std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            let r = if (name.starts_with("eps_") || name == "shards") && p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else if [MANIFEST, "report.json", "predictions.csv", "accuracy.svg"]
                .contains(&name.as_str())
            {
                std::fs::remove_file(&p)
            } else {
                Ok(())
            };
            r.map_err(|err| Error::io(&p, err))?;
        }
    } else if dir.is_dir() && !path.exists() {
        let busy = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
            .any(|e| !e.file_name().to_string_lossy().starts_with('.'));
        // Checked again after the listing: another worker of the same run may
        // have written the manifest (and started on shards) since the first look.
        if busy && !path.exists() {
            return Err(Error::Usage(format!(
                "--out {} already holds files that are not an advex run; choose an empty \
                 folder, or pass --overwrite to replace its eps_* folders",
                dir.display()
            )));
        }
    } else if dir.exists() && !dir.is_dir() {
        return Err(Error::Usage(format!(
            "--out {} is a file, not a folder",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = serde_json::to_string_pretty(manifest).expect("manifest serialises");
    if create_only(&path, json.as_bytes())? {
        return Ok(());
    }
    let there: Manifest = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            Error::Usage(format!(
                "{} is unreadable or from another advex version; use another --out, or \
                 --overwrite to start the run over",
                path.display()
            ))
        })?;
    let diffs = differences(&there, manifest);
    if !diffs.is_empty() {
        return Err(Error::Usage(format!(
            "--out {} holds a run with other settings ({}); use another --out, or \
             --overwrite to start over",
            dir.display(),
            diffs.join("; ")
        )));
    }
    Ok(())
}

fn differences(there: &Manifest, here: &Manifest) -> Vec<String> {
    let a = serde_json::to_value(there).expect("serialises");
    let b = serde_json::to_value(here).expect("serialises");
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return vec![];
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k}: {v} there, {} here",
                b.get(k).cloned().unwrap_or_default()
            )
        })
        .collect()
}

/// The committed record of `shard`, if any, checked as `trust` says. A
/// marker that does not parse (a crash of an old version, a hand edit), or
/// whose files are not what the shard wrote, is removed with a warning naming
/// what is wrong, and the shard is redone.
pub fn committed(dir: &Path, shard: usize, eps_count: usize, trust: Trust) -> Option<ShardRecord> {
    let path = marker_path(dir, shard);
    let bytes = std::fs::read(&path).ok()?;
    let why = match parse_marker(&bytes, shard, eps_count) {
        Some(r) => match r.check_files(dir, trust == Trust::Digests) {
            Ok(()) if rows_path(dir, shard).is_file() => return Some(r),
            Ok(()) => format!("{} is missing", relative_name(dir, &rows_path(dir, shard))),
            Err(why) => why,
        },
        None => format!("{} is damaged", path.display()),
    };
    eprintln!("warning: shard {shard} will be redone: {why}");
    let _ = std::fs::remove_file(&path);
    None
}

/// Whether `shard` has a marker of this run (not its files: see
/// [`committed`]); for counting what is left after this process's own work.
pub fn is_committed(dir: &Path, shard: usize, eps_count: usize) -> bool {
    read_marker(dir, shard, eps_count).is_some()
}

fn relative_name(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

/// Commit a finished shard: its rows, then its marker (created only if
/// absent), which records the rows file and `files` (what else it wrote).
pub fn commit(dir: &Path, record: &ShardRecord, rows: &[u8], files: Vec<FileRecord>) -> Result<()> {
    let rows_file = rows_path(dir, record.shard);
    write_atomic(&rows_file, rows)?;
    let mut record = record.clone();
    record.rows = count_rows(rows);
    record.files = std::iter::once(FileRecord::of_bytes(dir, &rows_file, rows))
        .chain(files)
        .collect();
    let json = serde_json::to_vec_pretty(&record).expect("record serialises");
    create_only(&marker_path(dir, record.shard), &json)?;
    Ok(())
}

/// CSV records in `rows` (no header; quoted fields may hold newlines).
fn count_rows(rows: &[u8]) -> usize {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(rows)
        .records()
        .count()
}

/// Remove temporary files that dead processes left in the run's folders (a
/// worker killed mid-shard): those of this host whose process is gone, and
/// those of other hosts not touched for an hour. Files of live workers stay.
pub fn sweep_stale(dir: &Path) {
    let me = crate::data::tmp_tag();
    let (host, _) = me.rsplit_once('-').unwrap_or((me.as_str(), ""));
    let mut stack: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("eps_") || n == "shards"
                })
        })
        .collect();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".tmp").filter(|_| name.starts_with('.')) else {
                continue;
            };
            let stem = stem.strip_suffix(".images").unwrap_or(stem);
            let Some((their_host, pid)) =
                stem.rsplit_once('.').and_then(|(_, t)| t.rsplit_once('-'))
            else {
                continue;
            };
            let stale = if their_host == host {
                !Path::new("/proc").join(pid).exists() && Path::new("/proc/self").exists()
            } else {
                e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3600)
            };
            if stale {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// Combine every committed shard of the run in `dir` into its report, and its
/// predictions CSV (header included). Lists missing shards as an error.
pub fn merge_run(dir: &Path) -> Result<(Report, Vec<u8>)> {
    merge_where(dir, None)
}

/// The report of one worker's share (its shards, all committed), while other
/// workers are still at theirs.
pub fn merge_share(dir: &Path, worker: &Worker) -> Result<Report> {
    let (mut report, _) = merge_where(dir, Some(worker))?;
    report.worker = Some(worker.clone());
    Ok(report)
}

fn merge_where(dir: &Path, share: Option<&Worker>) -> Result<(Report, Vec<u8>)> {
    let m = read_manifest(dir)?;
    let mut records = Vec::with_capacity(m.shards);
    let mut missing = Vec::new();
    for u in (0..m.shards).filter(|&u| share.is_none_or(|w| w.owns(u))) {
        match read_marker(dir, u, m.eps.len()) {
            Some(r) => records.push(r),
            None => missing.push(u),
        }
    }
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().take(20).map(|u| u.to_string()).collect();
        return Err(Error::Usage(format!(
            "{} of {} shards of {} are not committed yet (shards {}{}); rerun the workers \
             that own them (shard u belongs to worker u % W)",
            missing.len(),
            m.shards,
            dir.display(),
            list.join(", "),
            if missing.len() > 20 { ", ..." } else { "" }
        )));
    }
    let mut clean = EpsAccumulator::default();
    let mut per_eps = vec![EpsAccumulator::default(); m.eps.len()];
    let mut skipped = if share.is_none() {
        m.discovery_skipped.clone()
    } else {
        Vec::new()
    };
    let mut seconds = 0.0;
    let header = prediction_header(
        m.class_names,
        m.attack.iter().any(|s| s.ends_with("minimal=true")),
    );
    let mut csv = format!("{}\n", header.join(",")).into_bytes();
    for r in &records {
        clean.merge(&r.clean);
        for (a, b) in per_eps.iter_mut().zip(&r.per_eps) {
            a.merge(b);
        }
        skipped.extend(r.skipped.iter().cloned());
        seconds += r.seconds;
        let rows = rows_path(dir, r.shard);
        let bytes = std::fs::read(&rows).map_err(|e| {
            Error::Usage(format!(
                "shard {} of {}: its rows file {} cannot be read ({e}); rerun the same \
                 `advex attack` command, which redoes that shard, then merge",
                r.shard,
                dir.display(),
                rows.display()
            ))
        })?;
        check_rows(dir, r, &bytes)?;
        csv.extend(bytes);
    }
    let images = clean.images as usize;
    let eps = crate::attack::parse_eps_list(&m.eps.join(","))?;
    let report = Report {
        model: m.model.clone(),
        adapter: records
            .first()
            .map(|r| r.adapter.clone())
            .ok_or_else(|| Error::Usage("the run has no shards".into()))?,
        devices: records
            .first()
            .map(|r| r.devices.clone())
            .unwrap_or_default(),
        precision: m.precision.clone(),
        method: m.method.clone(),
        cascade: m
            .method
            .contains(',')
            .then(|| m.method.split(',').map(str::to_string).collect()),
        norm: Some(
            m.attack
                .iter()
                .find_map(|s| s.rsplit(':').next()?.strip_prefix("norm="))
                .unwrap_or("linf")
                .to_string(),
        ),
        target: m.target.clone(),
        images,
        labels: m.labels,
        quantized: m.quantized,
        clean: clean.clean_stats(),
        epsilons: EpsAccumulator::eps_stats(&eps, &per_eps),
        timing: Timing::new(images, seconds),
        passes: clean.passes(),
        skipped,
        worker: None,
    };
    Ok((report, csv))
}

/// `advex merge --leaderboard`: the entry of the merged run in `dir` (its
/// report as [`write_merged`] gave it; the seed and the images folder from
/// its manifest).
pub fn write_leaderboard(
    dir: &Path,
    lb: &crate::report::leaderboard::LeaderboardRequest,
    report: &Report,
) -> Result<()> {
    let m = read_manifest(dir)?;
    let seed = m
        .attack
        .iter()
        .find_map(|s| s.rsplit(':').next()?.strip_prefix("seed=")?.parse().ok())
        .unwrap_or(0);
    super::write_leaderboard(lb, report, Path::new(&m.images), seed)
}

/// The marker of `shard` as it is (unchecked; see [`check_rows`]), if it
/// parses and belongs to this run.
fn read_marker(dir: &Path, shard: usize, eps_count: usize) -> Option<ShardRecord> {
    parse_marker(
        &std::fs::read(marker_path(dir, shard)).ok()?,
        shard,
        eps_count,
    )
}

/// A marker's bytes as the record of `shard` of a run with `eps_count` eps.
fn parse_marker(bytes: &[u8], shard: usize, eps_count: usize) -> Option<ShardRecord> {
    serde_json::from_slice::<ShardRecord>(bytes)
        .ok()
        .filter(|r| r.shard == shard && r.per_eps.len() == eps_count)
}

/// The manifest of the run in `dir`, or an error that says what to give.
fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    if !path.is_file() {
        return Err(Error::Usage(format!(
            "{} is not an advex run (no {MANIFEST} in it): give the --out folder of an \
             `advex attack`",
            dir.display()
        )));
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::Usage(format!(
            "{}: not an advex run manifest ({e})",
            path.display()
        ))
    })
}

/// Before a merge takes a shard's rows: they must be what its marker says
/// (row count and digest), else the merge stops and says how to redo it.
fn check_rows(dir: &Path, r: &ShardRecord, rows: &[u8]) -> Result<()> {
    let Some(want) = r.files.first() else {
        return Ok(()); // a marker of an older version: nothing recorded
    };
    let got = FileRecord::of_bytes(dir, &rows_path(dir, r.shard), rows);
    let rows_now = count_rows(rows);
    if got.xxh3 != want.xxh3 || got.bytes != want.bytes || rows_now != r.rows {
        return Err(Error::Usage(format!(
            "shard {} of {}: {} holds {rows_now} rows ({} bytes), not the {} rows ({} bytes) \
             its marker recorded; rerun the same `advex attack` command, which redoes that \
             shard, then merge",
            r.shard,
            dir.display(),
            want.path,
            got.bytes,
            r.rows,
            want.bytes
        )));
    }
    Ok(())
}

/// What [`verify_run`] checked.
#[derive(Debug, Clone, Copy)]
pub struct Verified {
    pub shards: usize,
    pub files: usize,
}

/// `advex verify DIR`: the manifest, every shard's marker, every file the
/// shards wrote (size and digest), and that `report.json` and
/// `predictions.csv` are the merge of the shards. Every problem is printed;
/// any makes it an error that says what to run.
pub fn verify_run(dir: &Path) -> Result<Verified> {
    let m = read_manifest(dir)?;
    let mut problems = Vec::new();
    let mut files = 0;
    for u in 0..m.shards {
        let Some(r) = read_marker(dir, u, m.eps.len()) else {
            problems.push(format!("shard {u}: not committed (no valid marker)"));
            continue;
        };
        if r.files.is_empty() {
            // an older advex's marker: nothing to check its files against
            eprintln!(
                "{}: note: shard {u}'s marker records no files (an older advex wrote it); \
                 only its merge is checked",
                dir.display()
            );
        }
        files += r.files.len();
        let before = problems.len();
        for f in &r.files {
            if let Err(why) = f.check(dir, true) {
                problems.push(format!("shard {u}: {why}"));
            }
        }
        // the row count too, unless its files were already found wrong
        if let (true, Ok(rows)) = (problems.len() == before, std::fs::read(rows_path(dir, u))) {
            if let Err(e) = check_rows(dir, &r, &rows) {
                problems.push(e.to_string());
            }
        }
    }
    if problems.is_empty() {
        match merge_run(dir) {
            Ok((report, csv)) => {
                let same = |name: &str, want: &[u8]| {
                    std::fs::read(dir.join(name)).is_ok_and(|b| b == want)
                };
                if !same("predictions.csv", &csv) {
                    problems.push("predictions.csv is not the merge of the shards' rows".into());
                }
                if !same("report.json", report.to_json().as_bytes()) {
                    problems.push("report.json is not the merge of the shards' markers".into());
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        return Ok(Verified {
            shards: m.shards,
            files,
        });
    }
    for p in &problems {
        eprintln!("{}: {p}", dir.display());
    }
    Err(Error::Usage(format!(
        "{} problem{} in {}: rerun the same `advex attack` command (with --verify after a copy \
         between machines), which redoes the damaged shards and merges again",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        dir.display()
    )))
}

/// `advex merge DIR`: write `DIR/report.json`, `DIR/predictions.csv` and
/// `DIR/accuracy.svg` from the committed shards.
pub fn write_merged(dir: &Path) -> Result<Report> {
    let (report, csv) = merge_run(dir)?;
    write_merged_parts(dir, &report, &csv)?;
    Ok(report)
}

/// Write a merged report and predictions into the run's folder.
pub fn write_merged_parts(dir: &Path, report: &Report, csv: &[u8]) -> Result<()> {
    write_atomic(&dir.join("report.json"), report.to_json().as_bytes())?;
    write_atomic(&dir.join("predictions.csv"), csv)?;
    crate::report::write_svg_plot(&dir.join("accuracy.svg"), report)
}
