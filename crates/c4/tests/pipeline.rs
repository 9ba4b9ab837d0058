//! The WET reader on synthetic files (including malformed and truncated ones) and the
//! whole pipeline: round trip, determinism, resume, and the real test files.

use fisherkit_c4::counters::PAGE_DROPS;
use fisherkit_c4::wet::{self, Item, Record};
use fisherkit_c4::{run, Badwords, Counter, Counters, DedupMode, Options, RunConfig};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

fn page(url: &str, date: &str, text: &str) -> Record {
    Record {
        warc_type: "conversion".into(),
        url: Some(url.into()),
        date: Some(date.into()),
        body: text.as_bytes().to_vec(),
    }
}

fn warcinfo() -> Record {
    Record {
        warc_type: "warcinfo".into(),
        url: None,
        date: Some("2019-04-26T00:00:00Z".into()),
        body: b"software: test\r\n".to_vec(),
    }
}

fn write(path: &Path, records: &[Record]) -> PathBuf {
    let mut f = std::fs::File::create(path).unwrap();
    wet::write_wet(&mut f, records).unwrap();
    path.to_path_buf()
}

fn read_items(path: &Path) -> Vec<Item> {
    let z = || Arc::new(AtomicU64::new(0));
    wet::open(path, z(), z()).unwrap().collect()
}

fn records(items: &[Item]) -> Vec<&Record> {
    items
        .iter()
        .filter_map(|i| {
            if let Item::Record(r) = i {
                Some(r)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn wet_round_trip_with_non_utf8_and_odd_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let mut bodies = vec![
        warcinfo(),
        page(
            "https://a.example/1",
            "2019-04-20T00:00:00Z",
            "Hello.\nWARC/1.0 inside a body.\n",
        ),
    ];
    bodies.push(Record {
        body: vec![b'x', 0xff, 0xfe, b'y'],
        ..page("https://a.example/2", "d", "")
    });
    bodies.push(page("https://a.example/3", "d", ""));
    let path = write(&dir.path().join("a.warc.wet.gz"), &bodies);
    let items = read_items(&path);
    assert_eq!(records(&items), bodies.iter().collect::<Vec<_>>());
}

#[test]
fn wet_reader_skips_malformed_records_and_stops_at_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let good = page(
        "https://a.example/ok",
        "2019-04-20T00:00:00Z",
        "Fine text here.",
    );
    // A record without Content-Length, garbage between records, then a good record.
    let mut raw = Vec::new();
    wet::write_wet(&mut raw, std::slice::from_ref(&good)).unwrap();
    let mut member = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(
        &mut member,
        b"WARC/1.0\r\nWARC-Type: conversion\r\n\r\nbody without length\r\n\r\njunk line\r\n",
    )
    .unwrap();
    raw.extend(member.finish().unwrap());
    wet::write_wet(&mut raw, &[good.clone(), good.clone()]).unwrap();
    let path = dir.path().join("m.warc.wet.gz");
    std::fs::write(&path, &raw).unwrap();
    let items = read_items(&path);
    assert_eq!(records(&items).len(), 3);
    let malformed = items
        .iter()
        .filter(|i| matches!(i, Item::Malformed(_)))
        .count();
    assert_eq!(malformed, 1, "{items:?}");

    // Cut the file inside the last gzip member: the first two records survive.
    std::fs::write(&path, &raw[..raw.len() - 40]).unwrap();
    let items = read_items(&path);
    assert_eq!(records(&items).len(), 2);
    assert!(
        matches!(items.last(), Some(Item::Truncated(_))),
        "{items:?}"
    );
}

#[test]
fn wet_reader_refuses_non_gzip_and_accepts_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.warc.wet.gz");
    std::fs::write(&plain, b"WARC/1.0\r\n").unwrap();
    let z = || Arc::new(AtomicU64::new(0));
    let err = wet::open(&plain, z(), z()).err().unwrap();
    assert!(format!("{err:#}").contains("not gzip"), "{err:#}");
    let empty = dir.path().join("empty.warc.wet.gz");
    std::fs::write(&empty, b"").unwrap();
    assert!(read_items(&empty).is_empty());
}

const S1: &str = "The harbour was quiet before the storm arrived.";
const S2: &str = "Fishermen pulled their boats far onto the beach.";
const S3: &str = "Nobody expected the waves to reach the old church.";
const S4: &str = "The mayor later thanked the volunteers for their help.";
const S5: &str = "Repairs to the sea wall will start in the spring.";

/// A small corpus exercising every page-level rule, spread over three files.
fn corpus(dir: &Path) -> Vec<PathBuf> {
    let article = [S1, S2, S3, S4].join("\n");
    let files = [
        vec![
            warcinfo(),
            page("https://www.news.example/storm", "2019-04-18T00:00:00Z", &[S1, S2, S3].join("\n")),
            page("http://blog.example/copy", "2019-04-19T00:00:00Z", &format!("{article}\n{S5}\n{S5}")),
            page("https://lorem.example/", "2019-04-19T00:00:00Z", &format!("{article}\nLorem ipsum dolor sit amet, consectetur.")),
        ],
        vec![
            page("https://news.example/storm/?utm_source=x", "2019-04-20T00:00:00Z", &article),
            page("https://bad.example/", "2019-04-19T00:00:00Z", &format!("{article}\nThis story is a badword in our opinion.")),
            page("https://de.example/", "2019-04-19T00:00:00Z", "Der Hafen war vor dem Sturm ganz ruhig und still.\nDie Fischer zogen ihre Boote weit auf den Strand.\nNiemand hatte erwartet, dass die Wellen die Kirche erreichen."),
            page("https://empty.example/", "2019-04-19T00:00:00Z", "  \n "),
        ],
        vec![page("https://short.example/", "2019-04-19T00:00:00Z", "Too short.\nStill short.")],
    ];
    files
        .iter()
        .enumerate()
        .map(|(i, recs)| write(&dir.join(format!("f{i}.warc.wet.gz")), recs))
        .collect()
}

fn config(inputs: Vec<PathBuf>, out: PathBuf, workers: usize) -> RunConfig {
    RunConfig {
        inputs,
        out,
        options: Options::default(),
        badwords: Some(Badwords::new(fisherkit_c4::badwords::TEST_LIST).unwrap()),
        workers,
        memory_mb: 64,
        force: false,
        max_files: None,
    }
}

/// Every output file's decompressed bytes, by name (stats.json timing excluded).
fn outputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".jsonl.gz") {
            let mut bytes = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap())
                .read_to_end(&mut bytes)
                .unwrap();
            out.insert(name, bytes);
        }
    }
    out
}

