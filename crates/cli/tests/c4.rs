//! `fisherkit c4 clean` from the command line: a real run, and bad input giving a
//! non-zero exit with a clear message.

mod support;

use support::{run, stderr, testdata};

#[test]
fn clean_runs_on_a_real_file_then_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let input = testdata("c4-real/c4test-00002.warc.wet.gz");
    let badwords = testdata("c4-real/badwords-en.txt");
    let args = [
        "c4",
        "clean",
        "--input",
        input.to_str().unwrap(),
        "--badwords",
        badwords.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--workers",
        "2",
        "--partitions",
        "2",
        "--compression",
        "zstd",
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
    let pages_out = stats["counters"]["pages-out"].as_u64().unwrap();
    assert!(pages_out > 50, "{stats}");
    assert_eq!(stats["totals"]["pages_balance_ok"], true);
    assert!(out.join("train-00001.jsonl.zst").exists());
    assert!(
        stderr(&o).contains(&format!("{pages_out} out")),
        "{}",
        stderr(&o)
    );
    let again = run(&args);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already holds a finished run"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn missing_badwords_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = testdata("c4-real/c4test-00000.warc.wet.gz");
    let o = run(&[
        "c4",
        "clean",
        "--input",
        input.to_str().unwrap(),
        "--badwords",
        "/nonexistent/bad.txt",
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("reading the bad-words list /nonexistent/bad.txt"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn non_gzip_input_alone_fails_and_missing_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("x.warc.wet.gz");
    std::fs::write(&plain, "WARC/1.0\nplain text\n").unwrap();
    let out = dir.path().join("o");
    let o = run(&[
        "c4",
        "clean",
        "--input",
        plain.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-lang-filter",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("is not gzip-compressed"), "{err}");
    assert!(
        err.contains("no page could be read from 1 input file(s): 1 not gzip"),
        "{err}"
    );
    let o = run(&[
        "c4",
        "clean",
        "--input",
        "/nope/*.wet.gz",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no input file matches"),
        "{}",
        stderr(&o)
    );
}
