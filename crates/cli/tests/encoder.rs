//! End-to-end `fisherkit classify | embed | fisher | init --from` on the BERT and
//! RoBERTa fixtures made by `transformers` (`testdata/fixtures/{bert,roberta}-tiny`).

mod support;

use std::path::Path;

use fisherkit_common::st::MappedFile;
use serde_json::Value;
use support::{fails, ok, s, testdata};

/// The fixture's cases as `classify` input lines (ids and token types as given, and the
/// label), and the cases themselves.
fn cases(name: &str, data: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(testdata(&format!("fixtures/{name}/cases.json"))).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    let cases = cases["cases"].as_array().unwrap().clone();
    let lines: String = cases
        .iter()
        .map(|c| {
            format!(
                "{}\n",
                serde_json::json!({
                    "input_ids": c["input_ids"],
                    "token_type_ids": c["token_type_ids"],
                    "label": c["label"],
                })
            )
        })
        .collect();
    std::fs::write(data, lines).unwrap();
    cases
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn classify_prints_the_fixture_logits() {
    for name in ["bert-tiny", "roberta-tiny"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.jsonl");
        let cases = cases(name, &data);
        let model = testdata(&format!("fixtures/{name}"));
        let stdout = ok(&[
            "classify",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--batch-size",
            "3",
        ]);
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), cases.len());
        for (line, case) in lines.iter().zip(&cases) {
            let logits = floats(&line["logits"]);
            for (got, want) in logits.iter().zip(floats(&case["logits"])) {
                assert!((got - want).abs() < 1e-4, "{name}: {got} vs {want}");
            }
            let probs = floats(&line["probs"]);
            for (p, lp) in probs.iter().zip(floats(&case["log_probs"])) {
                assert!((p - lp.exp()).abs() < 1e-5);
            }
            let best = (0..3)
                .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
                .unwrap();
            assert_eq!(line["label"], format!("LABEL_{best}"));
        }
    }
}

/// `embed` without sentence-transformers files: mean pooling over the tokens, checked
/// against the fixture's last-layer sums (sum of the mean vector × length = the sum).
#[test]
fn embed_mean_pools_the_last_layer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    let cases = cases("bert-tiny", &data);
    let model = testdata("fixtures/bert-tiny");
    let stdout = ok(&["embed", "--model", s(&model), "--data", s(&data)]);
    for (line, case) in stdout.lines().zip(&cases) {
        let line: Value = serde_json::from_str(line).unwrap();
        let embedding = floats(&line["embedding"]);
        assert_eq!(embedding.len(), 64);
        let n = case["input_ids"].as_array().unwrap().len() as f64;
        let sum: f64 = embedding.iter().sum::<f64>() * n;
        let abs_sum = case["last_hidden_abs_sum"].as_f64().unwrap();
        assert!((sum - case["last_hidden_sum"].as_f64().unwrap()).abs() < 1e-3 * abs_sum);
    }
}

/// The exact label Fisher of a classifier (its head's classes, no --labels) equals the
/// one `transformers` computed, every parameter, to 1e-3 relative — by the hand-written
/// per-example backward and by autodiff.
#[test]
fn label_fisher_matches_transformers() {
    for (name, gradients) in [
        ("bert-tiny", "fast"),
        ("roberta-tiny", "fast"),
        ("bert-tiny", "autodiff"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.jsonl");
        cases(name, &data);
        let model = testdata(&format!("fixtures/{name}"));
        let out = dir.path().join("f.safetensors");
        ok(&[
            "fisher",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--outputs",
            "labels",
            "--gradients",
            gradients,
            "--out",
            s(&out),
        ]);
        let got = MappedFile::open(&out).unwrap();
        let want = MappedFile::open(&testdata(&format!(
            "fixtures/{name}/expected_fisher.safetensors"
        )))
        .unwrap();
        let names = want.names_in_order().unwrap();
        assert_eq!(got.names_in_order().unwrap().len(), names.len());
        for tensor in names {
            let (_, want) = want.read_f32(&tensor).unwrap();
            let (_, got) = got.read_f32(&tensor).unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-3 * scale.max(w.abs()),
                    "{name} {tensor}: {g} vs {w} (max {scale})"
                );
            }
        }
        let meta = got.metadata().unwrap();
        assert_eq!(meta["outputs"], "labels:LABEL_0,LABEL_1,LABEL_2");
        // Label strings that are not the head's classes are refused.
        let err = fails(&[
            "fisher",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--outputs",
            "labels",
            "--labels",
            "a,b",
            "--out",
            s(&out),
        ]);
        assert!(err.contains("LABEL_0,LABEL_1,LABEL_2"), "{err}");
    }
}