fn pages_out(dir: &Path) -> Vec<serde_json::Value> {
    outputs(dir)
        .values()
        .flat_map(|b| {
            String::from_utf8(b.clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_balanced(c: &Counters) {
    let dropped: u64 = PAGE_DROPS.iter().map(|d| c.get(*d)).sum();
    assert_eq!(
        c.get(Counter::PagesIn),
        dropped + c.get(Counter::PagesOut),
        "{c:?}"
    );
    assert_eq!(
        c.get(Counter::PagesOut),
        c.get(Counter::PagesTrain) + c.get(Counter::PagesValidation)
    );
}

#[test]
fn synthetic_corpus_goes_through_every_rule() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = corpus(dir.path());
    let out = dir.path().join("out");
    let s = run(&config(inputs, out.clone(), 2)).unwrap();
    let c = &s.counters;
    assert_balanced(c);
    assert_eq!(c.get(Counter::PagesIn), 8);
    assert_eq!(c.get(Counter::RecordsNotConversion), 1);
    assert_eq!(c.get(Counter::PagesNoContent), 1);
    assert_eq!(c.get(Counter::PagesDuplicateUrl), 1);
    assert_eq!(c.get(Counter::PagesLoremIpsum), 1);
    assert_eq!(c.get(Counter::PagesBadwords), 1);
    assert_eq!(c.get(Counter::PagesTooFewSentences), 1);
    assert_eq!(c.get(Counter::PagesNotEnglish), 1);
    assert_eq!(
        c.get(Counter::LinesDuplicateInPage),
        1,
        "S5 repeated in the blog copy"
    );
    let pages = pages_out(&out);
    assert_eq!(pages.len(), 1, "{pages:?}");
    // The newest spelling of the storm URL won; its lines are shared with the blog copy,
    // so exactly one of the two pages keeps them: the one with the smaller
    // md5(lower-cased normalised URL).
    let key = |u: &str| {
        u128::from_str_radix(
            &format!("{:x}", md5_of(&fisherkit_c4::normalize_url(u))),
            16,
        )
        .unwrap()
    };
    let storm = "https://news.example/storm/?utm_source=x";
    let blog = "http://blog.example/copy";
    let (keeper, loser) = if key(storm) < key(blog) {
        (storm, blog)
    } else {
        (blog, storm)
    };
    let text_of = |u: &str| {
        pages
            .iter()
            .find(|p| p["url"] == u)
            .map(|p| p["text"].as_str().unwrap().to_string())
    };
    let kept = text_of(keeper).expect("the keeper survives");
    assert!(kept.starts_with(&[S1, S2, S3, S4].join("\n")), "{kept}");
    if loser == blog {
        // The blog copy is left with one unique line: fewer than three sentences.
        assert_eq!(text_of(blog), None);
        assert_eq!(c.get(Counter::PagesDedupTooFewSentences), 1);
        assert_eq!(c.get(Counter::LinesDuplicate), 4);
    } else {
        assert_eq!(text_of(storm), None);
        assert_eq!(c.get(Counter::PagesDedupEmpty), 1);
    }
    for p in &pages {
        assert_eq!(p.as_object().unwrap().len(), 3);
        assert!(p["timestamp"].as_str().unwrap().starts_with("2019-04-"));
    }
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["totals"]["pages_balance_ok"], true);
    assert_eq!(stats["counters"]["pages-out"], 1);
    assert!(!out.join(".c4-work").exists(), "work files removed");
}

fn md5_of(s: &str) -> u128 {
    use md5::Digest;
    u128::from_be_bytes(md5::Md5::digest(s.as_bytes()).into())
}

#[test]
fn output_is_identical_for_any_worker_count_and_input_layout() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = corpus(dir.path());
    let a = dir.path().join("a");
    run(&config(inputs.clone(), a.clone(), 1)).unwrap();
    // Same records, re-packed in a different order into different files.
    let mut all: Vec<Record> = Vec::new();
    for p in &inputs {
        all.extend(records(&read_items(p)).into_iter().cloned());
    }
    all.reverse();
    let repacked: Vec<PathBuf> = all
        .chunks(2)
        .enumerate()
        .map(|(i, recs)| write(&dir.path().join(format!("z{i}.warc.wet.gz")), recs))
        .collect();
    let b = dir.path().join("b");
    let mut cfg = config(repacked.into_iter().rev().collect(), b.clone(), 3);
    cfg.memory_mb = 16;
    run(&cfg).unwrap();
    assert_eq!(outputs(&a), outputs(&b));
    assert!(!outputs(&a).is_empty());
}

#[test]
fn span3_mode_removes_repeated_three_sentence_spans() {
    let dir = tempfile::tempdir().unwrap();
    let shared = format!("{S1} {S2} {S3}");
    let files = [
        write(&dir.path().join("a.warc.wet.gz"), &[page("https://a.example/", "d", &format!("{shared}\n{S4} {S5} {S1}"))]),
        write(&dir.path().join("b.warc.wet.gz"), &[page("https://b.example/", "d", &format!("{shared}\nThe baker sold bread. The baker sold cakes too. The baker went home early."))]),
    ];
    let out = dir.path().join("out");
    let mut cfg = config(files.to_vec(), out.clone(), 2);
    cfg.options.dedup = DedupMode::Span3;
    let s = run(&cfg).unwrap();
    assert_balanced(&s.counters);
    let pages = pages_out(&out);
    let with_shared = pages
        .iter()
        .filter(|p| p["text"].as_str().unwrap().contains(&shared))
        .count();
    assert_eq!(with_shared, 1, "{pages:?}");
    assert_eq!(s.counters.get(Counter::SentencesDuplicate), 3);
}

#[test]
fn rerun_refuses_a_finished_dir_and_resumes_an_unfinished_one() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = corpus(dir.path());
    let whole = dir.path().join("whole");
    let once = run(&config(inputs.clone(), whole.clone(), 2)).unwrap();
    let err = run(&config(inputs.clone(), whole.clone(), 2)).unwrap_err();
    assert!(
        format!("{err:#}").contains("already holds a finished run"),
        "{err:#}"
    );

    let out = dir.path().join("out");
    let mut cfg = config(inputs.clone(), out.clone(), 2);
    cfg.max_files = Some(1);
    let first = run(&cfg).unwrap();
    assert!(!first.complete);
    // Different options are refused while the run is unfinished.
    let mut other = config(inputs.clone(), out.clone(), 2);
    other.options.clean.min_sentences = 4;
    let err = run(&other).unwrap_err();
    assert!(format!("{err:#}").contains("different options"), "{err:#}");
    let second = run(&cfg).unwrap();
    assert!(!second.complete);
    assert_eq!(second.resumed_files, 1);
    cfg.max_files = None;
    let last = run(&cfg).unwrap();
    assert!(last.complete);
    assert_eq!(last.resumed_files, 2);
    assert_eq!(last.counters, once.counters);
    assert_eq!(outputs(&out), outputs(&whole));
}

