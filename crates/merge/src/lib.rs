//! Streaming safetensors merging: Fisher-weighted averaging and mergekit-style methods.
