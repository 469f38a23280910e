//! Which share of a sharded run this process takes: `--worker i/W`, or the
//! array index a cluster engine gives its tasks. advex schedules nothing
//! itself; each engine runs the same command many times and each run takes the
//! output shards `u` with `u % W == i`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// This process's share of the shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub index: u32,
    pub count: u32,
    /// Where the share came from: `single`, `--worker`, `slurm`, `kubernetes`,
    /// `aws-batch`, `google-batch` or `torchrun`.
    pub engine: String,
    /// The engine's attempt (restart) number, where it gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
}

impl Worker {
    /// The whole run in one process.
    pub fn single() -> Self {
        Worker {
            index: 0,
            count: 1,
            engine: "single".into(),
            attempt: None,
        }
    }

    /// Whether shard `u` is this worker's.
    pub fn owns(&self, shard: usize) -> bool {
        shard % self.count as usize == self.index as usize
    }
}

/// An engine: its name, the variables of its index and count (`None`: the count
/// comes from `ADVEX_WORKERS`), and of its attempt number.
struct Engine {
    name: &'static str,
    index: &'static str,
    count: Option<&'static str>,
    attempt: Option<&'static str>,
}

const ENGINES: [Engine; 5] = [
    Engine {
        name: "slurm",
        index: "SLURM_ARRAY_TASK_ID",
        count: Some("SLURM_ARRAY_TASK_COUNT"),
        attempt: Some("SLURM_RESTART_COUNT"),
    },
    Engine {
        name: "kubernetes",
        index: "JOB_COMPLETION_INDEX",
        count: None,
        attempt: None,
    },
    Engine {
        name: "aws-batch",
        index: "AWS_BATCH_JOB_ARRAY_INDEX",
        count: Some("AWS_BATCH_JOB_ARRAY_SIZE"),
        attempt: Some("AWS_BATCH_JOB_ATTEMPT"),
    },
    Engine {
        name: "google-batch",
        index: "BATCH_TASK_INDEX",
        count: Some("BATCH_TASK_COUNT"),
        attempt: Some("BATCH_TASK_RETRY_ATTEMPT"),
    },
    Engine {
        name: "torchrun",
        index: "RANK",
        count: Some("WORLD_SIZE"),
        attempt: Some("TORCHELASTIC_RESTART_COUNT"),
    },
];

fn number(what: &str, v: &str) -> Result<u32> {
    v.trim()
        .parse()
        .map_err(|_| Error::Usage(format!("{what}={v:?} is not a non-negative whole number")))
}

fn checked(index: u32, count: u32, engine: &str, attempt: Option<String>) -> Result<Worker> {
    if count == 0 || index >= count {
        return Err(Error::Usage(format!(
            "worker {index} of {count} ({engine}): the index must lie in 0..{count}"
        )));
    }
    Ok(Worker {
        index,
        count,
        engine: engine.into(),
        attempt,
    })
}