/// `init --from DIR --num-labels N` puts a new head on a pre-trained encoder;
/// `init --preset bert-tiny` makes a bare encoder that `embed` runs and `classify`
/// refuses by name.
#[test]
fn init_new_head_and_presets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    cases("bert-tiny", &data);
    let headed = dir.path().join("five");
    ok(&[
        "init",
        "--from",
        s(&testdata("fixtures/bert-tiny")),
        "--num-labels",
        "5",
        "--seed",
        "3",
        "--out",
        s(&headed),
    ]);
    let stdout = ok(&["classify", "--model", s(&headed), "--data", s(&data)]);
    let first: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(floats(&first["probs"]).len(), 5);
    assert!(first["label"].as_str().unwrap().starts_with("LABEL_"));
    // Named classes, on a bare encoder preset too.
    let named = dir.path().join("named");
    ok(&[
        "init",
        "--preset",
        "bert-tiny",
        "--labels",
        "neg,pos",
        "--seed",
        "2",
        "--out",
        s(&named),
    ]);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(named.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["1"], "pos");
    assert_eq!(config["label2id"]["neg"], 0);
    let err = fails(&[
        "init",
        "--from",
        s(&testdata("fixtures/bert-tiny")),
        "--labels",
        "a,a",
        "--seed",
        "1",
        "--out",
        s(&named),
        "--force",
    ]);
    assert!(err.contains("named twice"), "{err}");
    let err = fails(&[
        "init",
        "--from",
        s(&testdata("fixtures/bert-tiny")),
        "--seed",
        "1",
        "--out",
        s(&named),
        "--force",
    ]);
    assert!(err.contains("--labels"), "{err}");
    let bare = dir.path().join("bare");
    let err = fails(&[
        "init",
        "--preset",
        "bert-tiny",
        "--set",
        "num_layers=3",
        "--seed",
        "1",
        "--out",
        s(&bare),
    ]);
    assert!(
        err.contains("num_layers") && err.contains("num_hidden_layers"),
        "{err}"
    );
    ok(&[
        "init",
        "--preset",
        "bert-tiny",
        "--set",
        "num_hidden_layers=3",
        "--seed",
        "1",
        "--out",
        s(&bare),
    ]);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(bare.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertModel");
    assert_eq!(config["num_hidden_layers"], 3);
    let ids = dir.path().join("ids.jsonl");
    std::fs::write(&ids, "{\"input_ids\": [101, 7, 8, 102]}\n").unwrap();
    let stdout = ok(&["embed", "--model", s(&bare), "--data", s(&ids)]);
    assert!(stdout.contains("embedding"));
    let err = fails(&["classify", "--model", s(&bare), "--data", s(&ids)]);
    assert!(err.contains("no classification head"), "{err}");
    // Bad input names the line and the field.
    std::fs::write(&ids, "{\"input_ids\": [101, 7]}\n{\"text_pair\": \"x\"}\n").unwrap();
    let err = fails(&["embed", "--model", s(&bare), "--data", s(&ids)]);
    assert!(
        err.contains("ids.jsonl:2") && err.contains("\"text\""),
        "{err}"
    );
    // Text for a model directory without tokenizer.json: the line and the way out.
    std::fs::write(&ids, "{\"text\": \"a sentence\"}\n").unwrap();
    let err = fails(&[
        "classify",
        "--model",
        s(&testdata("fixtures/bert-tiny")),
        "--data",
        s(&ids),
    ]);
    assert!(
        err.contains("ids.jsonl:1") && err.contains("tokenizer.json") && err.contains("input_ids"),
        "{err}"
    );
    let err = fails(&[
        "classify",
        "--model",
        s(&testdata("fixtures/bert-tiny")),
        "--data",
        s(&data),
        "--batch-size",
        "0",
    ]);
    assert!(err.contains("--batch-size"), "{err}");
}

