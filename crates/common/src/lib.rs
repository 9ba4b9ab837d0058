//! Shared plumbing for every fisherkit crate: errors that name the file and line,
//! atomic writes, JSONL reading, safetensors helpers and progress bars.
//!
//! Kept deliberately small; anything capability-specific belongs in its own crate.

pub mod atomic;
pub mod jsonl;
pub mod progress;
pub mod st;

pub use anyhow::{anyhow, bail, ensure, Context, Error, Result};
