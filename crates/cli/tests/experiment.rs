//! `fisherkit experiment merge-synthetic` through the binary, at tiny sizes: the grid's
//! endpoints against the fine-tuned models scored independently (`fisherkit eval` and
//! `fisherkit score`), the plot, resuming, and bad input.

mod support;

use serde_json::Value;
use std::path::Path;
use support::{fails, ok, run, s};

// One-token answers: even this tiny model gets some right, so exact match is tested too.
const TASKS: [&str; 2] = ["max", "count"];

fn tiny_args(out: &Path) -> Vec<String> {
    [
        "experiment",
        "merge-synthetic",
        "--out",
        s(out),
        "--tasks",
        "max,count",
        "--train-per-task",
        "150",
        "--eval-per-task",
        "12",
        "--pretrain-steps",
        "60",
        "--finetune-steps",
        "80",
        "--finetune-lr",
        "3e-3",
        "--batch-size",
        "16",
        "--d-model",
        "32",
        "--layers",
        "1",
        "--fisher-examples",
        "8",
        "--grid",
        "0:1:0.5",
        "--seed",
        "3",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

fn rows(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `{task: (exact_match, logprob)}` of one row's (or summary entry's) score list.
fn task_scores(scores: &Value) -> Vec<(String, f64, f64)> {
    scores
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["task"].as_str().unwrap().to_string(),
                t["exact_match"].as_f64().unwrap(),
                t["logprob"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// A model's scores on a task computed without the experiment code: exact match from
/// `fisherkit eval` (greedy generation) and the mean of `fisherkit score`'s summed
/// target log-probabilities.
fn independent_scores(model: &Path, data: &Path) -> (f64, f64) {
    let eval: Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        s(model),
        "--data",
        s(data),
        "--metrics",
        "exact-match",
    ]))
    .unwrap();
    let exact = eval["metrics"]["exact-match"].as_f64().unwrap() / 100.0;
    let sums: Vec<f64> = ok(&["score", "--model", s(model), "--data", s(data)])
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["target_logprob_sum"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(sums.len(), 12);
    (exact, sums.iter().sum::<f64>() / sums.len() as f64)
}

/// Every start tag is closed in order (a minimal XML well-formedness check).
fn assert_well_formed(svg: &str) {
    let mut open: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("unclosed tag") + start;
        let tag = &rest[start + 1..end];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                open.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().unwrap();
            open.push(name.to_string());
        }
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{tag}>"
        );
        rest = &rest[end + 1..];
    }
    assert!(open.is_empty(), "unclosed elements {open:?}");
}

