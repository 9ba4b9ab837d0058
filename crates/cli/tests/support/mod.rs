//! What every CLI test needs: run the built binary with progress bars off, expect a
//! success or a clean failure, and find the shared fixtures.
// Each test file uses its own subset of these.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fisherkit"))
        .args(args)
        .env("FISHERKIT_NO_PROGRESS", "1")
        .output()
        .expect("running the fisherkit binary")
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
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("error: "),
        "fisherkit {args:?}: no error message: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "fisherkit {args:?} panicked: {err}"
    );
    err
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `shared/` sits beside the repository root; worktrees may sit one level deeper.
pub fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared").join(rel))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("shared/{rel} not found"))
}

pub fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}
