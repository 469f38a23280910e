//! Images in and out: discovery, labels, decoding and preprocessing, batching
//! with prefetch on CPU threads, and atomic PNG writing.

mod discover;
mod image_io;
mod labels;
mod loader;
mod names;
mod output;
mod resample;

pub use discover::{discover, expand_braces, Discovered, ImageEntry};
pub use image_io::{
    decode_bytes, encode_png, encode_png_with, load_image, tmp_path, tmp_tag, to_input,
    write_atomic, write_png_atomic, Filter, PngCompression, Preprocessor,
};
pub use labels::{assign_labels, LabelSource};
pub use loader::{Batch, BatchLoader, Skipped};
pub use names::{escaped, output_path, output_rel, SymlinkGuard};
pub use output::{
    admit, png_path, sample_key, FileRecord, OutputFormat, OutputSpec, OutputWriter, Sample,
    DEFAULT_SHARD_SIZE,
};
