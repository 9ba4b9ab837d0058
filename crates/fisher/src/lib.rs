//! Diagonal dataset Fishers and per-example Fishers (diagonal and low-rank) from models.
