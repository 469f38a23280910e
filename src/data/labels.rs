//! Labels: a CSV (`image,label`), ImageFolder sub-folders, or none (the model's
//! clean prediction is used).

use std::collections::HashMap;
use std::path::Path;

use super::ImageEntry;
use crate::error::{Error, Result};

/// Where the labels came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSource {
    Csv,
    Folders,
    /// `.cls` members of WebDataset shards.
    Shards,
    /// No labels given: the model's clean top-1 prediction.
    Predicted,
}

fn parse_label(text: &str, classes: Option<&[String]>, num_classes: u32) -> Option<u32> {
    let t = text.trim();
    if let Ok(i) = t.parse::<u32>() {
        if i < num_classes {
            return Some(i);
        }
    }
    classes
        .and_then(|c| c.iter().position(|name| name == t))
        .map(|i| i as u32)
}

/// Labels for `entries`, in order (`None` = use the clean prediction).
pub fn assign_labels(
    entries: &[ImageEntry],
    csv_path: Option<&Path>,
    classes: Option<&[String]>,
    num_classes: u32,
) -> Result<(Vec<Option<u32>>, LabelSource)> {
    if let Some(csv_path) = csv_path {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_path(csv_path)
            .map_err(|e| Error::Usage(format!("cannot read labels {}: {e}", csv_path.display())))?;
        let mut map: HashMap<String, u32> = HashMap::new();
        let known: HashMap<&str, ()> = entries.iter().map(|e| (e.rel.as_str(), ())).collect();
        for (line, rec) in reader.records().enumerate() {
            let rec = rec.map_err(|e| Error::Usage(format!("{}: {e}", csv_path.display())))?;
            if rec.len() < 2 {
                return Err(Error::Usage(format!(
                    "{} line {}: expected `image,label`",
                    csv_path.display(),
                    line + 1
                )));
            }
            let (image, label) = (rec[0].replace('\\', "/"), &rec[1]);
            if line == 0 && image == "image" && label == "label" {
                continue; // header
            }
            if !known.contains_key(image.as_str()) {
                return Err(Error::Usage(format!(
                    "{} line {}: image {image:?} is not among the images found (paths are relative to --images)",
                    csv_path.display(),
                    line + 1
                )));
            }
            let Some(l) = parse_label(label, classes, num_classes) else {
                return Err(Error::Usage(format!(
                    "{} line {}: label {label:?} is neither a class index below {num_classes} nor a class name of the model",
                    csv_path.display(),
                    line + 1
                )));
            };
            map.insert(image, l);
        }
        let labels = entries.iter().map(|e| map.get(&e.rel).copied()).collect();
        return Ok((labels, LabelSource::Csv));
    }
    // WebDataset shards: `.cls` members.
    if entries.iter().any(|e| e.label.is_some()) {
        if let Some(e) = entries
            .iter()
            .find(|e| e.label.is_some_and(|l| l >= num_classes))
        {
            return Err(Error::Usage(format!(
                "{}: its .cls label {} is not a class of this model (it has {num_classes}); \
                 give --labels to override the shards' labels",
                e.display(),
                e.label.unwrap_or_default()
            )));
        }
        return Ok((
            entries.iter().map(|e| e.label).collect(),
            LabelSource::Shards,
        ));
    }
    // ImageFolder: a parent folder named after a class.
    if let Some(classes) = classes {
        let from_folder = |e: &ImageEntry| -> Option<u32> {
            let mut parts: Vec<&str> = e.rel.split('/').collect();
            parts.pop();
            parts
                .iter()
                .rev()
                .find_map(|p| classes.iter().position(|c| c == p).map(|i| i as u32))
        };
        let labels: Vec<Option<u32>> = entries.iter().map(from_folder).collect();
        if labels.iter().any(Option::is_some) {
            return Ok((labels, LabelSource::Folders));
        }
    }
    Ok((vec![None; entries.len()], LabelSource::Predicted))
}