/// The real MiniLM through the CLI on real BBC text, with its tokenizer and
/// sentence-transformers pooling (when `scripts/fetch-real.sh` has run).
#[test]
fn embed_real_minilm_text() {
    let Some(root) = std::env::var_os("FISHERKIT_REAL_DIR") else {
        eprintln!(
            "FISHERKIT_REAL_DIR is not set: run scripts/fetch-real.sh to test the real MiniLM"
        );
        return;
    };
    let model = Path::new(&root).join("all-minilm-l6-v2");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("fixtures/minilm-bbc/expected.json")).unwrap(),
    )
    .unwrap();
    let cases = expected["cases"].as_array().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bbc.jsonl");
    let lines: String = cases[..3]
        .iter()
        .map(|c| format!("{}\n", serde_json::json!({"text": c["text"]})))
        .collect();
    std::fs::write(&data, lines).unwrap();
    let stdout = ok(&["embed", "--model", s(&model), "--data", s(&data)]);
    for (line, case) in stdout.lines().zip(cases) {
        let line: Value = serde_json::from_str(line).unwrap();
        let got = floats(&line["embedding"]);
        let want = floats(&case["embedding"]);
        let cosine: f64 = got.iter().zip(&want).map(|(a, b)| a * b).sum::<f64>();
        assert!(cosine >= 0.9999, "{}: cosine {cosine}", case["file"]);
    }
}

/// A labelled rule a classifier can learn: the class of the token after `[CLS]`.
fn rule_data(path: &Path, n: usize, offset: usize) {
    let lines: String = (0..n)
        .map(|i| {
            let i = i + offset;
            let key = 3 + ((i * 7) % 9) as u32;
            let len = 3 + i % 5;
            let mut ids = vec![2, key];
            ids.extend((0..len).map(|j| 3 + ((i * 13 + j * 5) % 57) as u32));
            ids.push(3);
            format!(
                "{}\n",
                serde_json::json!({"input_ids": ids, "label": format!("LABEL_{}", key % 3)})
            )
        })
        .collect();
    std::fs::write(path, lines).unwrap();
}

/// `train` fine-tunes a classifier on `{"input_ids"|"text", "label"}` lines (loss down,
/// held-out accuracy well above chance), `eval` reports accuracy and macro-F1 that agree
/// with `classify` on the saved model.
#[test]
fn train_and_eval_a_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = (
        dir.path().join("train.jsonl"),
        dir.path().join("valid.jsonl"),
    );
    rule_data(&train, 240, 0);
    rule_data(&valid, 60, 1000);
    let out = dir.path().join("run");
    ok(&[
        "train",
        "--model",
        s(&testdata("fixtures/bert-tiny")),
        "--train",
        s(&train),
        "--valid",
        s(&valid),
        "--out",
        s(&out),
        "--optimizer",
        "adamw",
        "--lr",
        "2e-3",
        "--batch-size",
        "16",
        "--steps",
        "300",
        "--eval-every",
        "150",
        "--seed",
        "1",
    ]);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let rows: Vec<Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let losses: Vec<f64> = rows.iter().filter_map(|r| r["loss"].as_f64()).collect();
    assert!(losses.len() > 10, "{metrics}");
    let early: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let late: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(late < 0.5 * early, "training loss {early} → {late}");
    let eval = ok(&[
        "eval",
        "--model",
        s(&out.join("model")),
        "--data",
        s(&valid),
    ]);
    let eval: Value = serde_json::from_str(&eval).unwrap();
    let accuracy = eval["metrics"]["accuracy"].as_f64().unwrap();
    assert!(accuracy > 70.0, "held-out accuracy {accuracy} (chance 33)");
    assert!(eval["metrics"]["macro-f1"].as_f64().is_some(), "{eval}");
    // classify on the saved model agrees with eval's accuracy.
    let stdout = ok(&[
        "classify",
        "--model",
        s(&out.join("model")),
        "--data",
        s(&valid),
    ]);
    let labels: Vec<String> = std::fs::read_to_string(&valid)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["label"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let correct = stdout
        .lines()
        .zip(&labels)
        .filter(|(line, label)| {
            serde_json::from_str::<Value>(line).unwrap()["label"] == label.as_str()
        })
        .count();
    assert!((100.0 * correct as f64 / labels.len() as f64 - accuracy).abs() < 1e-9);
    // A label the head does not have is named with the line.
    std::fs::write(
        &valid,
        "{\"input_ids\": [2, 5, 3], \"label\": \"LABEL_7\"}\n",
    )
    .unwrap();
    let err = fails(&[
        "eval",
        "--model",
        s(&out.join("model")),
        "--data",
        s(&valid),
    ]);
    assert!(
        err.contains("valid.jsonl:1") && err.contains("LABEL_7"),
        "{err}"
    );
}