#[test]
fn bad_files_are_counted_and_the_run_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = corpus(dir.path());
    let plain = dir.path().join("plain.warc.wet.gz");
    std::fs::write(&plain, "WARC/1.0\nnot compressed\n").unwrap();
    let empty = dir.path().join("empty.warc.wet.gz");
    std::fs::write(&empty, "").unwrap();
    let truncated = dir.path().join("cut.warc.wet.gz");
    let bytes = std::fs::read(&inputs[0]).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let latin1 = dir.path().join("latin1.warc.wet.gz");
    let mut body = [S1, S2, S3].join("\n").into_bytes();
    body.extend(b"\nCaf\xe9 au lait is served here all day long.");
    let no_url = Record {
        url: None,
        ..page("", "d", S1)
    };
    write(
        &latin1,
        &[
            Record {
                body,
                ..page("https://latin1.example/", "d", "")
            },
            no_url,
        ],
    );
    inputs.extend([plain.clone(), empty.clone(), truncated, latin1]);
    let s = run(&config(inputs, dir.path().join("out"), 2)).unwrap();
    assert_eq!(s.counters.get(Counter::FilesIn), 7);
    assert_eq!(s.counters.get(Counter::PagesInvalidUtf8), 1);
    assert_eq!(s.counters.get(Counter::Utf8Replacements), 1);
    assert_eq!(
        s.counters.get(Counter::RecordsMalformed),
        1,
        "conversion without a URL"
    );
    assert_eq!(s.counters.get(Counter::FilesNotGzip), 1);
    assert_eq!(s.counters.get(Counter::FilesTruncated), 1);
    assert_balanced(&s.counters);
    // Nothing valid at all is an error.
    let err = run(&config(vec![plain, empty], dir.path().join("none"), 1)).unwrap_err();
    assert!(
        format!("{err:#}").contains("no page could be read"),
        "{err:#}"
    );
}

