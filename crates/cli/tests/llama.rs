//! Llama-family checkpoints from the command line: the transformers-made fixture
//! (`testdata/fixtures/llama-tiny`) scored and continued as transformers did, sampling,
//! `init` → `train` → `fisher` → `pefs` → every merge method, and bad input named.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{fails, ok, s, testdata};

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn fixture_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(testdata("fixtures/llama-tiny/cases.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    cases["cases"].as_array().unwrap().clone()
}

/// `score` of a prompt alone prints log p(xᵢ | x₍<ᵢ₎) for i = 1…n−1, `generate` prints
/// only the new ids (greedy, as transformers), sampling is reproducible from `--seed`
/// and `--top-k 1` is greedy.
#[test]
fn fixture_scores_and_continues_like_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = testdata("fixtures/llama-tiny");
    let cases = fixture_cases();
    let prompts = tmp.path().join("prompts.jsonl");
    let lines: String = cases
        .iter()
        .map(|c| format!("{}\n", serde_json::json!({"input_ids": c["prompt_ids"]})))
        .collect();
    std::fs::write(&prompts, lines).unwrap();
    #[rustfmt::skip]
    let scores = json_lines(&ok(&["score", "--model", s(&model), "--data", s(&prompts),
        "--batch-size", "4"]));
    for (case, got) in cases.iter().zip(&scores) {
        let want = case["prompt_token_logprobs"].as_array().unwrap();
        let got = got["token_logprobs"].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-4);
        }
    }
    #[rustfmt::skip]
    let generated = json_lines(&ok(&["generate", "--model", s(&model), "--data", s(&prompts),
        "--max-new-tokens", "12"]));
    for (case, got) in cases.iter().zip(&generated) {
        assert_eq!(got["ids"], case["greedy_new_ids"]);
    }
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            s(&model),
            "--data",
            s(&prompts),
            "--max-new-tokens",
            "12",
        ];
        args.extend_from_slice(extra);
        json_lines(&ok(&args))
    };
    let hot = ["--temperature", "3", "--seed", "5"];
    assert_eq!(sample(&hot), sample(&hot));
    assert_ne!(
        sample(&hot),
        generated,
        "a hot sample follows the greedy path"
    );
    assert_eq!(sample(&["--top-k", "1", "--seed", "9"]), generated);
    let err = fails(&[
        "generate",
        "--model",
        s(&model),
        "--data",
        s(&prompts),
        "--top-p",
        "1.5",
    ]);
    assert!(err.contains("top_p"), "{err}");
}

