//! The binary's modules: arguments, the small commands, printed summaries.

pub(crate) mod args;
pub(crate) mod commands;
pub(crate) mod summary;

pub(crate) use summary::yes;