/// `tasks folders` turns a folder-per-class corpus into a seeded, stratified split.
#[test]
fn tasks_folders_writes_a_stratified_split() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    for (class, n) in [("business", 20), ("sport", 10)] {
        std::fs::create_dir_all(corpus.join(class)).unwrap();
        for i in 0..n {
            std::fs::write(
                corpus.join(class).join(format!("{i:03}.txt")),
                format!("{class}\n\n{i}"),
            )
            .unwrap();
        }
    }
    let out = dir.path().join("split");
    ok(&[
        "tasks",
        "folders",
        "--dir",
        s(&corpus),
        "--out",
        s(&out),
        "--seed",
        "3",
    ]);
    let read = |name: &str| -> Vec<Value> {
        std::fs::read_to_string(out.join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (train, valid, test) = (read("train.jsonl"), read("valid.jsonl"), read("test.jsonl"));
    assert_eq!((train.len(), valid.len(), test.len()), (21, 3, 6));
    assert_eq!(test.iter().filter(|d| d["label"] == "sport").count(), 2);
    // Whitespace normalised: "business\n\n7" is "business 7".
    assert!(test.iter().all(|d| {
        let label = d["label"].as_str().unwrap();
        d["text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{label} "))
    }));
    let err = fails(&["tasks", "folders", "--dir", s(&corpus), "--out", s(&out)]);
    assert!(err.contains("exists"), "{err}");
}

/// Merging two classifiers keeps the target's head by default (`--heads target`, as the
/// Fisher-merging paper does) and merges the encoders; `--heads merge` averages it too.
#[test]
fn merging_classifiers_keeps_the_target_head() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.jsonl");
    rule_data(&train, 64, 0);
    let a = testdata("fixtures/bert-tiny");
    let run = dir.path().join("run");
    ok(&[
        "train",
        "--model",
        s(&a),
        "--train",
        s(&train),
        "--out",
        s(&run),
        "--optimizer",
        "adamw",
        "--lr",
        "1e-2",
        "--batch-size",
        "16",
        "--steps",
        "4",
    ]);
    let b = run.join("model");
    let read = |dir: &Path, name: &str| -> Vec<f32> {
        MappedFile::open(&dir.join("model.safetensors"))
            .unwrap()
            .read_f32(name)
            .unwrap()
            .1
    };
    for (heads, head_merged) in [("target", false), ("merge", true)] {
        let out = dir.path().join(format!("merged-{heads}"));
        ok(&[
            "merge",
            "--method",
            "linear",
            "--model",
            s(&a),
            "--model",
            s(&b),
            "--heads",
            heads,
            "--out",
            s(&out),
        ]);
        for name in [
            "classifier.weight",
            "bert.encoder.layer.1.output.dense.weight",
        ] {
            let (x, y, m) = (read(&a, name), read(&b, name), read(&out, name));
            assert_ne!(x, y, "{name}: training changed it");
            let merged = name.starts_with("bert.") || head_merged;
            for ((x, y), m) in x.iter().zip(&y).zip(&m) {
                let want = if merged { 0.5 * (x + y) } else { *x };
                assert!(
                    (m - want).abs() < 1e-6,
                    "--heads {heads} {name}: {m} vs {want}"
                );
            }
        }
        // The merge is a classifier fisherkit loads and runs.
        let data = dir.path().join("d.jsonl");
        cases("bert-tiny", &data);
        ok(&["classify", "--model", s(&out), "--data", s(&data)]);
    }
}