#[test]
fn merge_synthetic_endpoints_plot_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ms");
    let args = tiny_args(&out);
    let table = ok(&args);
    assert!(table.contains("isotropic:max") && table.contains("fisher:count"));

    let rows = rows(&out);
    assert_eq!(rows.len(), 2 * 3, "two methods × three grid points");
    for r in &rows {
        for (_, exact, logprob) in task_scores(&r["scores"]) {
            assert!((0.0..=1.0).contains(&exact), "{r}");
            assert!(logprob.is_finite() && logprob < 0.0, "{r}");
        }
    }

    // λ = 1 is model A, λ = 0 model B, for both methods, on both tasks (up to padded
    // batches rounding differently: 1e-5 relative; a Fisher merge keeping even one of A's
    // embedding rows at λ = 0 is off by 1e-3).
    for (lambda, model_task) in [(1.0, TASKS[0]), (0.0, TASKS[1])] {
        let model = out.join(format!("finetune-{model_task}/model"));
        let expected: Vec<(f64, f64)> = TASKS
            .iter()
            .map(|t| independent_scores(&model, &out.join(format!("data/{t}/test.jsonl"))))
            .collect();
        assert!(
            expected.iter().any(|(exact, _)| *exact > 0.0),
            "the fine-tuned {model_task} model should get some examples right"
        );
        for method in ["isotropic", "fisher"] {
            let row = rows
                .iter()
                .find(|r| r["method"] == method && r["lambda"].as_f64() == Some(lambda))
                .unwrap_or_else(|| panic!("no row {method} λ={lambda}"));
            let got = task_scores(&row["scores"]);
            for ((task, exact, logprob), (want_exact, want_logprob), t) in got
                .iter()
                .zip(&expected)
                .zip(TASKS)
                .map(|((g, e), t)| (g, e, t))
            {
                assert_eq!(task, t);
                assert_eq!(exact, want_exact, "{method} λ={lambda} {task}");
                assert!(
                    (logprob - want_logprob).abs() < 1e-5 * want_logprob.abs().max(1.0),
                    "{method} λ={lambda} {task}: log-prob {logprob} vs {want_logprob}"
                );
            }
        }
    }
    // The middle of the grid is a different model: its log-probabilities differ.
    let mid = rows
        .iter()
        .find(|r| r["lambda"].as_f64() == Some(0.5))
        .unwrap();
    let end = rows
        .iter()
        .find(|r| r["lambda"].as_f64() == Some(1.0))
        .unwrap();
    assert_ne!(task_scores(&mid["scores"]), task_scores(&end["scores"]));

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["methods"].as_array().unwrap().len(), 2);
    let fisher_end = rows
        .iter()
        .find(|r| r["method"] == "fisher" && r["lambda"].as_f64() == Some(1.0))
        .unwrap();
    let a = task_scores(&summary["finetuned_a"]);
    for (x, y) in a.iter().zip(task_scores(&fisher_end["scores"])) {
        assert_eq!((&x.0, x.1), (&y.0, y.1));
    }

    let svg = std::fs::read_to_string(out.join("merge-synthetic.svg")).unwrap();
    assert_well_formed(&svg);
    assert_eq!(
        svg.matches("<polyline").count(),
        4,
        "one line per method × task"
    );
    for label in [
        "isotropic: max",
        "isotropic: count",
        "fisher: max",
        "fisher: count",
    ] {
        assert!(svg.contains(label), "legend lacks {label}");
    }

    // Rerun after losing the scores: phases 1–4 are skipped, the grid is scored again
    // with the same results.
    let before = std::fs::read(out.join("results.jsonl")).unwrap();
    std::fs::remove_file(out.join("results.jsonl")).unwrap();
    let again = run(&args);
    assert!(again.status.success(), "{}", support::stderr(&again));
    let log = support::stderr(&again);
    assert_eq!(log.matches("skipped").count(), 6, "{log}");
    assert!(log.contains("5/5 scoring the merges: done"), "{log}");
    assert_eq!(std::fs::read(out.join("results.jsonl")).unwrap(), before);

    // Other settings on the same directory are refused, not mixed in; with --force
    // the directory starts over.
    let mut other = args.clone();
    let seed = other.iter().position(|a| a == "--seed").unwrap();
    other[seed + 1] = "4".into();
    assert!(fails(&other).contains("other settings"));
    other.push("--force".into());
    let forced = run(&other);
    assert!(forced.status.success(), "{}", support::stderr(&forced));
    assert!(!support::stderr(&forced).contains("skipped"));
    assert_ne!(std::fs::read(out.join("results.jsonl")).unwrap(), before);
}

#[test]
fn merge_synthetic_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ms");
    let with = |flag: &str, value: &str| {
        let mut a = tiny_args(&out);
        let i = a.iter().position(|x| x == flag).unwrap();
        a[i + 1] = value.into();
        a
    };
    assert!(fails(&with("--tasks", "copy,nope")).contains("unknown synthetic task \"nope\""));
    assert!(fails(&with("--tasks", "copy")).contains("exactly two"));
    assert!(fails(&with("--tasks", "copy,copy")).contains("two different tasks"));
    assert!(fails(&with("--grid", "0:2:0.5")).contains("outside [0, 1]"));
    assert!(fails(&with("--grid", "0:1")).contains("start:stop:step"));
    assert!(!out.exists(), "nothing is written for refused settings");
    // A directory that is not an experiment's is not overwritten.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    assert!(fails(&tiny_args(&out)).contains("not an experiment directory"));
    let mut forced = tiny_args(&out);
    forced.push("--force".into());
    assert!(fails(&forced).contains("not an experiment directory"));
    assert!(out.join("keep.txt").exists());
}
