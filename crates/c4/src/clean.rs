//! Per-page rules: URL normalisation, the length filter and `clean_page`, following the
//! released tfds `c4_utils` code rule by rule (see the README for the few deviations).

use crate::counters::{Counter, Counters};
use crate::text::{count_sentences, lower_into, py_splitlines, py_strip, py_words};
use std::sync::OnceLock;

/// Pages longer than this many characters (code points) are dropped.
pub const MAX_PAGE_CHARS: usize = 190_000;
/// Lines with a whitespace-separated word longer than this (code points) are dropped.
pub const MAX_WORD_CHARS: usize = 1000;
const POLICY_SUBSTRINGS: &[&str] = &[
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
];

/// Thresholds of `clean_page`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CleanConfig {
    pub min_words_per_line: usize,
    pub min_sentences: usize,
}

impl CleanConfig {
    /// The values of the released tfds code (the default).
    pub const TFDS: CleanConfig = CleanConfig {
        min_words_per_line: 5,
        min_sentences: 3,
    };
    /// The values stated in the T5 paper (section 2.2).
    pub const PAPER: CleanConfig = CleanConfig {
        min_words_per_line: 3,
        min_sentences: 5,
    };
}

/// `len(text) > 190000` in code points, counting only when the byte length could exceed.
pub fn is_too_long(text: &str) -> bool {
    text.len() > MAX_PAGE_CHARS && text.chars().count() > MAX_PAGE_CHARS
}

/// `c4_utils.normalize_url`: remove every `http(s)://` (and the `www.` after it) wherever it
/// occurs, cut the query at the first `?utm_`, `?ref` or `?feed`, strip trailing `/`s.
pub fn normalize_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find("http") {
        let after = &rest[i + 4..];
        let after = after.strip_prefix('s').unwrap_or(after);
        if let Some(after) = after.strip_prefix("://") {
            out.push_str(&rest[..i]);
            rest = after.strip_prefix("www.").unwrap_or(after);
        } else {
            out.push_str(&rest[..i + 4]);
            rest = &rest[i + 4..];
        }
    }
    out.push_str(rest);
    let cut = out.match_indices('?').map(|(i, _)| i).find(|&i| {
        let q = &out[i + 1..];
        q.starts_with("utm_") || q.starts_with("ref") || q.starts_with("feed")
    });
    if let Some(i) = cut {
        out.truncate(i);
    }
    let kept = out.trim_end_matches('/').len();
    out.truncate(kept);
    out
}

fn citation_regex() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"\[\d*\]|\[edit\]|\[citation needed\]").expect("valid regex")
    })
}

fn has_too_long_word(line: &str) -> bool {
    line.len() > MAX_WORD_CHARS
        && py_words(line).any(|w| w.len() > MAX_WORD_CHARS && w.chars().count() > MAX_WORD_CHARS)
}

/// `c4_utils.clean_page`: returns the kept lines joined by `\n`, or `None` when the page
/// is dropped. Every dropped line and page is counted in `counters`. Lines that are empty
/// after stripping are skipped silently, as the reference WET reader never passed them on.
pub fn clean_page(text: &str, cfg: &CleanConfig, counters: &mut Counters) -> Option<String> {
    let mut kept = String::with_capacity(text.len() / 2);
    let mut num_sentences = 0;
    let mut lower = String::new();
    for raw in py_splitlines(text) {
        let line = py_strip(raw);
        if line.is_empty() {
            continue;
        }
        counters.inc(Counter::LinesIn);
        if has_too_long_word(line) {
            counters.inc(Counter::LinesTooLongWord);
            continue;
        }
        let uncited;
        let line = if line.contains('[') {
            uncited = citation_regex().replace_all(line, "");
            uncited.as_ref()
        } else {
            line
        };
        let has_endmark = line.ends_with(['.', '?', '!', '"']);
        if !has_endmark || line.ends_with("...") {
            counters.inc(Counter::LinesNoEndmark);
            continue;
        }
        if py_words(line).take(cfg.min_words_per_line).count() < cfg.min_words_per_line {
            counters.inc(Counter::LinesTooShort);
            continue;
        }
        lower_into(line, &mut lower);
        if lower.contains("lorem ipsum") {
            counters.inc(Counter::PagesLoremIpsum);
            return None;
        }
        if lower.contains("javascript") {
            counters.inc(Counter::LinesJavascript);
            continue;
        }
        if line.contains('{') {
            counters.inc(Counter::PagesCurlyBrace);
            return None;
        }
        if POLICY_SUBSTRINGS.iter().any(|p| lower.contains(p)) {
            counters.inc(Counter::LinesPolicy);
            continue;
        }
        num_sentences += count_sentences(line);
        if !kept.is_empty() {
            kept.push('\n');
        }
        kept.push_str(line);
        counters.inc(Counter::LinesValid);
    }
    if num_sentences < cfg.min_sentences {
        counters.inc(Counter::PagesTooFewSentences);
        return None;
    }
    Some(kept)
}
