//! Text-to-text tasks: the `{input, target}` example format, GLUE-style formatters,
//! examples-proportional mixtures, T5 span corruption, evaluation metrics with their
//! post-processing, SentencePiece-Unigram tokenizer training in the T5 convention, and
//! the built-in synthetic task suite.

pub mod example;
pub mod folders;
pub mod glue;
pub mod metrics;
pub mod mixture;
pub mod span;
pub mod synthetic;
pub mod tokenizer;

pub use example::{load_examples, write_examples, Example};
