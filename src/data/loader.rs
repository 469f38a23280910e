//! Batches of decoded images, prepared on CPU threads while the GPU works on the
//! previous batch. Memory stays bounded: at most `prefetch` batches wait.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::{decode_bytes, to_input, ImageEntry, Preprocessor};
use crate::error::{Error, Result};

/// An image that could not be used, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub image: String,
    pub reason: String,
}

/// Decoded images: `indices` into the entry list, pixels `[count, C, H, W]`.
pub struct Batch {
    pub indices: Vec<usize>,
    pub pixels: Vec<f32>,
    pub skipped: Vec<Skipped>,
    /// Indices (into the entry list) of `skipped`, in the same order.
    pub skipped_at: Vec<usize>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Iterator over batches; decoding runs ahead in a background thread.
pub struct BatchLoader {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
}

impl BatchLoader {
    /// `strict`: an undecodable image is an error instead of a skipped entry.
    pub fn new(
        entries: Arc<Vec<ImageEntry>>,
        prep: Preprocessor,
        batch_size: usize,
        prefetch: usize,
        strict: bool,
    ) -> Self {
        let (tx, rx) = sync_channel(prefetch.max(1));
        let batch_size = batch_size.max(1);
        let handle = std::thread::Builder::new()
            .name("advex-decode".into())
            .spawn(move || {
                let n = entries.len();
                let mut start = 0;
                while start < n {
                    let end = (start + batch_size).min(n);
                    let decoded: Vec<(usize, Result<Vec<f32>>)> = (start..end)
                        .into_par_iter()
                        .map(|i| {
                            let e = &entries[i];
                            let img = e
                                .read()
                                .and_then(|b| decode_bytes(&b, std::path::Path::new(&e.display())));
                            (i, img.and_then(|img| to_input(img, &prep)))
                        })
                        .collect();
                    let mut batch = Batch {
                        indices: Vec::with_capacity(end - start),
                        pixels: Vec::with_capacity((end - start) * prep.numel()),
                        skipped: Vec::new(),
                        skipped_at: Vec::new(),
                    };
                    let mut failure = None;
                    for (i, r) in decoded {
                        match r {
                            Ok(px) => {
                                batch.indices.push(i);
                                batch.pixels.extend_from_slice(&px);
                            }
                            Err(e) if strict => {
                                failure = Some(Error::Usage(format!(
                                    "{e} (--strict stops at unreadable images)"
                                )));
                                break;
                            }
                            Err(e) => {
                                batch.skipped.push(Skipped {
                                    image: entries[i].rel.clone(),
                                    reason: e.to_string(),
                                });
                                batch.skipped_at.push(i);
                            }
                        }
                    }
                    let msg = match failure {
                        Some(e) => Err(e),
                        None => Ok(batch),
                    };
                    let stop = msg.is_err();
                    if tx.send(msg).is_err() || stop {
                        return; // consumer gone, or a strict failure was sent
                    }
                    start = end;
                }
            })
            .expect("spawning the decode thread");
        BatchLoader {
            rx: Some(rx),
            handle: Some(handle),
        }
    }
}

impl Iterator for BatchLoader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        drop(self.rx.take()); // unblocks the producer
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
