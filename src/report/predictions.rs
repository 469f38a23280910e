//! The predictions CSV: one row per image and eps (eps 0 = clean).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct PredictionWriter {
    path: PathBuf,
    writer: csv::Writer<BufWriter<File>>,
    classes: Option<Vec<String>>,
}

impl PredictionWriter {
    pub fn create(path: &Path, classes: Option<Vec<String>>) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut writer = csv::Writer::from_writer(BufWriter::new(file));
        let mut header = vec!["image", "label", "eps", "pred", "pred_prob", "label_prob"];
        if classes.is_some() {
            header.push("pred_name");
        }
        writer.write_record(&header).map_err(|e| csv_err(path, e))?;
        Ok(PredictionWriter {
            path: path.to_path_buf(),
            writer,
            classes,
        })
    }

    pub fn row(
        &mut self,
        image: &str,
        label: u32,
        eps: &str,
        pred: u32,
        pred_prob: f32,
        label_prob: f32,
    ) -> Result<()> {
        let mut rec = vec![
            image.to_string(),
            label.to_string(),
            eps.to_string(),
            pred.to_string(),
            format!("{pred_prob:.6}"),
            format!("{label_prob:.6}"),
        ];
        if let Some(c) = &self.classes {
            rec.push(c.get(pred as usize).cloned().unwrap_or_default());
        }
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
