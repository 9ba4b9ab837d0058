//! CLI behaviour of `tasks`, `tokenizer`, `eval` and `train`.

mod support;

use std::path::Path;
use support::{clean_failure, listing, ok, run as fisherkit, run_with_file_size_limit, s as p};

#[test]
fn synthetic_suite_is_deterministic_and_formats_work() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        ok(&[
            "tasks",
            "synthetic",
            "--out",
            p(d),
            "--seed",
            "3",
            "--train-size",
            "50",
            "--valid-size",
            "5",
            "--test-size",
            "20",
        ]);
    }
    for task in ["copy", "reverse", "count", "add"] {
        let fa = std::fs::read(a.join(task).join("train.jsonl")).unwrap();
        assert_eq!(fa, std::fs::read(b.join(task).join("train.jsonl")).unwrap());
        assert_eq!(String::from_utf8(fa).unwrap().lines().count(), 50);
    }
    // Existing output is refused without --force.
    assert!(!fisherkit(&["tasks", "synthetic", "--out", p(&a)])
        .status
        .success());

    let raw = dir.path().join("rte.jsonl");
    std::fs::write(
        &raw,
        "{\"sentence1\":\"A.\",\"sentence2\":\"B.\",\"label\":1}\n",
    )
    .unwrap();
    let out = dir.path().join("rte_t2t.jsonl");
    let format_rte = [
        "tasks",
        "format",
        "--task",
        "rte",
        "--input",
        p(&raw),
        "--out",
        p(&out),
    ];
    ok(&format_rte);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        r#"{"input":"rte sentence1: A. sentence2: B.","target":"not_entailment"}"#
    );
    std::fs::write(
        &raw,
        "{\"sentence1\":\"A.\",\"sentence2\":\"B.\",\"label\":1}\nnot json\n",
    )
    .unwrap();
    let bad = fisherkit(&format_rte);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("rte.jsonl:2"));
}

#[test]
fn eval_scores_given_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    let preds = dir.path().join("p.jsonl");
    std::fs::write(&data, "{\"input\":\"x\",\"target\":\"yes\"}\n{\"input\":\"y\",\"target\":\"no\"}\n{\"input\":\"z\",\"target\":\"yes\"}\n").unwrap();
    std::fs::write(
        &preds,
        "{\"prediction\":\"yes\"}\n{\"prediction\":\"yes\"}\n{\"prediction\":\"maybe\"}\n",
    )
    .unwrap();
    let out = ok(&[
        "eval",
        "--data",
        p(&data),
        "--predictions",
        p(&preds),
        "--metrics",
        "accuracy,exact-match",
        "--labels",
        "no,yes",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!((v["metrics"]["accuracy"].as_f64().unwrap() - 100.0 / 3.0).abs() < 1e-9);
    assert_eq!(v["invalid_predictions"], 1);
    std::fs::write(&preds, "{\"prediction\":\"yes\"}\n").unwrap();
    assert!(
        !fisherkit(&["eval", "--data", p(&data), "--predictions", p(&preds)])
            .status
            .success()
    );
}

#[test]
fn tokenizer_then_train_then_eval() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("suite");
    ok(&[
        "tasks",
        "synthetic",
        "--out",
        p(&suite),
        "--tasks",
        "copy",
        "--train-size",
        "64",
        "--valid-size",
        "8",
        "--test-size",
        "8",
    ]);
    let tok = dir.path().join("tok.json");
    let train = suite.join("copy/train.jsonl");
    ok(&[
        "tokenizer",
        "train",
        "--input",
        p(&train),
        "--vocab-size",
        "160",
        "--out",
        p(&tok),
    ]);
    let tk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tok).unwrap()).unwrap();
    assert_eq!(tk["model"]["vocab"][1][0], "</s>");

    let model = dir.path().join("model");
    ok(&[
        "init",
        "--preset",
        "tiny",
        "--seed",
        "0",
        "--tokenizer",
        p(&tok),
        "--out",
        p(&model),
    ]);
    let run = dir.path().join("run");
    let valid = suite.join("copy/valid.jsonl");
    ok(&[
        "train",
        "--model",
        p(&model),
        "--train",
        p(&train),
        "--valid",
        p(&valid),
        "--out",
        p(&run),
        "--optimizer",
        "adamw",
        "--lr",
        "1e-3",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--log-every",
        "1",
    ]);
    assert!(run.join("model/config.json").exists() && run.join("model/tokenizer.json").exists());
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("\"grad_norm\"")).count(),
        3
    );
    assert!(log.contains("valid_exact-match"));

    let out = ok(&[
        "eval",
        "--model",
        p(&run.join("model")),
        "--data",
        p(&suite.join("copy/test.jsonl")),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["examples"], 8);
    assert!(v["metrics"]["exact-match"].as_f64().is_some());

    // --stop-after then --resume ends with the same weights as one uninterrupted run
    // (dropout 0.1, token batching, Adafactor with a first moment: all state restored).
    let run_args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--model",
            p(&model),
            "--train",
            p(&train),
            "--out",
            p(out),
            "--steps",
            "4",
            "--max-tokens",
            "200",
            "--beta1",
            "0.9",
            "--dropout",
            "0.1",
            "--checkpoint-every",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let whole = dir.path().join("whole");
    ok(&run_args(&whole, &[]));
    let halves = dir.path().join("halves");
    ok(&run_args(&halves, &["--stop-after", "2"]));
    assert!(
        !halves.join("model").exists(),
        "no final model after --stop-after"
    );
    // Without --resume an existing run is not overwritten.
    let refused = fisherkit(&run_args(&halves, &[]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    // Different settings are refused on resume.
    let refused = fisherkit(&run_args(&halves, &["--resume", "--seed", "5"]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("different settings"));
    ok(&run_args(&halves, &["--resume"]));
    let weights = |d: &Path| std::fs::read(d.join("model/model.safetensors")).unwrap();
    assert!(
        weights(&whole) == weights(&halves),
        "resumed weights differ"
    );
    assert!(weights(&whole) != std::fs::read(model.join("model.safetensors")).unwrap());

    // A full disk while the run saves its checkpoint and final model (simulated by a
    // file-size cap smaller than the weights) fails cleanly and leaves the run directory
    // as it was: no final model, no half-written checkpoint. --resume then finishes
    // with the weights of the uninterrupted run.
    let full = dir.path().join("full");
    ok(&run_args(&full, &["--stop-after", "2"]));
    let tree = |d: &Path| (listing(d), listing(&d.join("checkpoints")));
    let before = tree(&full);
    let err = clean_failure(&run_with_file_size_limit(
        &run_args(&full, &["--resume"]),
        16 << 10,
    ));
    assert!(err.contains("File too large"), "{err}");
    assert_eq!(
        tree(&full),
        before,
        "nothing partial left in the run directory"
    );
    ok(&run_args(&full, &["--resume"]));
    assert!(
        weights(&whole) == weights(&full),
        "weights differ after a failed save"
    );

    // Malformed training data: the error names file and line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"input\":\"a\",\"target\":\"b\"}\n{\"input\":\"a\"}\n",
    )
    .unwrap();
    let out = fisherkit(&[
        "train",
        "--model",
        p(&model),
        "--train",
        p(&bad),
        "--out",
        p(&dir.path().join("r2")),
        "--steps",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.jsonl:2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
