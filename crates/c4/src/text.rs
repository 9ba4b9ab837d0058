//! Text primitives with Python's semantics where the reference pipeline relied on them:
//! `str.splitlines`, `str.strip`/`str.split` whitespace, and a sentence splitter that
//! approximates NLTK punkt (English) closely enough to count sentences of web prose.

/// Python's `str.isspace`: Unicode White_Space plus the ASCII separators U+001C..U+001F.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `str.split()` (whitespace runs, no empty words).
pub fn py_words(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// Python's `str.splitlines()`: breaks at `\n`, `\r`, `\r\n`, VT, FF, FS, GS, RS, NEL,
/// U+2028 and U+2029. The released C4 code split pages this way (not only at `\n`).
pub fn py_splitlines(s: &str) -> PySplitLines<'_> {
    PySplitLines { s, pos: 0 }
}

pub struct PySplitLines<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Iterator for PySplitLines<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.s.as_bytes();
        let start = self.pos;
        if start >= bytes.len() {
            return None;
        }
        let mut i = start;
        while i < bytes.len() {
            let b = bytes[i];
            let break_len = match b {
                b'\r' if bytes.get(i + 1) == Some(&b'\n') => 2,
                b'\n' | b'\r' | 0x0b | 0x0c | 0x1c | 0x1d | 0x1e => 1,
                0xC2 if bytes.get(i + 1) == Some(&0x85) => 2,
                0xE2 if bytes.get(i + 1) == Some(&0x80)
                    && matches!(bytes.get(i + 2), Some(0xA8) | Some(0xA9)) =>
                {
                    3
                }
                _ => 0,
            };
            if break_len > 0 {
                self.pos = i + break_len;
                return Some(&self.s[start..i]);
            }
            i += 1;
        }
        self.pos = bytes.len();
        Some(&self.s[start..])
    }
}

/// Lower-case like Python's `str.lower()`, with an allocation-light ASCII fast path.
pub fn lower_into(s: &str, out: &mut String) {
    out.clear();
    if s.is_ascii() {
        out.push_str(s);
        out.make_ascii_lowercase();
    } else {
        // std's `to_lowercase` lowers ASCII runs in bulk; char-by-char is 3x slower.
        out.push_str(&s.to_lowercase());
    }
}

/// Words that punkt's English model treats as abbreviations: a period after them does
/// not end a sentence. Compared lower-cased, without the final period.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "e.g", "i.e",
    "inc", "ltd", "co", "corp", "llc", "no", "nos", "fig", "figs", "vol", "vols", "pp", "p", "ed",
    "eds", "gen", "gov", "sen", "rep", "col", "lt", "sgt", "capt", "cmdr", "adm", "rev", "hon",
    "pres", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    "mon", "tue", "tues", "wed", "thu", "thur", "thurs", "fri", "sat", "sun", "approx", "dept",
    "est", "ave", "blvd", "rd", "univ", "assn", "bros", "u.s", "u.k", "u.n", "a.m", "p.m", "ph.d",
    "d.c", "n.y", "l.a", "cf", "al", "op", "cit", "ibid", "ca", "resp", "misc",
];

fn is_abbreviation(word: &str) -> bool {
    let mut lowered = [0u8; 8];
    if word.len() > lowered.len() || !word.is_ascii() {
        return false;
    }
    for (dst, b) in lowered.iter_mut().zip(word.bytes()) {
        *dst = b.to_ascii_lowercase();
    }
    let lowered = &lowered[..word.len()];
    if ABBREVIATIONS.iter().any(|a| a.as_bytes() == lowered) {
        return true;
    }
    // Dotted letter sequences ("U.S.A", "e.g") and single initials ("J") are
    // abbreviations for punkt as well.
    lowered
        .split(|&b| b == b'.')
        .all(|part| part.len() == 1 && part[0].is_ascii_alphabetic())
}

const CLOSERS: &[char] = &['"', '\'', '\u{201d}', '\u{2019}', ')', ']', '}', '\u{bb}'];
const OPENERS: &[char] = &['"', '\'', '\u{201c}', '\u{2018}', '(', '[', '{', '\u{ab}'];

fn starts_upper_or_digit(token: &str) -> bool {
    token
        .trim_start_matches(OPENERS)
        .chars()
        .next()
        .is_some_and(|c| c.is_uppercase() || c.is_ascii_digit())
}

