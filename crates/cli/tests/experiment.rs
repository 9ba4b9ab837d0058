//! `fisherkit experiment merge-synthetic` through the binary, at tiny sizes: the grid's
//! endpoints against the fine-tuned models scored independently (`fisherkit eval` and
//! `fisherkit score`), the plot, resuming, and bad input. `experiment npeff-synthetic
//! --quick`: components against the shuffled and random controls, reports, resuming.

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

#[test]
fn npeff_synthetic_beats_its_controls_writes_reports_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ns");
    let args = ["experiment", "npeff-synthetic", "--quick", "--out", s(&out)];
    let table = ok(&args);
    assert!(
        table.contains("D-NPEFF") && table.contains("LRM-NPEFF"),
        "{table}"
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let components = 8;
    let tasks = summary["tasks"].as_array().unwrap().len();
    assert_eq!(summary["examples"], 8 * tasks);
    for kind in ["d_npeff", "lrm_npeff"] {
        let k = &summary[kind];
        let f = |v: &Value| v.as_f64().unwrap();
        for v in [&k["nmi_task"], &k["controls"]["shuffled"]["nmi_task"]] {
            assert!((0.0..=1.0).contains(&f(v)), "{kind}: {v}");
        }
        for v in [
            &k["purity"],
            &k["skill_purity"],
            &k["controls"]["shuffled"]["purity"],
        ] {
            assert!(
                (1.0 / tasks as f64 - 1e-9..=1.0).contains(&f(v)),
                "{kind}: {v}"
            );
        }
        assert_eq!(
            k["perturbation"]["ratios"].as_array().unwrap().len(),
            components
        );
        assert_eq!(
            k["controls"]["random_directions"]["ratios"]
                .as_array()
                .unwrap()
                .len(),
            components
        );
        assert_eq!(
            k["controls"]["shuffled"]["perturbation"]["ratios"]
                .as_array()
                .unwrap()
                .len(),
            components
        );
        let page = out.join(format!("report-{}.html", &kind[..kind.find('_').unwrap()]));
        let html = std::fs::read_to_string(&page).unwrap();
        assert_eq!(
            html.matches("<section class=\"component\"").count(),
            components
        );
        // CI installs Chromium and sets this: the page renders in a real browser.
        if std::env::var_os("FISHERKIT_CHECK_REPORTS").is_some() {
            let script = support::testdata("../scripts/check-report.sh");
            let status = std::process::Command::new(script)
                .arg(&page)
                .arg(components.to_string())
                .status()
                .unwrap();
            assert!(
                status.success(),
                "{} failed the browser check",
                page.display()
            );
        }
    }
    // D-NPEFF finds the tasks: its components align with them far better than components
    // of the shuffled PEFs, and moving along them changes their own examples more than
    // moving along a random direction does.
    let d = &summary["d_npeff"];
    let nmi = d["nmi_task"].as_f64().unwrap();
    let shuffled = d["controls"]["shuffled"]["nmi_task"].as_f64().unwrap();
    assert!(nmi > shuffled + 0.1, "NMI {nmi} vs shuffled {shuffled}");
    let ratio = d["perturbation"]["median_ratio"].as_f64().unwrap();
    let random = d["controls"]["random_directions"]["median_ratio"]
        .as_f64()
        .unwrap();
    assert!(
        ratio > 2.0 * random,
        "ratio {ratio} vs random directions {random}"
    );

    // A rerun resumes: every phase is skipped and the summary is the same.
    let again = run(&args);
    assert!(again.status.success());
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(!log.contains("done in"), "{log}");
    let resumed: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(resumed["d_npeff"], summary["d_npeff"]);
    // Other settings in the same directory are refused; nonsense is refused up front.
    let err = fails(&[
        "experiment",
        "npeff-synthetic",
        "--quick",
        "--components",
        "9",
        "--out",
        s(&out),
    ]);
    assert!(err.contains("other settings"), "{err}");
    let fresh = dir.path().join("fresh");
    let err = fails(&[
        "experiment",
        "npeff-synthetic",
        "--quick",
        "--components",
        "0",
        "--out",
        s(&fresh),
    ]);
    assert!(err.contains("--components must be between 1"), "{err}");
    assert!(!fresh.exists());
}

#[test]
fn npeff_heuristic_plants_the_shortcut_and_accounts_for_every_example() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nh");
    let args = ["experiment", "npeff-heuristic", "--quick", "--out", s(&out)];
    let table = ok(&args);
    assert!(table.contains("← heuristic"), "{table}");
    // The hint is planted in the task's training data at the requested rate.
    let train = std::fs::read_to_string(out.join("data/count/train.jsonl")).unwrap();
    let (mut n, mut true_hints) = (0, 0);
    for line in train.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        let input = row["input"].as_str().unwrap();
        let hint = input
            .rsplit_once(" hint ")
            .expect("every input has a hint")
            .1;
        n += 1;
        true_hints += usize::from(hint == row["target"].as_str().unwrap());
    }
    let rate = true_hints as f64 / n as f64;
    assert!((0.9..=0.99).contains(&rate), "hint rate {rate} over {n}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let f = |v: &Value| v.as_f64().unwrap();
    let held_out = summary["eval_examples"].as_u64().unwrap() as f64;
    assert_eq!(
        held_out, 80.0,
        "each of 40 examples with a lying and a true hint"
    );
    // Every misclassified example, and only those, went into the decomposition.
    let original = &summary["original"];
    let wrong = held_out / 2.0 * (1.0 - f(&original["counter"]))
        + held_out / 2.0 * (1.0 - f(&original["consistent"]));
    assert_eq!(summary["misclassified"].as_f64().unwrap(), wrong.round());
    let lines = std::fs::read_to_string(out.join("misclassified.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines as f64, wrong.round());
    // A counter-example answered with its (lying) hint is not answered right.
    let rows = summary["repair"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        2 * 2 * 2,
        "two directions × two steps × two signs"
    );
    for a in rows.iter().map(|r| &r["accuracy"]).chain([original]) {
        assert!(
            f(&a["counter"]) + f(&a["follows_hint"]) <= 1.0 + 1e-12,
            "{a}"
        );
    }
    let components = summary["components"].as_array().unwrap();
    assert_eq!(components.len(), 3);
    let best = components
        .iter()
        .map(|c| f(&c["follows_hint"]))
        .fold(f64::NEG_INFINITY, f64::max);
    let chosen = &components[summary["heuristic_component"].as_u64().unwrap() as usize];
    assert_eq!(f(&chosen["follows_hint"]), best);
    // Resume: nothing is redone.
    let again = run(&args);
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stderr).contains("done in"));
    // Bad settings are refused before any work.
    let fresh = dir.path().join("fresh");
    let err = fails(&[
        "experiment",
        "npeff-heuristic",
        "--quick",
        "--task",
        "copy",
        "--out",
        s(&fresh),
    ]);
    assert!(err.contains("no fixed label set"), "{err}");
    let err = fails(&[
        "experiment",
        "npeff-heuristic",
        "--quick",
        "--shortcut-rate",
        "1.5",
        "--out",
        s(&fresh),
    ]);
    assert!(err.contains("--shortcut-rate must lie in [0, 1]"), "{err}");
    assert!(!fresh.exists());
}
