//! Training: Adafactor and AdamW on burn tensors, learning-rate schedules, batching,
//! the training loop with checkpoints and exact resume, generation-based evaluation,
//! the quickstart main job and the training benchmark.

pub mod bench;
pub mod data;
pub mod evaluate;
pub mod job;
pub mod optim;
pub mod quickstart;
pub mod schedule;
pub mod trainer;
