//! What every CLI test needs: run the built binary with progress bars off, expect a
//! success or a clean failure, and find the shared fixtures.
// Each test file uses its own subset of these.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fisherkit<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fisherkit"));
    cmd.args(args).env("FISHERKIT_NO_PROGRESS", "1");
    cmd
}

pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    fisherkit(args)
        .output()
        .expect("running the fisherkit binary")
}

/// Run with every file the process writes capped at `bytes` (RLIMIT_FSIZE, SIGXFSZ
/// ignored): a write past the cap fails with EFBIG, as a write on a full disk fails
/// with ENOSPC. Unlike a read-only directory this also bites when tests run as root.
pub fn run_with_file_size_limit<S: AsRef<OsStr>>(args: &[S], bytes: u64) -> Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = fisherkit(args);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("running the fisherkit binary")
}

/// The failure of a run that must fail cleanly (an `error:` line, no panic).
pub fn clean_failure(out: &Output) -> String {
    assert!(!out.status.success(), "the run should fail");
    let err = stderr(out);
    assert!(err.contains("error: "), "no error message: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    err
}

/// Names in a directory, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Run a command that must succeed; return its stdout.
pub fn ok<S: AsRef<OsStr> + Debug>(args: &[S]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "fisherkit {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Run a command that must fail cleanly (an `error:` line, no panic); return its stderr.
pub fn fails<S: AsRef<OsStr> + Debug>(args: &[S]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "fisherkit {args:?} should fail");
    clean_failure(&out)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The repository's test data (`testdata/`: fixtures and real WET files, each with its
/// provenance).
pub fn testdata(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata")).join(rel)
}

pub fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A copy of the tiny T5 fixture in `dir`/model with a word-level tokenizer (`yes no
/// maybe a b c d`), so label strings and text data can be used with it.
pub fn model_with_tokenizer(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(testdata("fixtures/t5-tiny-v10").join(f), model.join(f)).unwrap();
    }
    let mut vocab = String::from("\"<pad>\": 0, \"</s>\": 1, \"<unk>\": 2");
    for (i, w) in ["yes", "no", "maybe", "a", "b", "c", "d"]
        .iter()
        .enumerate()
    {
        vocab.push_str(&format!(", \"{w}\": {}", 3 + i));
    }
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null,
        "decoder": null, "model": {{"type": "WordLevel", "vocab": {{{vocab}}}, "unk_token": "<unk>"}}}}"#
    );
    std::fs::write(model.join("tokenizer.json"), json).unwrap();
    model
}
