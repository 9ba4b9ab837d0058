//! Shared plumbing for every fisherkit crate: errors that name the file and line,
//! atomic writes, JSONL reading, safetensors helpers and progress bars.
//!
//! Kept deliberately small; anything capability-specific belongs in its own crate.

pub mod atomic;
pub mod jsonl;
pub mod progress;
pub mod st;

pub use anyhow::{anyhow, bail, ensure, Context, Error, Result};

/// The index of the largest value (the first on ties, as `torch.argmax`); 0 when empty.
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// FNV-1a (64-bit) of `bytes`: the fingerprint of data files (`fnv1a64:<hex>` in Fisher
/// and PEF metadata) and of PEF parameter tables.
pub fn fnv1a64<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The data fingerprint as written in metadata: `fnv1a64:<16 hex digits>`.
pub fn data_hash(bytes: &[u8]) -> String {
    format!("fnv1a64:{:016x}", fnv1a64(bytes))
}
