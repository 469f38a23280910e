//! `--leaderboard FILE.json`: one entry in the form of RobustBench's model
//! zoo (`model_info/<dataset>/<threat>/<Name>.json`): the fields it reads,
//! accuracies as percent text with two decimals, plus what advex measured
//! beside them (the 8-bit figure, the attacks, the passes spent).
//!
//! Fields a run cannot know (`link`, `authors`, `venue`, `additional_data`,
//! ...) come from `--leaderboard-field KEY=VALUE` or from the file itself: an
//! existing entry keeps every field the run does not measure, so a filled-in
//! entry can be re-measured in place. The measured fields are always the run's.

use std::path::Path;

use serde_json::{Map, Value};

use super::Report;
use crate::error::{Error, Result};

/// The fields a run measures: never taken from the file or the command line.
pub const MEASURED: [&str; 12] = [
    "threat_model",
    "eps",
    "n_examples",
    "clean_acc",
    "autoattack_acc",
    "autoattack_acc_8bit",
    "attacks",
    "version",
    "number_forward_passes",
    "passes",
    "seconds",
    "advex",
];

/// What `--leaderboard` asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaderboardRequest {
    pub path: std::path::PathBuf,
    /// `--leaderboard-field KEY=VALUE`, in order.
    pub fields: Vec<(String, Value)>,
}

impl LeaderboardRequest {
    /// `--leaderboard FILE.json` with its `--leaderboard-field` texts, checked.
    pub fn parse(path: &Path, fields: &[String]) -> Result<Self> {
        let fields = fields
            .iter()
            .map(|f| parse_field(f))
            .collect::<Result<Vec<_>>>()?;
        Ok(LeaderboardRequest {
            path: path.to_path_buf(),
            fields,
        })
    }

    /// The entry already in the file, if any: refused before a long run
    /// when it is not a JSON object (the run would have to overwrite it).
    pub fn existing(&self) -> Result<Option<Map<String, Value>>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            _ => Err(Error::Usage(format!(
                "--leaderboard {}: the file exists and is not a JSON object (a leaderboard \
                 entry), so advex will not overwrite it; move it away or give another path",
                self.path.display()
            ))),
        }
    }
}

/// `KEY=VALUE`: `true`/`false` become JSON booleans (`additional_data`),
/// anything else stays text (RobustBench keeps numbers such as `reported` as
/// text too).
fn parse_field(text: &str) -> Result<(String, Value)> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(Error::Usage(format!(
            "--leaderboard-field {text}: give KEY=VALUE, e.g. --leaderboard-field \
             architecture=WideResNet-28-10"
        )));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(Error::Usage(format!(
            "--leaderboard-field {text}: the key is empty; give KEY=VALUE"
        )));
    }
    if MEASURED.contains(&key) {
        return Err(Error::Usage(format!(
            "--leaderboard-field {key}: the run measures it; set only the fields it cannot \
             know (name, architecture, dataset, link, authors, venue, additional_data, ...)"
        )));
    }
    let value = match value {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        v => Value::String(v.to_string()),
    };
    Ok((key.to_string(), value))
}

/// Percent with two decimals, as the model zoo writes accuracies.
fn percent(share: f64) -> String {
    format!("{:.2}", share * 100.0)
}

/// What the entry needs beyond the report.
pub struct EntryContext<'a> {
    /// `Linf` or `L2`.
    pub threat_model: &'a str,
    /// The dataset when neither the file nor a field names one.
    pub dataset: &'a str,
    /// The random seed of the attacks.
    pub seed: u64,
}

/// The entry for the report's one eps (the caller has checked there is one).
pub fn entry(
    report: &Report,
    cx: &EntryContext,
    existing: Option<Map<String, Value>>,
    fields: &[(String, Value)],
) -> Result<Value> {
    let [e] = report.epsilons.as_slice() else {
        return Err(Error::Usage(format!(
            "--leaderboard: an entry is for one eps, this run has {}; run once per eps",
            report.epsilons.len()
        )));
    };
    let (float, rounded) = if report.quantized {
        let float = e.robust_accuracy_float.ok_or_else(|| {
            Error::Usage(
                "--leaderboard: the run did not score the unrounded points; run the \
                 attack with --leaderboard (or --count-rounding)"
                    .into(),
            )
        })?;
        (float, Some(e.robust_accuracy))
    } else {
        (e.robust_accuracy, None)
    };
    let attacks = report
        .cascade
        .clone()
        .unwrap_or_else(|| vec![report.method.clone()]);
    let standard = attacks.join(",") == crate::attack::method::AUTOATTACK_STANDARD;
    let mut m = existing.unwrap_or_default();
    for (k, v) in fields {
        m.insert(k.clone(), v.clone());
    }
    let mut default = |k: &str, v: Value| {
        m.entry(k.to_string()).or_insert(v);
    };
    default("name", Value::from(report.model.name.clone()));
    default("architecture", Value::from(report.model.name.clone()));
    default("dataset", Value::from(cx.dataset));
    let passes = report.passes.unwrap_or(super::Passes {
        forward: 0,
        backward: 0,
    });
    let measured = serde_json::json!({
        "threat_model": cx.threat_model,
        "eps": e.eps_text,
        "n_examples": report.images,
        "clean_acc": percent(report.clean.accuracy),
        "autoattack_acc": percent(float),
        "autoattack_acc_8bit": rounded.map(percent),
        "attacks": attacks,
        "version": if standard { "standard" } else { "custom" },
        "number_forward_passes": 1,
        "passes": {"forward": passes.forward, "backward": passes.backward},
        "seconds": report.timing.seconds,
        "advex": {
            "version": env!("CARGO_PKG_VERSION"),
            "adapter": report.adapter.name,
            "backend": report.adapter.backend,
            "precision": report.precision,
            "seed": cx.seed,
        },
    });
    if let Value::Object(fields) = measured {
        m.extend(fields);
    }
    Ok(Value::Object(in_zoo_order(m)))
}

/// The model zoo's fields first, in its files' order, then the others as
/// they came (a person reads the entry beside the zoo's).
const ZOO_ORDER: [&str; 15] = [
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "threat_model",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "autoattack_acc_8bit",
    "footnote",
];

fn in_zoo_order(mut m: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for k in ZOO_ORDER {
        if let Some(v) = m.remove(k) {
            out.insert(k.to_string(), v);
        }
    }
    out.extend(m);
    out
}

/// Write the entry (see [`entry`]) to the request's file.
pub fn write(req: &LeaderboardRequest, report: &Report, cx: &EntryContext) -> Result<()> {
    let value = entry(report, cx, req.existing()?, &req.fields)?;
    let text = serde_json::to_string_pretty(&value).expect("an entry serialises") + "\n";
    std::fs::write(&req.path, text).map_err(|e| Error::io(&req.path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_and_measured_ones_are_refused() {
        let (k, v) = parse_field("additional_data=false").unwrap();
        assert_eq!((k.as_str(), v), ("additional_data", Value::Bool(false)));
        let (k, v) = parse_field("architecture=WideResNet-28-10").unwrap();
        assert_eq!(
            (k.as_str(), v),
            ("architecture", Value::from("WideResNet-28-10"))
        );
        assert!(parse_field("clean_acc=99")
            .unwrap_err()
            .to_string()
            .contains("measures"));
        assert!(parse_field("name")
            .unwrap_err()
            .to_string()
            .contains("KEY=VALUE"));
        assert!(parse_field("=x").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn percent_has_two_decimals() {
        assert_eq!(percent(0.5342), "53.42");
        assert_eq!(percent(1.0), "100.00");
        assert_eq!(percent(0.0), "0.00");
    }
}
