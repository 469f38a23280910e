//! Several adapters from one process (`--devices`): one device, one plan and one
//! batch stream per adapter, batches dealt to whichever device is free, results
//! taken back in input order, so that every output (predictions, shards,
//! reports) is the same whatever the number of devices.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Arc, Mutex, TryLockError};

use crate::error::{Error, Result};
use crate::gpu::{list_adapters, select_devices, AdapterId, DType};
use crate::model::Model;
use crate::plan::GpuModel;
use crate::{Context, ContextOptions};

/// How to open the devices of a run.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// `--adapter`: one adapter by name (the default, one device).
    pub adapter: Option<String>,
    /// `--devices all|0,2|NAME` (see [`select_devices`]).
    pub devices: Option<String>,
    /// `--require-gpu`.
    pub require_gpu: bool,
    /// `--precision mixed` (see [`ContextOptions::mixed`]).
    pub mixed: bool,
}

/// The model on every device the options name, in the order given. Without
/// `--devices`, one device as [`Context::new`] picks it.
pub fn open_gpus(opts: &DeviceOptions, model: Arc<Model>, dtype: DType) -> Result<Vec<GpuModel>> {
    let Some(spec) = &opts.devices else {
        let ctx = Arc::new(Context::new(ContextOptions {
            adapter: opts.adapter.clone(),
            require_gpu: opts.require_gpu,
            mixed: opts.mixed,
            ..Default::default()
        })?);
        return Ok(vec![GpuModel::with_precision(ctx, model, dtype)?]);
    };
    if opts.adapter.is_some() {
        return Err(Error::Usage(
            "--adapter and --devices both pick adapters: give one of them".into(),
        ));
    }
    let adapters = list_adapters();
    if adapters.is_empty() {
        return Err(Error::NoAdapter {
            advice: crate::gpu::Diagnosis::gather().advice(),
        });
    }
    let ids: Vec<AdapterId> = adapters.iter().map(AdapterId::of).collect();
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let (chosen, how) = select_devices(spec, &ids, visible.as_deref()).map_err(Error::Usage)?;
    log::info!("{how}");
    let mut gpus = Vec::with_capacity(chosen.len());
    for i in chosen {
        let ctx = Arc::new(Context::new(ContextOptions {
            adapter_index: Some(i),
            require_gpu: opts.require_gpu,
            mixed: opts.mixed,
            ..Default::default()
        })?);
        gpus.push(GpuModel::with_precision(ctx, model.clone(), dtype)?);
    }
    Ok(gpus)
}

/// Run `jobs` on every device at once and hand each result to `consume` in the
/// jobs' order (see [`run_pipelined`]; here each job is done in one call).
pub fn run_ordered<P, J, R>(
    plans: Vec<P>,
    jobs: impl Iterator<Item = Result<J>>,
    work: impl Fn(&P, &J) -> Result<R> + Sync,
    consume: impl FnMut(J, R) -> Result<bool>,
) -> Result<()>
where
    P: Send,
    J: Send,
    R: Send,
{
    run_pipelined(plans, jobs, work, |_, r| Ok(r), consume)
}