/// The repository's test data (`testdata/`, copied from the fixtures' sources with
/// provenance).
fn testdata(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata")).join(rel)
}

#[test]
fn real_wet_files_sanity() {
    let dir = tempfile::tempdir().unwrap();
    let real = testdata("c4-real");
    let inputs: Vec<PathBuf> = (0..3)
        .map(|i| real.join(format!("c4test-{i:05}.warc.wet.gz")))
        .collect();
    let out = dir.path().join("out");
    let mut cfg = config(inputs, out.clone(), 2);
    cfg.badwords = Some(Badwords::from_file(&real.join("badwords-en.txt")).unwrap());
    let s = run(&cfg).unwrap();
    let c = &s.counters;
    assert_balanced(c);
    assert_eq!(c.get(Counter::PagesIn), 551);
    assert_eq!(
        c.get(Counter::PagesNoContent),
        2,
        "empty and whitespace-only bodies"
    );
    assert_eq!(
        c.get(Counter::PagesTooLong),
        1,
        "190001 code points dropped, 190000 kept"
    );
    assert!(
        c.get(Counter::PagesDuplicateUrl) >= 5,
        "URL variants collapse: {c:?}"
    );
    let pages = pages_out(&out);
    assert_eq!(pages.len() as u64, c.get(Counter::PagesOut));
    let urls: Vec<&str> = pages.iter().map(|p| p["url"].as_str().unwrap()).collect();
    // One page per normalised URL, and the newest spelling wins.
    let norm: HashSet<String> = urls
        .iter()
        .map(|u| fisherkit_c4::normalize_url(u))
        .collect();
    assert_eq!(norm.len(), urls.len());
    let crn: Vec<&&str> = urls
        .iter()
        .filter(|u| u.contains("tim-cook-on-apple"))
        .collect();
    assert!(
        crn.len() <= 1 && crn.iter().all(|u| u.contains("utm_source=twitter")),
        "{crn:?}"
    );
    let nj: Vec<&&str> = urls
        .iter()
        .filter(|u| u.contains("florida-man-exists"))
        .collect();
    assert!(nj.iter().all(|u| !u.contains("?ref=")), "{nj:?}");
    // No line appears twice in the corpus (lower-cased), every line passes the line rules,
    // no page holds a bad word, and the split follows md5(normalised url) % 1000.
    let bw = cfg.badwords.as_ref().unwrap();
    let mut lines = HashSet::new();
    for p in &pages {
        let text = p["text"].as_str().unwrap();
        assert!(!bw.matches(text));
        for line in text.split('\n') {
            assert!(lines.insert(line.to_lowercase()), "duplicate line {line:?}");
            assert!(line.ends_with(['.', '?', '!', '"']) && !line.ends_with("..."));
            assert!(line.split_whitespace().count() >= 5);
        }
    }
    let validation = urls
        .iter()
        .filter(|u| md5_of(&fisherkit_c4::normalize_url(u)).is_multiple_of(1000))
        .count();
    assert_eq!(validation as u64, c.get(Counter::PagesValidation));
    // Most of the ~315 English source pages survive; no German/Spanish page does.
    assert!((150..=315).contains(&pages.len()), "{}", pages.len());
    assert!(
        !urls
            .iter()
            .any(|u| u.ends_with("/brief-1000") || u.ends_with("/brief-1001")),
        "S9 pages"
    );
}
