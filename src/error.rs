//! Typed errors. Every message says what went wrong and, where it can, what to do next.

use std::path::PathBuf;

/// The exit code of failures worth retrying (BSD's EX_TEMPFAIL).
pub const EXIT_RETRYABLE: i32 = 75;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A problem with a model file: which file, node and tensor are at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelError {
    pub file: PathBuf,
    pub node: Option<String>,
    pub tensor: Option<String>,
    pub message: String,
}

impl ModelError {
    pub fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError {
            file: file.into(),
            node: None,
            tensor: None,
            message: message.into(),
        }
    }
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }
    pub fn tensor(mut self, tensor: impl Into<String>) -> Self {
        self.tensor = Some(tensor.into());
        self
    }
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "model {}", self.file.display())?;
        if let Some(n) = &self.node {
            write!(f, ", node `{n}`")?;
        }
        if let Some(t) = &self.tensor {
            write!(f, ", tensor `{t}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ModelError {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no GPU adapter found{}. On a machine without a GPU, install Mesa's software Vulkan (Debian/Ubuntu, as root: apt-get install mesa-vulkan-drivers libvulkan1; in a source checkout tools/setup.sh does it). `advex devices` shows the drivers and devices advex sees", .advice.as_ref().map(|a| format!(": {a}")).unwrap_or_default())]
    NoAdapter {
        /// What the machine shows that explains it ([`crate::gpu::Diagnosis::advice`]).
        advice: Option<String>,
    },
    #[error("the GPU is required (--require-gpu or ADVEX_REQUIRE_GPU), but the adapter advex would use is {adapter}, a software renderer on the CPU, hundreds of times slower than a GPU: {why}. `advex devices` shows the drivers and devices advex sees; README \"Running on a cloud GPU\" lists what a GPU machine or container needs")]
    SoftwareAdapter { adapter: String, why: String },
    #[error("no adapter name contains {wanted:?}; available adapters: {available}. Run `advex devices` to list them")]
    AdapterNotFound { wanted: String, available: String },
    #[error("could not create a device on adapter {adapter}: {message}")]
    RequestDevice { adapter: String, message: String },
    #[error("the GPU ran out of memory while {context}; try a smaller --batch-size")]
    OutOfMemory { context: String },
    #[error("GPU validation error while {context}: {message}")]
    Validation { context: String, message: String },
    #[error("GPU internal error while {context}: {message}")]
    GpuInternal { context: String, message: String },
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    #[error("tensor of {bytes} bytes exceeds this adapter's largest storage binding ({limit} bytes) in {context}; use a smaller --batch-size")]
    TooLarge {
        context: String,
        bytes: u64,
        limit: u64,
    },
    #[error("{op}: {message}")]
    Shape { op: String, message: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn shape(op: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Shape {
            op: op.into(),
            message: message.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// Exit code for the CLI: 1 for a user error (bad arguments, model or
    /// input: rerunning will not help), 2 for an internal one, 75
    /// ([`EXIT_RETRYABLE`]) for a failure a rerun may not meet (device lost,
    /// out of memory), so that cluster engines' retry policies can tell them apart.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::DeviceLost(_) | Error::OutOfMemory { .. } => EXIT_RETRYABLE,
            Error::Validation { .. } | Error::GpuInternal { .. } => 2,
            _ => 1,
        }
    }
}
