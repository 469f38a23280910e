//! Where adversarial images go (`--out DIR --format ...`):
//! - `png`: `DIR/eps_<value>/<relative path>.png`, one file per image;
//! - `webdataset`: `DIR/eps_<value>/shard-000000.tar`, WebDataset's layout: per
//!   sample `<key>.png`, `<key>.cls` (label index) and `<key>.json`, the key being
//!   the image's relative path without extension (dots replaced by `_`, since
//!   WebDataset splits keys at the first dot);
//! - `safetensors`: `DIR/eps_<value>/shard-000000.safetensors`, tensors `images`
//!   (u8 `[N, C, H, W]`), `labels`, `clean_preds`, `adv_preds` (i64 `[N]`) and
//!   `adv_probs` (f32 `[N]`), the source paths and eps in the metadata: what a
//!   training loop loads with no decoding.
//!
//! Shards cover a fixed range of the images sorted by path (`--shard-size`
//! images each; unreadable images leave gaps), so the partition depends only on
//! the input. A shard is written under a temporary name and renamed when its
//! last image is in: a shard file is complete or absent. Memory stays bounded:
//! tar shards stream to disk, safetensors shards stream their image bytes to a
//! temporary file and copy them behind the header at the end.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::image_io::{encode_png_with, write_atomic, PngCompression};
use super::{ImageEntry, Skipped};
use crate::attack::Eps;
use crate::error::{Error, Result};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Png,
    WebDataset,
    Safetensors,
}

impl OutputFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "png" => Some(OutputFormat::Png),
            "webdataset" | "wds" => Some(OutputFormat::WebDataset),
            "safetensors" => Some(OutputFormat::Safetensors),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::WebDataset => "webdataset",
            OutputFormat::Safetensors => "safetensors",
        }
    }
}

/// One file a run wrote: where (relative to the run's folder, `/`-separated),
/// its size, and its XXH3-64 digest: what a rerun checks before trusting it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub bytes: u64,
    pub xxh3: String,
}

impl FileRecord {
    /// The record of `bytes`, written at `path` under `dir`.
    pub fn of_bytes(dir: &Path, path: &Path, bytes: &[u8]) -> Self {
        FileRecord {
            path: relative(dir, path),
            bytes: bytes.len() as u64,
            xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes)),
        }
    }

    /// The record of the file at `path` under `dir` (read whole).
    pub fn of_file(dir: &Path, path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Ok(FileRecord::of_bytes(dir, path, &bytes))
    }

    /// Whether the file is still what was written: it exists with its size,
    /// and (`digest`) its content hashes the same. `Err`: what is wrong.
    pub fn check(&self, dir: &Path, digest: bool) -> std::result::Result<(), String> {
        let path = dir.join(&self.path);
        let meta = std::fs::metadata(&path).map_err(|_| format!("{} is missing", self.path))?;
        if meta.len() != self.bytes {
            return Err(format!(
                "{} has {} bytes, {} when it was written",
                self.path,
                meta.len(),
                self.bytes
            ));
        }
        if digest {
            let now = FileRecord::of_file(dir, &path).map_err(|e| e.to_string())?;
            if now.xxh3 != self.xxh3 {
                return Err(format!("{} changed since it was written", self.path));
            }
        }
        Ok(())
    }
}

/// `path` relative to `dir`, components joined by `/`.
fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Samples per shard unless `--shard-size` says otherwise.
pub const DEFAULT_SHARD_SIZE: usize = 1000;

/// One adversarial image and what the attack said of it.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Position in the sorted image list (decides the shard).
    pub index: usize,
    /// Path relative to `--images`.
    pub rel: String,
    pub label: u32,
    pub clean_pred: u32,
    pub adv_pred: u32,
    pub adv_prob: f32,
    /// Index into the eps list.
    pub eps: usize,
    /// CHW 8-bit pixels.
    pub pixels: Vec<u8>,
}

