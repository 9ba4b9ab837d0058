//! One test per rule of the spec, each with its own small input, checking the line or
//! page dropped and the counter that recorded it.

use fisherkit_c4::clean::{is_too_long, MAX_PAGE_CHARS};
use fisherkit_c4::{clean_page, normalize_url, Badwords, CleanConfig, Counter, Counters};

const GOOD: &str = "This line is long enough and ends well.";

/// Clean `lines` (plus three good lines so the page survives) with the tfds defaults.
fn clean_with_good(lines: &[&str]) -> (Option<String>, Counters) {
    let mut all: Vec<&str> = lines.to_vec();
    all.extend([GOOD, GOOD, GOOD]);
    let mut c = Counters::default();
    let out = clean_page(&all.join("\n"), &CleanConfig::TFDS, &mut c);
    (out, c)
}

fn kept_lines(out: &Option<String>) -> Vec<String> {
    out.as_ref()
        .expect("page kept")
        .split('\n')
        .map(str::to_string)
        .collect()
}

#[test]
fn line_with_a_word_over_1000_chars_is_dropped() {
    let long = format!("Here is a word {} in a sentence.", "x".repeat(1001));
    let exactly = format!("Here is a word {} in a sentence.", "é".repeat(1000));
    let (out, c) = clean_with_good(&[&long, &exactly]);
    assert_eq!(c.get(Counter::LinesTooLongWord), 1);
    assert_eq!(
        kept_lines(&out)[0],
        exactly,
        "1000 code points (2000 bytes) is allowed"
    );
}

#[test]
fn citation_markers_are_removed() {
    let (out, _) = clean_with_good(&[
        "Paris is the capital of France.[1][23] It is big[edit] and old[citation needed].",
    ]);
    assert_eq!(
        kept_lines(&out)[0],
        "Paris is the capital of France. It is big and old."
    );
    // A line ending in a marker loses its end mark only if the marker follows a space.
    let (out, c) = clean_with_good(&["A claim made without any evidence [2]"]);
    assert_eq!(c.get(Counter::LinesNoEndmark), 1);
    assert_eq!(kept_lines(&out).len(), 3);
}

#[test]
fn lines_without_end_mark_or_with_ellipsis_are_dropped() {
    let (out, c) = clean_with_good(&[
        "This line has no end mark at all",
        "This line trails off into nothing...",
        "Does this question line survive here?",
        "He said it was \"the end of all things\"",
        "What a surprising and loud exclamation!",
    ]);
    assert_eq!(c.get(Counter::LinesNoEndmark), 2);
    assert_eq!(kept_lines(&out).len(), 3 + 3);
}

#[test]
fn short_lines_are_dropped_with_code_and_paper_thresholds() {
    let lines = "Four words only here.\nThree words here.\nTwo words.\n".to_string()
        + &[GOOD; 5].join("\n");
    let mut c = Counters::default();
    let code = clean_page(&lines, &CleanConfig::TFDS, &mut c).unwrap();
    assert_eq!(c.get(Counter::LinesTooShort), 3);
    assert!(!code.contains("Four words"));
    let mut c = Counters::default();
    let paper = clean_page(&lines, &CleanConfig::PAPER, &mut c).unwrap();
    assert_eq!(
        c.get(Counter::LinesTooShort),
        1,
        "paper keeps lines of >= 3 words"
    );
    assert!(paper.starts_with("Four words only here.\nThree words here."));
}

#[test]
fn lorem_ipsum_drops_the_page() {
    let (out, c) = clean_with_good(&["Lorem Ipsum dolor sit amet, consectetur adipiscing."]);
    assert!(out.is_none());
    assert_eq!(c.get(Counter::PagesLoremIpsum), 1);
    assert_eq!(
        c.get(Counter::LinesValid),
        0,
        "stops at the first offending line"
    );
}

#[test]
fn javascript_line_is_dropped() {
    let (out, c) = clean_with_good(&["Please enable JavaScript to view this page."]);
    assert_eq!(c.get(Counter::LinesJavascript), 1);
    assert_eq!(kept_lines(&out).len(), 3);
}

#[test]
fn curly_brace_drops_the_page() {
    let (out, c) = clean_with_good(&[GOOD, "function f() { return a value here; }."]);
    assert!(out.is_none());
    assert_eq!(c.get(Counter::PagesCurlyBrace), 1);
    // The brace rule comes after the word-count rule: a short line with { is harmless.
    let (out, c) = clean_with_good(&["{ tiny }."]);
    assert!(out.is_some());
    assert_eq!(c.get(Counter::LinesTooShort), 1);
}

#[test]
fn policy_lines_are_dropped() {
    for p in [
        "terms of use",
        "privacy policy",
        "cookie policy",
        "uses cookies",
        "use of cookies",
        "use cookies",
    ] {
        let line = format!("Please read our {} before you continue.", p.to_uppercase());
        let (out, c) = clean_with_good(&[&line]);
        assert_eq!(c.get(Counter::LinesPolicy), 1, "{p}");
        assert_eq!(kept_lines(&out).len(), 3, "{p}");
    }
}

