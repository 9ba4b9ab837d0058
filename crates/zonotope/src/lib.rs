//! Shallow ReLU network optimisation as zonotope-vertex search.