/// What every sample of a run shares.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub dir: PathBuf,
    pub format: OutputFormat,
    pub shard_size: usize,
    pub eps: Vec<Eps>,
    pub method: String,
    /// `[C, H, W]` of every image.
    pub shape: [u32; 3],
    /// PNG compression (png and webdataset formats).
    pub png_compression: PngCompression,
}

/// Writes samples batch by batch (in image order) and finishes shards as the
/// images move past them.
///
/// A PNG is never written through a symlink that leads out of its eps folder
/// (one left in the folder of a resumed run): the write stops with an error
/// naming it, before any file of the batch is written.
pub struct OutputWriter {
    spec: OutputSpec,
    /// Per eps, the shard being written.
    open: Vec<Option<OpenShard>>,
    /// Per eps, the symlink check of its folder (PNG outputs).
    guards: Vec<super::names::SymlinkGuard>,
    /// Per shard, the files written for it so far ([`OutputWriter::take_written`]).
    written: std::collections::BTreeMap<usize, Vec<FileRecord>>,
}

struct OpenShard {
    shard: usize,
    /// Final name, and where the bytes go until then.
    path: PathBuf,
    tmp: PathBuf,
    kind: ShardKind,
}

enum ShardKind {
    Tar(tar::Builder<BufWriter<File>>),
    Tensors {
        data: BufWriter<File>,
        data_path: PathBuf,
        rows: Vec<SampleRow>,
    },
}

struct SampleRow {
    rel: String,
    label: u32,
    clean_pred: u32,
    adv_pred: u32,
    adv_prob: f32,
}

/// WebDataset key: the image's output path ([`super::names::output_rel`])
/// without its extension, dots replaced (WebDataset splits keys at the first
/// dot). Refuses the names [`super::names`] refuses.
pub fn sample_key(rel: &str) -> Result<String> {
    let rel = super::names::output_rel(rel, None)?;
    let stem = match rel.rfind('.') {
        Some(i) if !rel[i..].contains('/') => &rel[..i],
        _ => &rel[..],
    };
    Ok(stem.replace('.', "_"))
}

/// Output PNG path: `out/eps_<value>/<relative path with .png>`, inside the
/// eps folder by construction ([`super::names::output_path`]; names it
/// refuses are an error).
pub fn png_path(out: &Path, eps: &Eps, rel: &str) -> Result<PathBuf> {
    super::names::output_path(&out.join(eps.dir_name()), rel, "png")
}

/// The images a run may write under `dir` in `format`, one output each: the
/// rest leave with the reason, in order. Refused: names [`super::names`]
/// refuses (every format: they also travel in tar keys and metadata); a
/// second image whose output would overwrite the first's (`a.jpg` and
/// `a.png` both give `a.png`; WebDataset keys likewise). Depends only on the
/// names, so every worker and every rerun admits the same images. (Symlinks
/// in the output folder are the writer's to refuse: see [`OutputWriter`].)
pub fn admit(entries: Vec<ImageEntry>, format: OutputFormat) -> (Vec<ImageEntry>, Vec<Skipped>) {
    let mut kept = Vec::with_capacity(entries.len());
    let mut skipped = Vec::new();
    let mut taken: std::collections::HashMap<String, String> = Default::default();
    for e in entries {
        let mut skip = |reason: String| {
            skipped.push(Skipped {
                image: e.display(),
                reason,
            })
        };
        if let Err(why) = super::names::output_components(&e.rel) {
            skip(format!("its name cannot name an output file: it {why}"));
            continue;
        }
        // the names png_path and sample_key give (both pass: checked above)
        let output = match format {
            OutputFormat::Png => super::names::output_rel(&e.rel, Some("png")).ok(),
            OutputFormat::WebDataset => sample_key(&e.rel).ok(),
            OutputFormat::Safetensors => None,
        };
        if let Some(out) = output {
            if let Some(first) = taken.get(&out) {
                skip(format!(
                    "its output {out} would overwrite that of {first}; rename one of them"
                ));
                continue;
            }
            taken.insert(out, e.display());
        }
        kept.push(e);
    }
    (kept, skipped)
}

