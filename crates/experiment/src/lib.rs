//! Paper experiments run end to end on the built-in synthetic data: each module is one
//! experiment that drives the library crates (tasks, train, fisher, merge, npeff) and
//! writes its results, a summary and a plot or report; [`stage`] holds what they share.

pub mod merge_synthetic;
pub mod npeff_heuristic;
pub mod npeff_synthetic;
pub mod plot;
pub mod stage;
