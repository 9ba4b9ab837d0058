//! NPEFF: non-negative per-example Fisher factorisation (D-NPEFF, LRM-NPEFF) and the PEF file format.
