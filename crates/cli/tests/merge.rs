//! `fisherkit merge` and `fisherkit fisher inspect` end to end on tiny safetensors
//! files made here, plus bad-input exits.

mod support;

use fisherkit_common::st::{write, OwnedTensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use support::{clean_failure, fails, listing, ok, run_with_file_size_limit, s};

fn model(dir: &Path, name: &str, w: [f32; 3], head: Option<f32>) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let mut t = vec![("body.weight".to_string(), OwnedTensor::f32(vec![3], &w))];
    if let Some(h) = head {
        t.push(("head.weight".to_string(), OwnedTensor::f32(vec![1], &[h])));
    }
    write(&d.join("model.safetensors"), &t, HashMap::new()).unwrap();
    std::fs::write(d.join("config.json"), r#"{"model_type": "tiny"}"#).unwrap();
    std::fs::write(d.join("tokenizer.json"), "{}").unwrap();
    d
}

fn fisher(dir: &Path, name: &str, f: [f32; 3]) -> PathBuf {
    let path = dir.join(name);
    let meta = fisherkit_merge::FisherMeta {
        examples: 16,
        mode: fisherkit_merge::FisherMode::Exact,
        data_hash: "cafe".into(),
        seed: 3,
        model: Some(name.into()),
        extra: BTreeMap::new(),
    };
    fisherkit_merge::write_fisher(&path, &[("body.weight".into(), vec![3], f.to_vec())], &meta)
        .unwrap();
    path
}

#[test]
fn flag_form_fisher_merge_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let a = model(p, "a", [1.0, 2.0, 3.0], Some(10.0));
    let b = model(p, "b", [5.0, 6.0, 7.0], Some(20.0));
    let fa = fisher(p, "fa.safetensors", [1.0, 1.0, 0.0]);
    let fb = fisher(p, "fb.safetensors", [3.0, 0.0, 0.0]);
    let out = p.join("merged");
    let stdout = ok(&[
        "merge",
        "--method",
        "fisher",
        "--model",
        s(&a),
        "--fisher",
        s(&fa),
        "--model",
        s(&b),
        "--fisher",
        s(&fb),
        "--weight",
        "0.5",
        "--weight",
        "0.5",
        "--exclude",
        "^head\\.",
        "--out",
        s(&out),
    ]);
    assert!(stdout.contains("merged 1 tensors, copied 1"), "{stdout}");
    let ck = fisherkit_merge::checkpoint::Checkpoint::open(&out).unwrap();
    // (1·1+3·5)/4 = 4; F_b = 0 → ≈ a's 2 (plus a's 1·…); both 0 → a's 3 (floor).
    let body = ck.read_f32("body.weight").unwrap().1;
    assert!(
        (body[0] - 4.0).abs() < 1e-6 && (body[1] - 2.0).abs() < 1e-6 && body[2] == 3.0,
        "{body:?}"
    );
    assert_eq!(ck.read_f32("head.weight").unwrap().1, vec![10.0]);
    for f in [
        "config.json",
        "tokenizer.json",
        "mergekit_config.yml",
        "merge_report.json",
    ] {
        assert!(out.join(f).is_file(), "{f} in output");
    }
    // The saved recipe reproduces the merge.
    let again = p.join("again");
    ok(&[
        "merge",
        s(&out.join("mergekit_config.yml")),
        "--out",
        s(&again),
    ]);
    let ck2 = fisherkit_merge::checkpoint::Checkpoint::open(&again).unwrap();
    assert_eq!(ck2.read_f32("body.weight").unwrap().1, body);
    // The output exists now: refused, then replaced with --force.
    let err = fails(&[
        "merge",
        s(&out.join("mergekit_config.yml")),
        "--out",
        s(&again),
    ]);
    assert!(err.contains("already exists"), "{err}");
    ok(&[
        "merge",
        s(&out.join("mergekit_config.yml")),
        "--out",
        s(&again),
        "--force",
    ]);
}

#[test]
fn recipe_form_ties_with_shards() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let base = model(p, "base", [0.0, 0.0, 0.0], None);
    let a = model(p, "a", [3.0, -1.0, 0.5], None);
    let b = model(p, "b", [-2.0, 4.0, 0.25], None);
    let recipe = p.join("ties.yml");
    std::fs::write(
        &recipe,
        format!(
            "merge_method: ties\nbase_model: {}\nmodels:\n  - model: {}\n    parameters: {{weight: 1, density: 0.67}}\n  - model: {}\n    parameters: {{weight: 1, density: 0.67}}\nparameters:\n  normalize: true\n  int8_mask: true\ndtype: float32\n",
            s(&base), s(&a), s(&b)
        ),
    )
    .unwrap();
    let out = p.join("out");
    ok(&[
        "merge",
        s(&recipe),
        "--out",
        s(&out),
        "--max-shard-size",
        "8",
    ]);
    // k = ⌊0.67·3⌋ = 2: a keeps [3, −1, ·], b keeps [−2, 4, ·]; signs: + (1), + (3), none.
    let ck = fisherkit_merge::checkpoint::Checkpoint::open(&out).unwrap();
    assert_eq!(ck.read_f32("body.weight").unwrap().1, vec![3.0, 4.0, 0.0]);
}

