//! Shallow ReLU network optimisation as zonotope-vertex search (Matena & Raffel, NeurIPS
//! 2022, as formulated in `shared/specs/zonotope.md`).
//!
//! A network `f(x) = Σ_j s_j relu(w_jᵀ x̃)` with fixed output signs `s_j` and homogenised
//! inputs `x̃ = (x, 1)` is, once the activation pattern of every unit is fixed, a convex QP
//! in the weights. Activation patterns of one unit are the vertices of the zonotope
//! `Σ_i [0, x̃_i]`; this crate enumerates them ([`vertices`]), solves the QP for a pattern
//! tuple ([`qp`]), builds the 2× interpolating construction ([`construct`]), runs greedy
//! local search over vertex tuples ([`search`]), the gradient-descent baseline ([`gd`]),
//! exact brute force ([`brute`]), seeded comparisons with a paired test ([`compare`]) and
//! the sensitivity example at degenerate data ([`sensitivity`]).

pub mod bench;
pub mod brute;
pub mod compare;
pub mod construct;
pub mod data;
pub mod gd;
pub mod linalg;
pub mod network;
pub mod patterns;
pub mod plot;
pub mod qp;
pub mod search;
pub mod sensitivity;
pub mod solver;
pub mod stats;
pub mod vertices;

pub use data::Dataset;
pub use network::{Network, Unit};