fn tmp_name(path: &Path) -> PathBuf {
    super::image_io::tmp_path(path)
}

impl OutputWriter {
    pub fn new(spec: OutputSpec) -> Result<Self> {
        if spec.shard_size == 0 {
            return Err(Error::Usage("--shard-size must be at least 1".into()));
        }
        let open = (0..spec.eps.len()).map(|_| None).collect();
        let guards = spec
            .eps
            .iter()
            .map(|e| super::names::SymlinkGuard::new(&spec.dir.join(e.dir_name())))
            .collect();
        Ok(OutputWriter {
            spec,
            open,
            guards,
            written: Default::default(),
        })
    }

    /// Write one batch's samples (any order within the batch; batches in image
    /// order). Shards that end before this batch's first image are finished.
    pub fn write(&mut self, samples: Vec<Sample>) -> Result<()> {
        let [c, h, w] = self.spec.shape;
        match self.spec.format {
            OutputFormat::Png => {
                let mut paths = Vec::with_capacity(samples.len());
                for s in &samples {
                    let path = png_path(&self.spec.dir, &self.spec.eps[s.eps], &s.rel)?;
                    self.guards[s.eps].check(&path).map_err(|why| {
                        Error::Usage(format!(
                            "refusing to write {}: {why}; remove that link from --out, or use another --out",
                            path.display()
                        ))
                    })?;
                    paths.push(path);
                }
                let dir = &self.spec.dir;
                let records: Vec<FileRecord> = samples
                    .par_iter()
                    .zip(&paths)
                    .map(|(s, path)| {
                        let png = encode_png_with(&s.pixels, c, h, w, self.spec.png_compression)?;
                        write_atomic(path, &png)?;
                        Ok(FileRecord::of_bytes(dir, path, &png))
                    })
                    .collect::<Result<_>>()?;
                for (s, r) in samples.iter().zip(records) {
                    let shard = s.index / self.spec.shard_size;
                    self.written.entry(shard).or_default().push(r);
                }
                Ok(())
            }
            OutputFormat::WebDataset => {
                let pngs: Vec<Vec<u8>> = samples
                    .par_iter()
                    .map(|s| encode_png_with(&s.pixels, c, h, w, self.spec.png_compression))
                    .collect::<Result<_>>()?;
                let mut order: Vec<usize> = (0..samples.len()).collect();
                order.sort_by_key(|&i| (samples[i].index, samples[i].eps));
                for i in order {
                    self.append_tar(&samples[i], &pngs[i])?;
                }
                Ok(())
            }
            OutputFormat::Safetensors => {
                let mut order: Vec<usize> = (0..samples.len()).collect();
                order.sort_by_key(|&i| (samples[i].index, samples[i].eps));
                for i in order {
                    self.append_tensors(&samples[i])?;
                }
                Ok(())
            }
        }
    }

    /// The shard of `s` for its eps, opened (and the previous one finished) as needed.
    fn shard_for(&mut self, s: &Sample) -> Result<&mut OpenShard> {
        let shard = s.index / self.spec.shard_size;
        if self.open[s.eps].as_ref().is_some_and(|o| o.shard != shard) {
            let done = self.open[s.eps].take().expect("checked");
            self.finish(s.eps, done)?;
        }
        if self.open[s.eps].is_none() {
            let ext = match self.spec.format {
                OutputFormat::Safetensors => "safetensors",
                _ => "tar",
            };
            let dir = self.spec.dir.join(self.spec.eps[s.eps].dir_name());
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let path = dir.join(format!("shard-{shard:06}.{ext}"));
            let tmp = tmp_name(&path);
            let create = |p: &Path| -> Result<BufWriter<File>> {
                Ok(BufWriter::new(
                    File::create(p).map_err(|e| Error::io(p, e))?,
                ))
            };
            let kind = match self.spec.format {
                OutputFormat::Safetensors => {
                    let data_path = tmp.with_extension("images.tmp"); // .NAME.HOST-PID.images.tmp
                    ShardKind::Tensors {
                        data: create(&data_path)?,
                        data_path,
                        rows: Vec::new(),
                    }
                }
                _ => ShardKind::Tar(tar::Builder::new(create(&tmp)?)),
            };
            self.open[s.eps] = Some(OpenShard {
                shard,
                path,
                tmp,
                kind,
            });
        }
        Ok(self.open[s.eps].as_mut().expect("opened"))
    }

