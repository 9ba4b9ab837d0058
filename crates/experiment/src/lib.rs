//! Paper experiments run end to end on the built-in synthetic data: each module is one
//! experiment that drives the library crates (tasks, train, fisher, merge) and writes
//! its results, a summary and a plot.

pub mod merge_synthetic;
pub mod plot;
