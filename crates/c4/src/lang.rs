//! Language identification with `whatlang` (trigram profiles, ~µs per page).
//!
//! The reference used `langdetect` and kept pages whose top language was English with
//! probability ≥ 0.99. `langdetect` reports a posterior from a naive-Bayes model that
//! saturates at ≈ 0.99999 on any clean English paragraph; `whatlang` reports a
//! *confidence* in [0, 1] derived from the gap between its best and second-best language
//! scores, normalised by text length, which is 1.0 for ordinary English pages and falls
//! for short or mixed-language text. We use that confidence as the English probability
//! (0 when the best language is not English), so `--lang-threshold` keeps its meaning
//! "how sure must the detector be"; the README reports how the two compare on the real
//! test pages.

/// Only the first 2,000 characters are looked at (langdetect stops at 10,000): on the
/// real test pages the decisions are the same as with 10,000, at a third of the cost.
const MAX_CHARS: usize = 2_000;

/// English probability of `text` as described above.
pub fn english_probability(text: &str) -> f64 {
    let end = text
        .char_indices()
        .nth(MAX_CHARS)
        .map_or(text.len(), |(i, _)| i);
    match whatlang::detect(&text[..end]) {
        Some(info) if info.lang() == whatlang::Lang::Eng => info.confidence(),
        _ => 0.0,
    }
}