/// Does `token` end a sentence, given the token that follows it?
fn ends_sentence(token: &str, next: &str) -> bool {
    let core = token.trim_end_matches(CLOSERS);
    if core.ends_with('?') || core.ends_with('!') {
        return true;
    }
    let Some(stem) = core.strip_suffix('.') else {
        return false;
    };
    if stem.ends_with("..") {
        // An ellipsis ends a sentence only before a capitalised word (punkt's heuristic).
        return starts_upper_or_digit(next);
    }
    let stem = stem.trim_start_matches(OPENERS);
    if stem.is_empty() || is_abbreviation(stem) {
        return false;
    }
    if stem.bytes().all(|b| b.is_ascii_digit()) {
        // "the 5. place": an ordinal number before a lower-case word.
        return starts_upper_or_digit(next);
    }
    true
}

/// Byte ranges of the sentences of `line` (whitespace-tokenised, like punkt). Decimals
/// ("3.14"), abbreviations ("Dr.", "U.S."), initials and closing quotes after the end
/// mark (`He said "no."`) are handled; an empty line has no sentences.
pub fn sentence_spans(line: &str, mut emit: impl FnMut(usize, usize)) {
    let mut sentence_start: Option<usize> = None;
    let mut prev: Option<(usize, usize)> = None; // previous token's byte range
    for (start, end) in (TokenIter { s: line, pos: 0 }) {
        if let Some((ps, pe)) = prev {
            if ends_sentence(&line[ps..pe], &line[start..end]) {
                emit(sentence_start.unwrap_or(ps), pe);
                sentence_start = None;
            }
        }
        if sentence_start.is_none() {
            sentence_start = Some(start);
        }
        prev = Some((start, end));
    }
    if let (Some(s), Some((_, pe))) = (sentence_start, prev) {
        emit(s, pe);
    }
}

/// Number of sentences of `line` (see [`sentence_spans`]).
pub fn count_sentences(line: &str) -> usize {
    let mut n = 0;
    sentence_spans(line, |_, _| n += 1);
    n
}

struct TokenIter<'a> {
    s: &'a str,
    pos: usize,
}

impl Iterator for TokenIter<'_> {
    type Item = (usize, usize);
    fn next(&mut self) -> Option<(usize, usize)> {
        let start = self.pos + scan(&self.s[self.pos..], false)?;
        let len = scan(&self.s[start..], true).unwrap_or(self.s.len() - start);
        self.pos = start + len;
        Some((start, start + len))
    }
}

/// Byte offset of the first character whose "is whitespace" equals `space`, with an
/// ASCII fast path (most web text is ASCII).
fn scan(s: &str, space: bool) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            let is_space = matches!(b, b' ' | b'\t'..=b'\r' | 0x1c..=0x1f);
            if is_space == space {
                return Some(i);
            }
            i += 1;
        } else {
            let c = s[i..].chars().next().expect("char boundary");
            if is_py_space(c) == space {
                return Some(i);
            }
            i += c.len_utf8();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentences(s: &str) -> Vec<&str> {
        let mut out = vec![];
        sentence_spans(s, |a, b| out.push(&s[a..b]));
        out
    }

    #[test]
    fn splitlines_matches_python() {
        // Expected values from Python 3: "a\r\nb\rc\u2028d\x85e\x0cf\n".splitlines()
        let got: Vec<_> = py_splitlines("a\r\nb\rc\u{2028}d\u{85}e\x0cf\n").collect();
        assert_eq!(got, ["a", "b", "c", "d", "e", "f"]);
        let got: Vec<_> = py_splitlines("x\n\ny").collect();
        assert_eq!(got, ["x", "", "y"]);
        assert_eq!(py_splitlines("").count(), 0);
    }

    #[test]
    fn strip_and_words_use_python_whitespace() {
        assert_eq!(py_strip("\u{1f}\u{a0} hi \u{3000}"), "hi");
        assert_eq!(py_words("a\u{1c}b  c").collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    #[test]
    fn sentence_splitter_handles_prose() {
        assert_eq!(
            sentences("Dr. Smith paid $3.50 for it. Then he left! Did he?"),
            ["Dr. Smith paid $3.50 for it.", "Then he left!", "Did he?"]
        );
        assert_eq!(
            sentences("He said \"stop.\" She agreed. The U.S. Army came."),
            ["He said \"stop.\"", "She agreed.", "The U.S. Army came."]
        );
        assert_eq!(
            count_sentences("J. R. R. Tolkien wrote books, e.g. this one."),
            1
        );
        assert_eq!(count_sentences("Wait... what happened"), 1);
        assert_eq!(count_sentences("Wait... What happened?"), 2);
        assert_eq!(count_sentences("   "), 0);
        assert_eq!(count_sentences("no end mark at all"), 1);
    }
}
