//! T5 encoder-decoder on burn: Hugging Face checkpoints, scoring, greedy and beam decoding.