#[test]
fn too_few_sentences_drops_the_page() {
    let two = format!("{GOOD}\n{GOOD}");
    let mut c = Counters::default();
    assert!(clean_page(&two, &CleanConfig::TFDS, &mut c).is_none());
    assert_eq!(c.get(Counter::PagesTooFewSentences), 1);
    // One line with three sentences is enough for the code default, not for the paper's 5.
    let three = "The cat sat down. The dog ran off fast. Then it rained all day.";
    let mut c = Counters::default();
    assert_eq!(
        clean_page(three, &CleanConfig::TFDS, &mut c).as_deref(),
        Some(three)
    );
    assert!(clean_page(three, &CleanConfig::PAPER, &mut c).is_none());
    // Abbreviations and decimals do not end sentences: this is one sentence.
    let one = "Dr. J. Smith of the U.S. Navy paid 3.50 dollars, e.g. for tea.";
    let mut c = Counters::default();
    assert!(clean_page(&format!("{one}\n{one}"), &CleanConfig::TFDS, &mut c).is_none());
}

#[test]
fn line_breaks_follow_python_splitlines_and_blank_lines_are_not_counted() {
    let text = format!("{GOOD}\r{GOOD}\u{2028}{GOOD}\u{85}\n\n   \n{GOOD}");
    let mut c = Counters::default();
    let out = clean_page(&text, &CleanConfig::TFDS, &mut c).unwrap();
    assert_eq!(out, [GOOD; 4].join("\n"));
    assert_eq!(c.get(Counter::LinesIn), 4);
    assert_eq!(c.get(Counter::LinesValid), 4);
}

#[test]
fn page_length_limit_counts_code_points() {
    let at_limit = "é".repeat(MAX_PAGE_CHARS);
    assert!(!is_too_long(&at_limit), "190000 code points pass");
    assert!(is_too_long(&(at_limit + "a")), "190001 are dropped");
}

#[test]
fn url_normalisation_matches_the_reference_code() {
    let cases = [
        (
            "https://www.crn.com/news/a-?utm_source=twitter&utm_medium=social",
            "crn.com/news/a-",
        ),
        ("https://crn.com/news/a-//?feed=rss2", "crn.com/news/a-"),
        ("http://www.crn.com/news/a-", "crn.com/news/a-"),
        ("https://crn.com/news/a-/", "crn.com/news/a-"),
        ("https://nj.com/x.html?ref=hackernews", "nj.com/x.html"),
        ("https://x.com/post/?amp=1", "x.com/post/?amp=1"),
        (
            "https://web.archive.org/web/2019/https://www.albawaba.com/n-1",
            "web.archive.org/web/2019/albawaba.com/n-1",
        ),
        ("https://www.example.com/page?id=3", "example.com/page?id=3"),
        ("https://example.com/https-guide", "example.com/https-guide"),
    ];
    for (url, want) in cases {
        assert_eq!(normalize_url(url), want, "{url}");
    }
}

/// The regex the reference compiled, here with the regex crate.
fn reference_regex(words: &[&str]) -> regex::Regex {
    let alts: Vec<String> = words.iter().map(|w| regex::escape(w)).collect();
    regex::Regex::new(&format!(r"(?:\W|^)({})(?:\W|$)", alts.join("|"))).unwrap()
}

#[test]
fn bad_words_match_whole_words_only() {
    let bw = Badwords::new(fisherkit_c4::badwords::TEST_LIST).unwrap();
    assert!(bw.matches("This is a BadWord, sadly."));
    assert!(bw.matches("badword"));
    assert!(bw.matches("a very bad phrase."));
    assert!(bw.matches("(s&m)"));
    assert!(!bw.matches("badwords are plural"));
    assert!(!bw.matches("notabadword here"));
    assert!(!bw.matches("a very bad phrases list"));
    assert!(
        !bw.matches("badword_with_underscore"),
        "_ is a word character"
    );
}

#[test]
fn bad_words_filter_equals_the_reference_regex() {
    // Random texts over an alphabet that makes partial, overlapping and boundary hits
    // frequent; the automaton must agree with the regex on every one.
    let words = ["ass", "ass hat", "sshat", "b@d", "s&m", "ñu", "2g1c", "a"];
    let alphabet: Vec<char> = "asht bd@&m2g1cñu_é.-\n".chars().collect();
    let bw = Badwords::new(&words).unwrap();
    let re = reference_regex(&words);
    let mut state: u64 = 0x9e3779b97f4a7c15;
    let mut matched = 0;
    for _ in 0..20_000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (state >> 59) as usize + 1;
        let text: String = (0..len)
            .map(|i| {
                let r = state.rotate_left(7 * i as u32 + 3)
                    ^ (i as u64).wrapping_mul(0x2545f4914f6cdd1d);
                alphabet[(r % alphabet.len() as u64) as usize]
            })
            .collect();
        let want = re.is_match(&text);
        assert_eq!(bw.matches_lowercased(&text), want, "{text:?}");
        matched += want as usize;
    }
    assert!(
        matched > 1000 && matched < 19_000,
        "the sample exercises both outcomes: {matched}"
    );
}

#[test]
fn real_badwords_list_equals_the_reference_regex_on_real_text() {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/c4-real/badwords-en.txt"
    ));
    let list = std::fs::read_to_string(path).unwrap();
    let words: Vec<&str> = list.lines().filter(|l| !l.trim().is_empty()).collect();
    let bw = Badwords::from_file(path).unwrap();
    let re = reference_regex(&words);
    for text in [
        "a classic text without anything.",
        "the assassin passed the class.",
        "what an ass.",
        "s&m club",
        "🖕 to you",
        "x🖕y",
        "2 girls 1 cup",
        "scunthorpe is a town",
    ] {
        assert_eq!(bw.matches_lowercased(text), re.is_match(text), "{text}");
    }
}
