//! BERT and RoBERTa against the Hugging Face fixtures (`testdata/fixtures/bert-tiny`,
//! `roberta-tiny`: a padded batch's logits, log-probabilities and last-layer sums), save
//! and reload, a new head on a pre-trained encoder, and — when the real model has been
//! fetched (`scripts/fetch-real.sh`) — the real all-MiniLM-L6-v2 on real BBC texts.

use std::path::{Path, PathBuf};

use fisherkit_bert::checkpoint;
use fisherkit_bert::pooling::Pooling;
use fisherkit_bert::{Bert, Head};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::{Example, LogProbModel, Model, ParamAccess, TextTokenizer};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
    label: u32,
    logits: Vec<f32>,
    log_probs: Vec<f32>,
    last_hidden_sum: f32,
    last_hidden_abs_sum: f32,
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/fixtures"
    ))
    .join(name)
}

fn fixture(name: &str) -> (Bert, Vec<Case>, Vec<Example>) {
    let dir = testdata(name);
    let model = checkpoint::load(&dir, &Device::flex()).unwrap();
    let text = std::fs::read_to_string(dir.join("cases.json")).unwrap();
    let cases: Cases = serde_json::from_str(&text).unwrap();
    let batch = cases
        .cases
        .iter()
        .map(|c| Example {
            input_ids: c.input_ids.clone(),
            target_ids: vec![c.label],
            token_type_ids: c.token_type_ids.clone(),
        })
        .collect();
    (model, cases.cases, batch)
}

fn values<const D: usize>(t: fisherkit_model::burn::tensor::Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

fn check_fixture(name: &str, head: Head) {
    let (model, cases, batch) = fixture(name);
    assert_eq!(model.head(), head);
    assert_eq!(model.output_size(), 3);
    // One padded batch: padding, masks and (RoBERTa) position ids after padding matter.
    let logits = values(model.logits(&batch).unwrap());
    let log_probs = values(model.log_softmax(&batch).unwrap());
    let (hidden, mask) = model.hidden_states(&batch).unwrap();
    let [_, len, d] = hidden.dims();
    let hidden = values(hidden);
    let mask = values(mask);
    for (i, case) in cases.iter().enumerate() {
        for c in 0..3 {
            let (got, want) = (logits[i * 3 + c], case.logits[c]);
            assert!(
                (got - want).abs() < 1e-4,
                "{name} case {i} logit {c}: {got} vs {want}"
            );
            let (got, want) = (log_probs[i * 3 + c], case.log_probs[c]);
            assert!(
                (got - want).abs() < 1e-4,
                "{name} case {i} log-prob {c}: {got} vs {want}"
            );
        }
        let n = case.input_ids.len();
        assert!(mask[i * len..i * len + n].iter().all(|&m| m == 1.0));
        assert!(mask[i * len + n..(i + 1) * len].iter().all(|&m| m == 0.0));
        let rows = &hidden[i * len * d..(i * len + n) * d];
        let sum: f64 = rows.iter().map(|&v| v as f64).sum();
        let abs_sum: f64 = rows.iter().map(|&v| v.abs() as f64).sum();
        // Post-norm layers make each row sum to ≈ n·Σβ; compare against the scale.
        assert!(
            (sum - case.last_hidden_sum as f64).abs() < 1e-3 * case.last_hidden_abs_sum as f64,
            "{name} case {i} hidden sum {sum} vs {}",
            case.last_hidden_sum
        );
        assert!(
            (abs_sum - case.last_hidden_abs_sum as f64).abs() < 1e-4 * abs_sum,
            "{name} case {i} hidden abs sum {abs_sum} vs {}",
            case.last_hidden_abs_sum
        );
    }
    // Target log-probabilities pick each case's label.
    let picked = fisherkit_model::score(&model, &batch).unwrap();
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(picked[i].len(), 1);
        assert!((picked[i][0] - case.log_probs[case.label as usize]).abs() < 1e-4);
    }
}

#[test]
fn bert_tiny_matches_transformers() {
    check_fixture("bert-tiny", Head::Bert);
}

#[test]
fn roberta_tiny_matches_transformers() {
    check_fixture("roberta-tiny", Head::Roberta);
}

/// Save → load gives the same parameters, names and logits, and config keys survive.
#[test]
fn save_and_reload_round_trip() {
    for name in ["bert-tiny", "roberta-tiny"] {
        let (model, _, batch) = fixture(name);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("copy");
        checkpoint::save(&model, &out, None, false).unwrap();
        let reloaded = checkpoint::load(&out, &Device::flex()).unwrap();
        assert_eq!(
            model.read_params().unwrap(),
            reloaded.read_params().unwrap()
        );
        assert_eq!(
            values(model.logits(&batch).unwrap()),
            values(reloaded.logits(&batch).unwrap())
        );
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["id2label"]["2"], "LABEL_2");
        assert_eq!(
            config["transformers_version"], "5.24.0",
            "unknown keys are kept"
        );
        // Saving over an existing directory needs `overwrite`.
        assert!(checkpoint::save(&model, &out, None, false).is_err());
    }
}

fn labels(n: usize) -> Vec<String> {
    fisherkit_bert::config::default_labels(n)
}