/// Run `jobs` on every device at once and hand each result to `consume` in the
/// jobs' order, overlapping each device's batches.
///
/// Each device (`plans`, one per device) has its own thread and takes the next
/// job when it is free. A job runs in two halves: `submit` (upload and submit
/// the work, without waiting) and `finish` (wait and read back). A device
/// submits its next job, when one is waiting, before it finishes the one in
/// flight, so the GPU runs one batch while the host uploads the next and
/// reads back the one before. At most three jobs per device are out at a
/// time (one in flight, one being submitted, one waiting), so memory stays
/// bounded however uneven the devices are. `consume` returning `Ok(false)`
/// stops the run early. The first error, in job order, ends the run: the jobs
/// before it are consumed, those after it are not.
pub fn run_pipelined<P, J, S, R>(
    plans: Vec<P>,
    jobs: impl Iterator<Item = Result<J>>,
    submit: impl Fn(&P, &J) -> Result<S> + Sync,
    finish: impl Fn(&P, S) -> Result<R> + Sync,
    mut consume: impl FnMut(J, R) -> Result<bool>,
) -> Result<()>
where
    P: Send,
    J: Send,
    R: Send,
{
    if plans.is_empty() {
        return Err(Error::Usage("no device to run on".into()));
    }
    let window = 3 * plans.len();
    std::thread::scope(|scope| {
        let (job_tx, job_rx) = sync_channel::<(usize, J)>(plans.len());
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = channel::<(usize, J, Result<R>)>();
        for (d, plan) in plans.into_iter().enumerate() {
            let jobs = job_rx.clone();
            let done = done_tx.clone();
            let (submit, finish) = (&submit, &finish);
            std::thread::Builder::new()
                .name(format!("advex-device-{d}"))
                .spawn_scoped(scope, move || {
                    // The job in flight: submitted, not yet finished.
                    let mut held: Option<(usize, J, S)> = None;
                    // Finish the held job and hand its result over; false:
                    // stop (it failed, or nobody listens).
                    let finish_held = |held: &mut Option<(usize, J, S)>| -> bool {
                        let Some((seq, job, s)) = held.take() else {
                            return true;
                        };
                        let r = finish(&plan, s);
                        let failed = r.is_err();
                        done.send((seq, job, r)).is_ok() && !failed
                    };
                    loop {
                        // The lock is held only while taking the next job.
                        // With one in flight, take only a job already
                        // waiting: a lock held by another device means it
                        // waits for jobs, so none is.
                        let next = if held.is_some() {
                            match jobs.try_lock() {
                                Ok(rx) => rx.try_recv().ok(),
                                Err(TryLockError::Poisoned(e)) => e.into_inner().try_recv().ok(),
                                Err(TryLockError::WouldBlock) => None,
                            }
                        } else {
                            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
                            rx.recv().ok()
                        };
                        let Some((seq, job)) = next else {
                            if held.is_none() {
                                return; // no more jobs
                            }
                            if !finish_held(&mut held) {
                                return;
                            }
                            continue;
                        };
                        match submit(&plan, &job) {
                            Ok(s) => {
                                let ok = finish_held(&mut held);
                                held = Some((seq, job, s));
                                if !ok {
                                    return; // a failed device takes no more work
                                }
                            }
                            Err(e) => {
                                // what is in flight comes first
                                finish_held(&mut held);
                                let _ = done.send((seq, job, Err(e)));
                                return;
                            }
                        }
                    }
                })
                .expect("spawning a device thread");
        }
        drop(done_tx);
        drop(job_rx);
        let mut jobs = jobs;
        let (mut sent, mut consumed) = (0usize, 0usize);
        let mut pending: BTreeMap<usize, (J, Result<R>)> = BTreeMap::new();
        let mut exhausted = false;
        let outcome = 'run: loop {
            while !exhausted && sent - consumed < window {
                match jobs.next() {
                    Some(Ok(job)) => {
                        if job_tx.send((sent, job)).is_err() {
                            break; // every device failed; their errors are pending
                        }
                        sent += 1;
                    }
                    Some(Err(e)) => {
                        // results already out come first: they precede the failure
                        while consumed < sent {
                            match pending.remove(&consumed) {
                                Some((j, r)) => {
                                    consumed += 1;
                                    if !consume(j, r?)? {
                                        break 'run Ok(());
                                    }
                                }
                                None => match done_rx.recv() {
                                    Ok((seq, j, r)) => {
                                        pending.insert(seq, (j, r));
                                    }
                                    Err(_) => break,
                                },
                            }
                        }
                        break 'run Err(e);
                    }
                    None => exhausted = true,
                }
            }
            if consumed == sent {
                break Ok(());
            }
            match done_rx.recv() {
                Ok((seq, job, r)) => {
                    pending.insert(seq, (job, r));
                }
                Err(_) => {
                    break Err(Error::Usage(
                        "every device stopped before the run was done".into(),
                    ))
                }
            }
            while let Some((job, r)) = pending.remove(&consumed) {
                consumed += 1;
                match r.and_then(|r| consume(job, r)) {
                    Ok(true) => {}
                    Ok(false) => break 'run Ok(()),
                    Err(e) => break 'run Err(e),
                }
            }
        };
        // Devices finish the job in hand and stop; their results are dropped.
        drop(job_tx);
        drop(done_rx);
        outcome
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Uneven devices finish out of order; results still come back in order.
    #[test]
    fn results_come_back_in_job_order() {
        let delays = vec![
            Duration::from_millis(7),
            Duration::from_millis(1),
            Duration::ZERO,
        ];
        let seen = Mutex::new(Vec::new());
        let mut order = Vec::new();
        run_ordered(
            delays,
            (0..40u32).map(Ok),
            |d, &j| {
                std::thread::sleep(*d);
                seen.lock().unwrap().push(j);
                Ok(j * 10)
            },
            |j, r| {
                assert_eq!(r, j * 10);
                order.push(j);
                Ok(true)
            },
        )
        .unwrap();
        assert_eq!(order, (0..40).collect::<Vec<_>>());
        let mut all = seen.into_inner().unwrap();
        all.sort();
        assert_eq!(all, (0..40).collect::<Vec<_>>(), "each job ran once");
    }

    /// A failing job stops the run after the jobs before it are consumed.
    #[test]
    fn an_error_stops_after_earlier_results() {
        let mut order = Vec::new();
        let r = run_ordered(
            vec![(), ()],
            (0..20u32).map(Ok),
            |_, &j| {
                if j == 9 {
                    Err(Error::Usage("job 9 failed".into()))
                } else {
                    Ok(j)
                }
            },
            |j, _| {
                order.push(j);
                Ok(true)
            },
        );
        assert!(r.unwrap_err().to_string().contains("job 9"));
        assert_eq!(order, (0..9).collect::<Vec<_>>());
    }

    /// A failing job source ends the run with its error, after what was out.
    #[test]
    fn a_source_error_ends_the_run() {
        let mut order = Vec::new();
        let jobs = (0..10u32).map(|j| {
            if j == 5 {
                Err(Error::Usage("unreadable".into()))
            } else {
                Ok(j)
            }
        });
        let r = run_ordered(
            vec![()],
            jobs,
            |_, &j| Ok(j),
            |j, _| {
                order.push(j);
                Ok(true)
            },
        );
        assert!(r.unwrap_err().to_string().contains("unreadable"));
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    /// Split jobs come back in order on uneven devices, each submitted once
    /// and finished once, and a failing half stops the run after the jobs
    /// before it, whichever half fails.
    #[test]
    fn pipelined_jobs_come_back_in_order_and_stop_at_errors() {
        let submitted = Mutex::new(Vec::new());
        let mut order = Vec::new();
        run_pipelined(
            vec![Duration::from_millis(3), Duration::ZERO],
            (0..30u32).map(Ok),
            |_, &j| {
                submitted.lock().unwrap().push(j);
                Ok(j * 2)
            },
            |d, s| {
                std::thread::sleep(*d);
                Ok(s + 1)
            },
            |j, r| {
                assert_eq!(r, j * 2 + 1);
                order.push(j);
                Ok(true)
            },
        )
        .unwrap();
        assert_eq!(order, (0..30).collect::<Vec<_>>());
        let mut all = submitted.into_inner().unwrap();
        all.sort();
        assert_eq!(all, (0..30).collect::<Vec<_>>(), "each job submitted once");
        for failing_submit in [true, false] {
            let mut order = Vec::new();
            let r = run_pipelined(
                vec![(), ()],
                (0..20u32).map(Ok),
                |_, &j| {
                    if failing_submit && j == 9 {
                        Err(Error::Usage("submit 9 failed".into()))
                    } else {
                        Ok(j)
                    }
                },
                |_, j| {
                    if !failing_submit && j == 9 {
                        Err(Error::Usage("finish 9 failed".into()))
                    } else {
                        Ok(j)
                    }
                },
                |j, _| {
                    order.push(j);
                    Ok(true)
                },
            );
            assert!(r.unwrap_err().to_string().contains(" 9 failed"));
            assert_eq!(order, (0..9).collect::<Vec<_>>());
        }
    }

    /// `consume` can stop the run early.
    #[test]
    fn consume_can_stop() {
        let mut n = 0;
        run_ordered(
            vec![(), (), ()],
            (0..100u32).map(Ok),
            |_, &j| Ok(j),
            |_, _| {
                n += 1;
                Ok(n < 5)
            },
        )
        .unwrap();
        assert_eq!(n, 5);
    }
}