/// Per-example Fishers of a classifier over its classes (low rank: one column per class),
/// with the observed labels and the predictions stored beside them, and NPEFF fits them.
#[test]
fn pefs_and_npeff_on_a_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    let cases = cases("roberta-tiny", &data);
    let model = testdata("fixtures/roberta-tiny");
    let pefs = dir.path().join("pefs");
    ok(&[
        "pefs",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--outputs",
        "labels",
        "--kind",
        "low-rank",
        "--top-k",
        "200",
        "--out",
        s(&pefs),
    ]);
    let pef = fisherkit_npeff::pef::PefDir::open(&pefs).unwrap();
    assert_eq!(pef.meta.n_classes, Some(3));
    let rows = pef.read_all().unwrap();
    assert_eq!(rows.n_examples, cases.len());
    let shard = MappedFile::open(&pef.dir.join(&pef.meta.shards[0].file)).unwrap();
    let st = shard.tensors().unwrap();
    let labels: Vec<i64> = st
        .tensor("labels")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let want: Vec<i64> = cases.iter().map(|c| c["label"].as_i64().unwrap()).collect();
    assert_eq!(labels, want);
    // The stored label log-probabilities are the model's (transformers' fixture values).
    let (_, logits) = shard.read_f32("logits").unwrap();
    for (e, case) in cases.iter().enumerate() {
        for (c, want) in floats(&case["log_probs"]).iter().enumerate() {
            assert!((logits[3 * e + c] as f64 - want).abs() < 1e-4);
        }
    }
    let fit = dir.path().join("fit.safetensors");
    ok(&[
        "npeff",
        "fit",
        "--pefs",
        s(&pefs),
        "--components",
        "2",
        "--iters",
        "10",
        "--g-only-iters",
        "3",
        "--out",
        s(&fit),
    ]);
    let (shape, w) = MappedFile::open(&fit).unwrap().read_f32("W").unwrap();
    assert_eq!(shape, vec![cases.len(), 2]);
    assert!(w.iter().all(|v| v.is_finite() && *v >= 0.0));

    // The analyses run on the encoder too: top examples show the data line's input (here
    // its ids) and the head's label names; the perturbation test re-runs the classifier, and its
    // unperturbed accuracy on a component's top examples is what the PEFs stored.
    let analysed = ["--decomposition", s(&fit), "--pefs", s(&pefs)];
    let mut args = vec!["npeff", "top", "--top", "2"];
    args.extend(analysed);
    let top: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    for c in top["per_component"].as_array().unwrap() {
        for e in c["top_examples"].as_array().unwrap() {
            let i = e["example"].as_u64().unwrap() as usize;
            assert_eq!(
                e["input"].as_str().unwrap(),
                cases[i]["input_ids"].to_string()
            );
            assert!(e["label"].is_string() && e["prediction"].is_string());
        }
    }
    let mut args = vec![
        "npeff",
        "perturb",
        "--top",
        "2",
        "--baseline",
        "2",
        "--epsilon",
        "0.5",
    ];
    args.extend(analysed);
    let report: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let stored = |i: usize| {
        let row = &logits[3 * i..3 * i + 3];
        let predicted = (0..3).fold(0, |b, c| if row[c] > row[b] { c } else { b });
        f64::from(u8::from(predicted as i64 == want[i]))
    };
    for c in report["per_component"].as_array().unwrap() {
        let top: Vec<usize> = c["top_examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as usize)
            .collect();
        let accuracy = top.iter().map(|&i| stored(i)).sum::<f64>() / top.len() as f64;
        assert!((c["original_accuracy_top"].as_f64().unwrap() - accuracy).abs() < 1e-12);
        for sign in ["plus", "minus"] {
            let kl = c["component_direction"][sign]["kl_top"].as_f64().unwrap();
            assert!(kl.is_finite() && kl > 0.0, "{c}");
        }
    }
}
