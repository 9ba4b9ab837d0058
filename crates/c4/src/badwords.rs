//! The bad-words page filter: a page is dropped when its lower-cased text contains a
//! listed word or phrase as a whole word, i.e. when `(?:\W|^)(w1|w2|…)(?:\W|$)` matches.
//! One Aho-Corasick automaton finds every occurrence (overlapping ones too, so a
//! non-boundary hit never hides a real one) and the boundaries are checked with the
//! regex crate's own `\w` definition, which makes the two formulations identical.

use anyhow::{Context, Result};
use std::path::Path;

/// A compiled bad-words list.
pub struct Badwords {
    automaton: Option<aho_corasick::AhoCorasick>,
    words: Vec<String>,
}

/// A tiny list for tests only; real runs take the user's file (e.g. the LDNOOBW list).
pub const TEST_LIST: &[&str] = &["badword", "very bad phrase", "s&m"];

impl Badwords {
    /// Compile a list of words or phrases (lower-cased, blank entries ignored).
    pub fn new<S: AsRef<str>>(words: &[S]) -> Result<Badwords> {
        let mut words: Vec<String> = words
            .iter()
            .map(|w| w.as_ref().trim().to_lowercase())
            .filter(|w| !w.is_empty())
            .collect();
        words.sort();
        words.dedup();
        let automaton = if words.is_empty() {
            None
        } else {
            Some(
                aho_corasick::AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::Standard)
                    .kind(Some(aho_corasick::AhoCorasickKind::DFA))
                    .build(&words)
                    .context("building the bad-words automaton")?,
            )
        };
        Ok(Badwords { automaton, words })
    }

    /// Read a list file: one word or phrase per line (UTF-8).
    pub fn from_file(path: &Path) -> Result<Badwords> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the bad-words list {}", path.display()))?;
        let list = Badwords::new(&text.lines().collect::<Vec<_>>())?;
        anyhow::ensure!(
            !list.is_empty(),
            "the bad-words list {} has no entries",
            path.display()
        );
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// Does the already lower-cased `text` contain a listed word as a whole word?
    pub fn matches_lowercased(&self, text: &str) -> bool {
        let Some(ac) = &self.automaton else {
            return false;
        };
        ac.find_overlapping_iter(text).any(|m| {
            let before_ok = text[..m.start()]
                .chars()
                .next_back()
                .is_none_or(|c| !regex_syntax::is_word_character(c));
            let after_ok = text[m.end()..]
                .chars()
                .next()
                .is_none_or(|c| !regex_syntax::is_word_character(c));
            before_ok && after_ok
        })
    }

    /// Lower-case `text` and test it.
    pub fn matches(&self, text: &str) -> bool {
        let mut lower = String::new();
        crate::text::lower_into(text, &mut lower);
        self.matches_lowercased(&lower)
    }
}
