//! Progress bars with one look across commands. Hidden when stderr is not a terminal
//! or when `FISHERKIT_NO_PROGRESS` is set, so logs and tests stay clean.

use indicatif::{ProgressBar, ProgressStyle};

fn hidden() -> bool {
    std::env::var_os("FISHERKIT_NO_PROGRESS").is_some()
}

/// A bar over `len` units of `unit` (e.g. "steps", "pages") with rate and ETA.
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    if hidden() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
        ))
        .expect("valid template"),
    );
    pb
}

/// A spinner for work of unknown length.
pub fn spinner(unit: &str) -> ProgressBar {
    if hidden() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{pos}} {unit} ({{per_sec}}) {{msg}}"
        ))
        .expect("valid template"),
    );
    pb
}