    fn append_tar(&mut self, s: &Sample, png: &[u8]) -> Result<()> {
        let key = sample_key(&s.rel)?;
        let eps = &self.spec.eps[s.eps];
        let json = serde_json::json!({
            "source": s.rel,
            "label": s.label,
            "clean_pred": s.clean_pred,
            "adv_pred": s.adv_pred,
            "adv_prob": s.adv_prob,
            "method": self.spec.method,
            "eps": eps.exact,
            "eps_text": eps.text,
        })
        .to_string();
        let cls = s.label.to_string();
        let open = self.shard_for(s)?;
        let ShardKind::Tar(tar) = &mut open.kind else {
            unreachable!("tar shards in webdataset runs")
        };
        for (ext, bytes) in [
            ("png", png),
            ("cls", cls.as_bytes()),
            ("json", json.as_bytes()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_cksum();
            tar.append_data(&mut header, format!("{key}.{ext}"), bytes)
                .map_err(|e| Error::io(&open.tmp, e))?;
        }
        Ok(())
    }

    fn append_tensors(&mut self, s: &Sample) -> Result<()> {
        let open = self.shard_for(s)?;
        let ShardKind::Tensors {
            data,
            data_path,
            rows,
        } = &mut open.kind
        else {
            unreachable!("tensor shards in safetensors runs")
        };
        data.write_all(&s.pixels)
            .map_err(|e| Error::io(&*data_path, e))?;
        rows.push(SampleRow {
            rel: s.rel.clone(),
            label: s.label,
            clean_pred: s.clean_pred,
            adv_pred: s.adv_pred,
            adv_prob: s.adv_prob,
        });
        Ok(())
    }

    /// Complete a shard: write what remains, then rename it into place; its
    /// file goes into the shard's record of what was written.
    fn finish(&mut self, eps: usize, open: OpenShard) -> Result<()> {
        let OpenShard {
            path,
            tmp,
            kind,
            shard,
        } = open;
        let result = match kind {
            ShardKind::Tar(tar) => tar
                .into_inner()
                .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&tmp, e)),
            ShardKind::Tensors {
                data,
                data_path,
                rows,
            } => {
                let r = self.write_tensors(eps, data, &data_path, &rows, &tmp);
                let _ = std::fs::remove_file(&data_path);
                r
            }
        };
        if let Err(e) =
            result.and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e)))
        {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let record = FileRecord::of_file(&self.spec.dir, &path)?;
        self.written.entry(shard).or_default().push(record);
        Ok(())
    }

    /// The files written for `shard` (after [`OutputWriter::finish_shard`]),
    /// sorted by path: what its marker records.
    pub fn take_written(&mut self, shard: usize) -> Vec<FileRecord> {
        let mut files = self.written.remove(&shard).unwrap_or_default();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
    }

    fn write_tensors(
        &self,
        eps: usize,
        data: BufWriter<File>,
        data_path: &Path,
        rows: &[SampleRow],
        tmp: &Path,
    ) -> Result<()> {
        // flush and close the image bytes before they are copied
        drop(
            data.into_inner()
                .map_err(|e| Error::io(data_path, e.into_error()))?,
        );
        let [c, h, w] = self.spec.shape;
        let n = rows.len();
        let image_bytes = n * (c * h * w) as usize;
        let long = |f: fn(&SampleRow) -> u32| -> Vec<u8> {
            rows.iter()
                .flat_map(|r| (f(r) as i64).to_le_bytes())
                .collect()
        };
        let labels = long(|r| r.label);
        let clean = long(|r| r.clean_pred);
        let adv = long(|r| r.adv_pred);
        let probs: Vec<u8> = rows.iter().flat_map(|r| r.adv_prob.to_le_bytes()).collect();
        let e = &self.spec.eps[eps];
        let paths: Vec<&str> = rows.iter().map(|r| r.rel.as_str()).collect();
        let mut header = serde_json::Map::new();
        header.insert(
            "__metadata__".into(),
            serde_json::json!({
                "format": "advex-adversarial/1",
                "method": self.spec.method,
                "eps": e.exact.to_string(),
                "eps_text": e.text,
                "paths": serde_json::to_string(&paths).expect("strings serialise"),
            }),
        );
        let mut offset = 0usize;
        let mut tensor = |name: &str, dtype: &str, shape: Vec<usize>, len: usize| {
            header.insert(
                name.into(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len]}),
            );
            offset += len;
        };
        let shape = vec![n, c as usize, h as usize, w as usize];
        tensor("images", "U8", shape, image_bytes);
        tensor("labels", "I64", vec![n], labels.len());
        tensor("clean_preds", "I64", vec![n], clean.len());
        tensor("adv_preds", "I64", vec![n], adv.len());
        tensor("adv_probs", "F32", vec![n], probs.len());
        let mut head = serde_json::Value::Object(header).to_string().into_bytes();
        while !head.len().is_multiple_of(8) {
            head.push(b' ');
        }
        let io = |e| Error::io(tmp, e);
        let mut out = BufWriter::new(File::create(tmp).map_err(io)?);
        out.write_all(&(head.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&head).map_err(io)?;
        out.flush().map_err(io)?;
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        let mut images = File::open(data_path).map_err(|e| Error::io(data_path, e))?;
        let copied = std::io::copy(&mut images, &mut file).map_err(io)?;
        if copied as usize != image_bytes {
            return Err(Error::io(
                tmp,
                std::io::Error::other(format!("copied {copied} of {image_bytes} image bytes")),
            ));
        }
        for part in [&labels, &clean, &adv, &probs] {
            file.write_all(part).map_err(io)?;
        }
        file.sync_all().map_err(io)?;
        Ok(())
    }

    /// Finish shard `shard` for every eps (when it is open): its last image is in.
    pub fn finish_shard(&mut self, shard: usize) -> Result<()> {
        for eps in 0..self.open.len() {
            if self.open[eps].as_ref().is_some_and(|o| o.shard == shard) {
                let done = self.open[eps].take().expect("checked");
                self.finish(eps, done)?;
            }
        }
        Ok(())
    }

    /// Finish every open shard (call once, after the last batch).
    pub fn finish_all(mut self) -> Result<()> {
        let open: Vec<(usize, OpenShard)> = self
            .open
            .iter_mut()
            .enumerate()
            .filter_map(|(e, o)| o.take().map(|o| (e, o)))
            .collect();
        for (eps, shard) in open {
            self.finish(eps, shard)?;
        }
        Ok(())
    }
}

impl Drop for OutputWriter {
    /// Shards still open here were never completed (an error, or a run that
    /// stopped): remove their temporary files.
    fn drop(&mut self) {
        for o in self.open.iter_mut().filter_map(Option::take) {
            let _ = std::fs::remove_file(&o.tmp);
            if let ShardKind::Tensors { data_path, .. } = &o.kind {
                let _ = std::fs::remove_file(data_path);
            }
        }
    }
}