/// A new head on a pre-trained encoder keeps every encoder weight (under the task
/// model's names) and draws the head reproducibly from the seed.
#[test]
fn new_head_keeps_the_encoder() {
    let dir = testdata("bert-tiny");
    let pretrained = checkpoint::load(&dir, &Device::flex()).unwrap();
    let a = checkpoint::with_new_head(&dir, &labels(5), 7, &Device::flex()).unwrap();
    let b = checkpoint::with_new_head(&dir, &labels(5), 7, &Device::flex()).unwrap();
    let c = checkpoint::with_new_head(&dir, &labels(5), 8, &Device::flex()).unwrap();
    assert_eq!(a.labels().len(), 5);
    for (name, values) in pretrained.read_params().unwrap() {
        let new = a.read_param(&name).unwrap();
        if name.starts_with("classifier.") {
            assert_eq!(new.len(), values.len() / 3 * 5);
        } else {
            assert_eq!(new, values, "{name}");
        }
    }
    assert_eq!(
        a.read_param("classifier.weight").unwrap(),
        b.read_param("classifier.weight").unwrap()
    );
    assert_ne!(
        a.read_param("classifier.weight").unwrap(),
        c.read_param("classifier.weight").unwrap()
    );
    assert!(checkpoint::with_new_head(&dir, &labels(1), 7, &Device::flex()).is_err());
}

/// Bad inputs are named errors: out-of-vocabulary ids, too long inputs, token types the
/// model does not have.
#[test]
fn bad_inputs_are_named() {
    let (model, _, _) = fixture("roberta-tiny");
    let err = |example: Example| format!("{:#}", model.logits(&[example]).unwrap_err());
    let message = err(Example::new(vec![0, 500, 2], vec![]));
    assert!(
        message.contains("500") && message.contains("vocab_size 210"),
        "{message}"
    );
    let message = err(Example::new(vec![5; 69], vec![]));
    assert!(
        message.contains("max_position_embeddings 70 allows 68"),
        "{message}"
    );
    let message = err(Example {
        input_ids: vec![0, 5, 2],
        target_ids: vec![],
        token_type_ids: vec![0, 1, 1],
    });
    assert!(message.contains("type_vocab_size 1"), "{message}");
    assert!(model.logits(&[Example::new(vec![5; 68], vec![])]).is_ok());
}

/// The real all-MiniLM-L6-v2, fetched by `scripts/fetch-real.sh` into
/// `$FISHERKIT_REAL_DIR` (CI sets it), on 15 real BBC News texts: its tokenizer's ids
/// and the sentence-transformers embeddings.
#[test]
fn real_minilm_matches_sentence_transformers() {
    let Some(root) = std::env::var_os("FISHERKIT_REAL_DIR") else {
        eprintln!(
            "FISHERKIT_REAL_DIR is not set: run scripts/fetch-real.sh to test the real MiniLM"
        );
        return;
    };
    let dir = Path::new(&root).join("all-minilm-l6-v2");
    let model = checkpoint::load(&dir, &Device::flex()).unwrap();
    assert_eq!(model.head(), Head::None);
    let tokenizer: TextTokenizer = model.tokenizer_in(&dir).unwrap().unwrap();
    let pooling = Pooling::from_dir(&dir).unwrap();
    assert!(pooling.mean && pooling.normalize && !pooling.cls);
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("minilm-bbc").join("expected.json")).unwrap(),
    )
    .unwrap();
    let cases = expected["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 15);
    let batch: Vec<Example> = cases
        .iter()
        .map(|case| {
            let (ids, types) = tokenizer
                .encode_segments(case["text"].as_str().unwrap(), None)
                .unwrap();
            let want: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
            assert_eq!(ids, want, "{}", case["file"]);
            Example {
                input_ids: ids,
                target_ids: vec![],
                token_type_ids: types,
            }
        })
        .collect();
    let (hidden, _) = model.encoder_states(&batch).unwrap();
    let [_, len, d] = hidden.dims();
    let hidden = values(hidden);
    for (i, (case, example)) in cases.iter().zip(&batch).enumerate() {
        let tokens = &hidden[i * len * d..(i * len + example.input_ids.len()) * d];
        let got = pooling.pool(tokens, d);
        let want: Vec<f32> = serde_json::from_value(case["embedding"].clone()).unwrap();
        let cosine: f64 = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum::<f64>()
            / want
                .iter()
                .map(|&b| b as f64 * b as f64)
                .sum::<f64>()
                .sqrt();
        assert!(cosine >= 0.9999, "{}: cosine {cosine}", case["file"]);
    }
}

/// A config whose classes disagree with the head's rows is refused at load, naming the
/// file and both counts.
#[test]
fn num_labels_must_match_the_head() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(testdata("bert-tiny")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["id2label"] = serde_json::json!({"0": "a", "1": "b"});
    config.as_object_mut().unwrap().remove("label2id");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = format!(
        "{:#}",
        checkpoint::load(dir.path(), &Device::flex()).unwrap_err()
    );
    assert!(
        err.contains("config.json") && err.contains("2 classes") && err.contains("3 rows"),
        "{err}"
    );
}