#[test]
fn fisher_inspect_prints_metadata_and_stats() {
    let d = tempfile::tempdir().unwrap();
    let f = fisher(d.path(), "f.safetensors", [0.0, 3.0, 4.0]);
    let text = ok(&["fisher", "inspect", s(&f)]);
    assert!(
        text.contains("examples 16")
            && text.contains("mode exact")
            && text.contains("data_hash cafe"),
        "{text}"
    );
    assert!(
        text.contains("body.weight") && text.contains("5.0000e0"),
        "L2 norm 5 shown: {text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["fisher", "inspect", s(&f), "--json"])).unwrap();
    assert_eq!(json["total"]["zeros"], 1);
    assert_eq!(json["seed"], 3);
    let err = fails(&["fisher", "inspect", s(&d.path().join("nope.safetensors"))]);
    assert!(err.contains("nope.safetensors"), "{err}");
}

#[test]
fn weights_grid_lists_candidates_without_writing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let a = model(p, "a", [1.0, 2.0, 3.0], None);
    let b = model(p, "b", [5.0, 6.0, 7.0], None);
    let out = ok(&[
        "merge",
        "--method",
        "linear",
        "--model",
        s(&a),
        "--model",
        s(&b),
        "--weights-grid",
        "1:0:0.02",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 51);
    assert_eq!(lines[1], r#"{"weights":[0.98,0.02]}"#);
}

#[test]
fn bad_inputs_exit_with_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let a = model(p, "a", [1.0, 2.0, 3.0], Some(1.0));
    let b = model(p, "b", [5.0, 6.0, 7.0], None);
    let c = model(p, "c", [5.0, f32::NAN, 7.0], Some(1.0));
    let out = p.join("out");
    let base = ["merge", "--method", "linear", "--model", s(&a)];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", s(&out)]);
        fails(&args)
    };
    let err = run(&["--model", s(&c)]);
    assert!(
        err.contains("tensor body.weight") && err.contains("non-finite"),
        "{err}"
    );
    let err = run(&["--model", s(&b), "--weight", "1", "--weight", "-1"]);
    assert!(err.contains("negative"), "{err}");
    let err = run(&["--model", s(&b), "--weight", "0", "--weight", "0"]);
    assert!(err.contains("all weights are zero"), "{err}");
    let err = run(&["--model", s(&b), "--weight", "1"]);
    assert!(err.contains("--weight given 1 times for 2"), "{err}");
    let err = run(&["--model", s(&p.join("missing"))]);
    assert!(err.contains("missing") && err.contains("no such"), "{err}");
    let f = fisher(p, "f.safetensors", [1.0, 1.0, 1.0]);
    let err = fails(&[
        "merge",
        "--method",
        "fisher",
        "--model",
        s(&a),
        "--fisher",
        s(&f),
        "--model",
        s(&b),
        "--fisher",
        s(&a.join("model.safetensors")),
        "--out",
        s(&out),
    ]);
    assert!(err.contains("not a fisherkit Fisher file"), "{err}");
    assert!(!out.exists(), "no partial output after failures");
    let err = fails(&["merge", s(&p.join("no.yml")), "--out", s(&out)]);
    assert!(err.contains("no.yml"), "{err}");
}

/// A full disk mid-merge (simulated by a file-size cap on the process) fails with a
/// clear error, leaves no partial output or staging directory, and a `--force` rerun
/// that fails keeps the previous complete output untouched.
#[test]
fn disk_full_leaves_no_partial_output() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let checkpoint = |name: &str, v: f32| {
        let dir = p.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let tensors = vec![
            (
                "a.small".to_string(),
                OwnedTensor::f32(vec![100], &[v; 100]),
            ),
            (
                "b.large".to_string(),
                OwnedTensor::f32(vec![40_000], &vec![v; 40_000]),
            ),
        ];
        write(&dir.join("model.safetensors"), &tensors, HashMap::new()).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"model_type": "tiny"}"#).unwrap();
        dir
    };
    let (a, b) = (checkpoint("a", 1.0), checkpoint("b", 3.0));
    let out = p.join("merged");
    let args = |weight_a: &str| -> Vec<String> {
        [
            "merge",
            "--method",
            "linear",
            "--model",
            s(&a),
            "--weight",
            weight_a,
            "--model",
            s(&b),
            "--weight",
            "0.5",
            "--out",
            s(&out),
            "--max-shard-size",
            "10KB",
            "--force",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    // The small tensor's shard fits under the 64 KB cap, the large one's (160 KB) does not.
    let before = listing(p);
    let err = clean_failure(&run_with_file_size_limit(&args("0.5"), 64 << 10));
    assert!(
        err.contains("model-00002-of-00002.safetensors") && err.contains("File too large"),
        "{err}"
    );
    assert_eq!(
        listing(p),
        before,
        "no output and no staging directory left"
    );

    ok(&args("0.5"));
    let complete = listing(&out);
    let shard_bytes: Vec<Vec<u8>> = complete
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    let mut with_output = before.clone();
    with_output.push("merged".into());
    with_output.sort();
    clean_failure(&run_with_file_size_limit(&args("0.25"), 64 << 10));
    assert_eq!(
        listing(p),
        with_output,
        "only the old output, no staging directory"
    );
    for (f, bytes) in complete.iter().zip(&shard_bytes) {
        assert_eq!(&std::fs::read(out.join(f)).unwrap(), bytes, "{f} changed");
    }
}
