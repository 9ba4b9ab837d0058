//! The architecture-neutral model interface fisher, merge and NPEFF run on.
