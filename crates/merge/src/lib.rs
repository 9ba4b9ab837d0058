//! Streaming safetensors merging: Fisher-weighted averaging (Matena & Raffel, 2022) and
//! the mergekit methods practitioners use (linear, task arithmetic, TIES, DARE, SLERP,
//! passthrough), from mergekit-compatible YAML recipes.
//!
//! Inputs are memory-mapped and merged one tensor at a time (parallel inside a tensor);
//! output is written header-first into shards with `model.safetensors.index.json`, in a
//! staging directory renamed into place only when complete.

pub mod bench;
pub mod checkpoint;
mod direct;
pub mod engine;
pub mod fisher_file;
pub mod methods;
pub mod recipe;
pub mod search;
pub mod writer;

pub use engine::{
    merge_to_dir, merge_to_dir_weighted, MergeReport, OutputOptions, Plan, PlanOptions,
};
pub use fisher_file::{inspect, write_fisher, FisherFile, FisherMeta, FisherMode};
pub use recipe::Recipe;