/// `--worker i/W` when given, else the one engine whose variables are set in
/// `env`, else the whole run. Two engines at once, an index outside the count,
/// a Slurm array that does not start at 0 with step 1, or a Kubernetes index
/// without `ADVEX_WORKERS` is an error that says what to fix.
pub fn resolve_worker(flag: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Worker> {
    if let Some(f) = flag {
        let (i, w) = f.split_once('/').ok_or_else(|| {
            Error::Usage(format!(
                "--worker {f:?}: write INDEX/COUNT, e.g. --worker 0/4"
            ))
        })?;
        return checked(
            number("--worker index", i)?,
            number("--worker count", w)?,
            "--worker",
            None,
        );
    }
    let set: Vec<&Engine> = ENGINES
        .iter()
        .filter(|e| env(e.index).is_some_and(|v| !v.trim().is_empty()))
        .collect();
    let engine = match set[..] {
        [] => return Ok(Worker::single()),
        [e] => e,
        _ => {
            return Err(Error::Usage(format!(
                "the variables of several engines are set ({}); pass --worker INDEX/COUNT \
                 to say which share this process takes",
                set.iter().map(|e| e.index).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let index = number(engine.index, &get(engine.index).unwrap_or_default())?;
    let count = match engine.count {
        Some(k) => {
            let v = get(k).ok_or_else(|| {
                Error::Usage(format!(
                    "{} is set but {k} is not: advex needs both (or --worker INDEX/COUNT)",
                    engine.index
                ))
            })?;
            number(k, &v)?
        }
        None => {
            let v = get("ADVEX_WORKERS").ok_or_else(|| {
                Error::Usage(format!(
                    "{} is set (a Kubernetes Indexed Job) but ADVEX_WORKERS is not: set it to \
                     the Job's completions (Kubernetes does not pass the count)",
                    engine.index
                ))
            })?;
            number("ADVEX_WORKERS", &v)?
        }
    };
    if engine.name == "slurm" {
        for (k, want) in [("SLURM_ARRAY_TASK_MIN", 0), ("SLURM_ARRAY_TASK_STEP", 1)] {
            if let Some(v) = get(k) {
                if number(k, &v)? != want {
                    return Err(Error::Usage(format!(
                        "{k}={v}: advex needs a Slurm array of --array=0-{} (first index 0, \
                         step 1) so that the indices are 0..SLURM_ARRAY_TASK_COUNT",
                        count.saturating_sub(1)
                    )));
                }
            }
        }
    }
    let attempt = engine.attempt.and_then(get);
    checked(index, count, engine.name, attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn w(flag: Option<&str>, vars: &[(&str, &str)]) -> Result<Worker> {
        resolve_worker(flag, &env(vars))
    }

    #[test]
    fn engines_give_index_count_and_attempt() {
        assert_eq!(w(None, &[]).unwrap(), Worker::single());
        let x = w(Some("2/5"), &[("RANK", "9")]).unwrap();
        assert_eq!((x.index, x.count, x.engine.as_str()), (2, 5, "--worker"));
        let x = w(
            None,
            &[
                ("SLURM_ARRAY_TASK_ID", "3"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
                ("SLURM_ARRAY_TASK_MIN", "0"),
                ("SLURM_ARRAY_TASK_STEP", "1"),
                ("SLURM_RESTART_COUNT", "2"),
            ],
        )
        .unwrap();
        assert_eq!((x.index, x.count, x.engine.as_str()), (3, 4, "slurm"));
        assert_eq!(x.attempt.as_deref(), Some("2"));
        let x = w(
            None,
            &[("JOB_COMPLETION_INDEX", "1"), ("ADVEX_WORKERS", "3")],
        )
        .unwrap();
        assert_eq!((x.index, x.count, x.engine.as_str()), (1, 3, "kubernetes"));
        let x = w(
            None,
            &[
                ("AWS_BATCH_JOB_ARRAY_INDEX", "0"),
                ("AWS_BATCH_JOB_ARRAY_SIZE", "2"),
                ("AWS_BATCH_JOB_ATTEMPT", "1"),
            ],
        )
        .unwrap();
        assert_eq!(
            (x.engine.as_str(), x.attempt.as_deref()),
            ("aws-batch", Some("1"))
        );
        let x = w(
            None,
            &[("BATCH_TASK_INDEX", "4"), ("BATCH_TASK_COUNT", "5")],
        )
        .unwrap();
        assert_eq!((x.index, x.engine.as_str()), (4, "google-batch"));
        let x = w(None, &[("RANK", "1"), ("WORLD_SIZE", "2")]).unwrap();
        assert_eq!((x.index, x.count, x.engine.as_str()), (1, 2, "torchrun"));
        assert!(x.owns(1) && x.owns(3) && !x.owns(2));
    }

    #[test]
    fn bad_shares_are_refused_with_what_to_fix() {
        let e = |f: Option<&str>, v: &[(&str, &str)]| w(f, v).unwrap_err().to_string();
        assert!(e(Some("4/4"), &[]).contains("0..4"));
        assert!(e(Some("1"), &[]).contains("INDEX/COUNT"));
        assert!(e(Some("a/2"), &[]).contains("whole number"));
        assert!(e(
            None,
            &[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("BATCH_TASK_INDEX", "0")
            ]
        )
        .contains("several engines"));
        assert!(e(None, &[("JOB_COMPLETION_INDEX", "0")]).contains("ADVEX_WORKERS"));
        assert!(e(None, &[("RANK", "0")]).contains("WORLD_SIZE"));
        assert!(e(
            None,
            &[
                ("SLURM_ARRAY_TASK_ID", "1"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
                ("SLURM_ARRAY_TASK_MIN", "1")
            ]
        )
        .contains("--array=0-3"));
        assert!(e(
            None,
            &[
                ("AWS_BATCH_JOB_ARRAY_INDEX", "5"),
                ("AWS_BATCH_JOB_ARRAY_SIZE", "5")
            ]
        )
        .contains("0..5"));
    }
}
