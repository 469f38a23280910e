//! The predictions CSV: one row per image, method and eps.
//!
//! Columns: `image,label,method,eps,eps_text,pred,pred_prob,label_prob`, then
//! `pred_name` when the model has class names, then `min_eps` with `--minimal`
//! (the smallest eps on the 8-bit grid that fooled the image, as a number;
//! empty on clean rows and where none up to the run's eps did). `eps` is the number (full f64
//! precision, so spreadsheets and pandas read it as one), `eps_text` the value
//! as written on the command line. Rows of the image as given (the clean image
//! in an attack, every image in `advex eval`) have method `clean` and eps 0,
//! as the report calls them.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::attack::Eps;
use crate::error::{Error, Result};

/// The method column of rows that show the image as given (eps 0).
pub const NO_METHOD: &str = "clean";

/// The CSV's columns (without, and with class names).
pub const PREDICTION_HEADER: [&str; 8] = [
    "image",
    "label",
    "method",
    "eps",
    "eps_text",
    "pred",
    "pred_prob",
    "label_prob",
];
/// [`PREDICTION_HEADER`] and `pred_name`.
pub const PREDICTION_HEADER_NAMED: [&str; 9] = {
    let mut h = [""; 9];
    let mut i = 0;
    while i < 8 {
        h[i] = PREDICTION_HEADER[i];
        i += 1;
    }
    h[8] = "pred_name";
    h
};

/// One row's fields, in [`PREDICTION_HEADER`] order (`pred_name` when the model
/// has class names).
/// The header: [`PREDICTION_HEADER`], `pred_name` with class names, `min_eps`
/// with `--minimal`.
pub fn prediction_header(named: bool, minimal: bool) -> Vec<&'static str> {
    let mut h: Vec<&str> = if named {
        PREDICTION_HEADER_NAMED.to_vec()
    } else {
        PREDICTION_HEADER.to_vec()
    };
    if minimal {
        h.push("min_eps");
    }
    h
}

pub fn prediction_record(r: &PredictionRow<'_>, classes: Option<&[String]>) -> Vec<String> {
    let (method, eps, eps_text) = match r.attack {
        Some((method, eps)) => (method, eps.exact.to_string(), eps.text.as_str()),
        None => (NO_METHOD, "0".to_string(), "0"),
    };
    let mut rec = vec![
        r.image.to_string(),
        r.label.to_string(),
        method.to_string(),
        eps,
        eps_text.to_string(),
        r.pred.to_string(),
        format!("{:.6}", r.pred_prob),
        format!("{:.6}", r.label_prob),
    ];
    if let Some(c) = classes {
        rec.push(c.get(r.pred as usize).cloned().unwrap_or_default());
    }
    if let Some(m) = r.min_eps {
        rec.push(m.map_or(String::new(), |k| (k as f64 / 255.0).to_string()));
    }
    rec
}

/// One row of the CSV.
pub struct PredictionRow<'a> {
    /// Path relative to `--images`.
    pub image: &'a str,
    pub label: u32,
    /// The method and eps that made the image; `None` for the image as given.
    pub attack: Option<(&'a str, &'a Eps)>,
    pub pred: u32,
    pub pred_prob: f32,
    pub label_prob: f32,
    /// With `--minimal`: the image's smallest fooling level (k of k/255).
    pub min_eps: Option<Option<u32>>,
}

pub struct PredictionWriter {
    path: PathBuf,
    writer: csv::Writer<BufWriter<File>>,
    classes: Option<Vec<String>>,
}

impl PredictionWriter {
    pub fn create(path: &Path, classes: Option<Vec<String>>, minimal: bool) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut writer = csv::Writer::from_writer(BufWriter::new(file));
        let header = prediction_header(classes.is_some(), minimal);
        writer.write_record(&header).map_err(|e| csv_err(path, e))?;
        Ok(PredictionWriter {
            path: path.to_path_buf(),
            writer,
            classes,
        })
    }

    pub fn row(&mut self, r: &PredictionRow<'_>) -> Result<()> {
        let rec = prediction_record(r, self.classes.as_deref());
        self.writer
            .write_record(&rec)
            .map_err(|e| csv_err(&self.path, e))
    }

    pub fn finish(mut self) -> Result<()> {
        self.writer.flush().map_err(|e| Error::io(&self.path, e))
    }
}

fn csv_err(path: &Path, e: csv::Error) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}