/// A preset initialised, trained (loss falls), Fisher'd, its PEFs computed, and merged
/// with the fixture by every method; the merges load and score.
#[test]
fn llama_trains_and_merges_by_every_method() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fixture = testdata("fixtures/llama-tiny");
    // The fixture's task: `1 t… 3` → `reversed(t…) 2`.
    let data = dir.join("reverse.jsonl");
    let mut lines = String::new();
    for i in 0..48u32 {
        let tokens: Vec<u32> = (0..2 + i % 5).map(|j| 4 + (i * 7 + j * 11) % 36).collect();
        let mut input = vec![1];
        input.extend(&tokens);
        input.push(3);
        let mut target: Vec<u32> = tokens.iter().rev().copied().collect();
        target.push(2);
        lines.push_str(&format!(
            "{}\n",
            serde_json::json!({"input_ids": input, "target_ids": target})
        ));
    }
    std::fs::write(&data, lines).unwrap();
    let init = dir.join("init");
    ok(&[
        "init",
        "--preset",
        "llama-tiny",
        "--seed",
        "0",
        "--out",
        s(&init),
    ]);
    let nll = |model: &Path| -> f64 {
        let out = ok(&["score", "--model", s(model), "--data", s(&data)]);
        let lines = json_lines(&out);
        let total: f64 = lines
            .iter()
            .map(|l| -l["target_logprob_sum"].as_f64().unwrap())
            .sum();
        total / lines.len() as f64
    };
    let run = dir.join("run");
    #[rustfmt::skip]
    ok(&["train", "--model", s(&init), "--train", s(&data), "--out", s(&run),
        "--optimizer", "adamw", "--lr", "3e-3", "--steps", "60", "--batch-size", "16",
        "--seed", "0"]);
    let trained = run.join("model");
    let (before, after) = (nll(&init), nll(&trained));
    assert!(after < 0.7 * before, "loss {before} → {after}");

    let mut fishers = Vec::new();
    for (name, model) in [("fixture", &fixture), ("trained", &trained)] {
        let fisher = dir.join(format!("{name}.fisher.safetensors"));
        #[rustfmt::skip]
        ok(&["fisher", "--model", s(model), "--data", s(&data), "--top-k-classes", "4",
            "--out", s(&fisher)]);
        fishers.push(fisher);
    }
    let pefs = dir.join("pefs");
    #[rustfmt::skip]
    ok(&["pefs", "--model", s(&trained), "--data", s(&data), "--out", s(&pefs),
        "--kind", "diagonal", "--top-k", "64", "--top-k-classes", "4"]);
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(pefs.join("pefs.json")).unwrap()).unwrap();
    assert_eq!(meta["complete"], true);
    assert_eq!(meta["n_examples"], 48);
    assert_eq!(meta["parameters"][0]["name"], "model.embed_tokens.weight");
    #[rustfmt::skip]
    let methods: Vec<(&str, Vec<String>)> = vec![
        ("fisher", vec!["--model", s(&fixture), "--fisher", s(&fishers[0]), "--model", s(&trained),
            "--fisher", s(&fishers[1])].into_iter().map(String::from).collect()),
        ("linear", vec!["--model", s(&fixture), "--model", s(&trained)].into_iter().map(String::from).collect()),
        ("slerp", vec!["--base", s(&fixture), "--model", s(&trained), "--param", "t=0.5"].into_iter().map(String::from).collect()),
    ];
    #[rustfmt::skip]
    let with_base: Vec<String> = vec!["--base", s(&init), "--model", s(&fixture), "--model",
        s(&trained), "--density", "0.5", "--density", "0.5"]
        .into_iter().map(String::from).collect();
    let mut all = methods;
    for method in ["task_arithmetic", "ties", "dare_linear", "dare_ties"] {
        all.push((method, with_base.clone()));
    }
    for (method, args) in all {
        let out = dir.join(format!("merged-{method}"));
        let mut command = vec!["merge".to_string(), "--method".into(), method.into()];
        command.extend(args);
        command.extend(["--out".to_string(), s(&out).to_string()]);
        ok(&command);
        let score = nll(&out);
        assert!(score.is_finite(), "{method}: {score}");
    }
}

#[test]
fn bad_llama_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = testdata("fixtures/llama-tiny");
    let long = tmp.path().join("long.jsonl");
    let ids: Vec<u32> = (0..140).map(|i| 4 + i % 30).collect();
    std::fs::write(
        &long,
        format!(
            "{{\"input_ids\": [1, 5, 6]}}\n{}\n",
            serde_json::json!({ "input_ids": ids })
        ),
    )
    .unwrap();
    #[rustfmt::skip]
    let err = fails(&["score", "--model", s(&model), "--data", s(&long), "--batch-size", "1"]);
    assert!(
        err.contains("long.jsonl: examples 2") && err.contains("max_position_embeddings"),
        "{err}"
    );
    let err = fails(&["embed", "--model", s(&model), "--data", s(&long)]);
    assert!(err.contains("no encoder"), "{err}");
    let bad = tmp.path().join("bad-model");
    std::fs::create_dir(&bad).unwrap();
    std::fs::copy(
        model.join("model.safetensors"),
        bad.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        bad.join("config.json"),
        r#"{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#,
    )
    .unwrap();
    let err = fails(&["score", "--model", s(&bad), "--data", s(&long)]);
    assert!(err.contains("config.json") && err.contains("yarn"), "{err}");
}
