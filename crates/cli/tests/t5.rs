//! `fisherkit init | score | generate` through the binary: the Hugging Face fixtures
//! (`testdata/fixtures/t5-tiny-v1{0,1}`) reproduced from the command line, reproducible
//! initialisation, and bad input refused with a message naming the file and line.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use support::{fails, ok, run, s, stderr, testdata};

/// The fixture's cases as a JSONL file of ids, and the parsed cases.
/// `name`: the fixture's directory under `testdata/`.
fn fixture_cases(name: &str, dir: &Path) -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(testdata(&format!("{name}/cases.json"))).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    let cases = cases["cases"].as_array().unwrap().clone();
    let jsonl: String = cases
        .iter()
        .map(|c| {
            let line =
                serde_json::json!({"input_ids": c["input_ids"], "target_ids": c["target_ids"]});
            format!("{line}\n")
        })
        .collect();
    let path = dir.join(format!("{}.jsonl", name.replace('/', "-")));
    std::fs::write(&path, jsonl).unwrap();
    (path.to_str().unwrap().to_string(), cases)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn check_fixture(name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (data, cases) = fixture_cases(name, tmp.path());
    let model = testdata(name);
    // Batch size 2 splits the cases into several padded batches.
    let scores = json_lines(&ok(&[
        "score",
        "--model",
        s(&model),
        "--data",
        &data,
        "--batch-size",
        "2",
    ]));
    assert_eq!(scores.len(), cases.len(), "one line per input");
    for (i, (got, case)) in scores.iter().zip(&cases).enumerate() {
        let got_tokens = floats(&got["token_logprobs"]);
        let want_tokens = floats(&case["target_token_logprobs"]);
        assert_eq!(got_tokens.len(), want_tokens.len(), "{name} case {i}");
        for (g, w) in got_tokens.iter().zip(&want_tokens) {
            assert!((g - w).abs() < 1e-4, "{name} case {i}: {g} vs {w}");
        }
        let sum = got["target_logprob_sum"].as_f64().unwrap();
        let want_sum = case["target_logprob_sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() < 1e-3,
            "{name} case {i} sum {sum} vs {want_sum}"
        );
    }
    for (flags, key) in [
        (vec![], "greedy_ids"),
        (
            vec!["--num-beams", "4", "--length-penalty", "0"],
            "beam4_lp0_ids",
        ),
    ] {
        let mut args = vec!["generate", "--model", s(&model), "--data", &data];
        args.extend(["--max-new-tokens", "16", "--batch-size", "3"]);
        args.extend(flags);
        let outputs = json_lines(&ok(&args));
        assert_eq!(outputs.len(), cases.len());
        for (i, (got, case)) in outputs.iter().zip(&cases).enumerate() {
            assert_eq!(got["ids"], case[key], "{name} {key} case {i}");
            assert!(got.get("text").is_none(), "no tokenizer, no text");
        }
    }
}

#[test]
fn fixture_v10_scores_and_decodes_like_transformers() {
    check_fixture("fixtures/t5-tiny-v10");
}

#[test]
fn fixture_v11_scores_and_decodes_like_transformers() {
    check_fixture("fixtures/t5-tiny-v11");
}

#[test]
fn fixture_swiglu_scores_and_decodes_like_transformers() {
    check_fixture("generated/t5-tiny-swiglu");
}

#[test]
fn init_is_reproducible_and_the_model_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let init = |seed: &str, out: &str| {
        let dir = tmp.path().join(out);
        ok(&[
            "init",
            "--preset",
            "tiny",
            "--vocab-size",
            "300",
            "--seed",
            seed,
            "--out",
            s(&dir),
        ]);
        std::fs::read(dir.join("model.safetensors")).unwrap()
    };
    let a = init("7", "a");
    assert_eq!(a, init("7", "b"), "same seed, same bytes");
    assert_ne!(a, init("8", "c"), "another seed, other weights");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("a/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["vocab_size"], 300);
    assert_eq!(config["d_model"], 256);

    let data = tmp.path().join("ex.jsonl");
    std::fs::write(
        &data,
        "{\"input_ids\": [10, 13, 30, 1], \"target_ids\": [30, 13, 1]}\n",
    )
    .unwrap();
    let model = tmp.path().join("a");
    let lines = json_lines(&ok(&["score", "--model", s(&model), "--data", s(&data)]));
    let tokens = floats(&lines[0]["token_logprobs"]);
    assert_eq!(tokens.len(), 3);
    // HF's init draws the untied head from N(0, 1), so a fresh model is confidently wrong:
    // log-probabilities far below log(1/300), but finite.
    assert!(
        tokens.iter().all(|&t| t.is_finite() && t < 0.0),
        "{tokens:?}"
    );
    let sum = lines[0]["target_logprob_sum"].as_f64().unwrap();
    assert!((sum - tokens.iter().sum::<f64>()).abs() < 1e-4);
    let generated = json_lines(&ok(&[
        "generate",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--max-new-tokens",
        "5",
    ]));
    let ids = generated[0]["ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 5);
    assert!(ids.iter().all(|id| id.as_u64().unwrap() < 300));
}

#[test]
fn bad_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = testdata("fixtures/t5-tiny-v10");
    let write = |name: &str, text: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let good = "{\"input_ids\": [10, 1], \"target_ids\": [10, 1]}\n";
    let score = |data: &str| fails(&["score", "--model", s(&model), "--data", data]);

    let err = score(&write(
        "no-target.jsonl",
        &format!("{good}{{\"input_ids\": [5, 1]}}\n"),
    ));
    assert!(
        err.contains("no-target.jsonl:2") && err.contains("target"),
        "{err}"
    );
    let err = score(&write(
        "big-id.jsonl",
        &format!("{good}{good}{{\"input_ids\": [99999], \"target_ids\": [1]}}\n"),
    ));
    assert!(
        err.contains("big-id.jsonl:3") && err.contains("99999"),
        "{err}"
    );
    let err = score(&write("broken.jsonl", "{\"input_ids\": [1, \n"));
    assert!(err.contains("broken.jsonl:1"), "{err}");
    let err = score(&write(
        "empty-input.jsonl",
        "{\"input_ids\": [], \"target_ids\": [1]}\n",
    ));
    assert!(
        err.contains("empty-input.jsonl:1") && err.contains("empty"),
        "{err}"
    );
    let err = score(&write(
        "text.jsonl",
        "{\"input\": \"hello\", \"target\": \"world\"}\n",
    ));
    assert!(err.contains("tokenizer"), "{err}");

    let err = fails(&["generate", "--model", s(&model), "--text", "hello"]);
    assert!(err.contains("tokenizer.json"), "{err}");
    let err = fails(&[
        "score",
        "--model",
        s(tmp.path()),
        "--data",
        &write("ok.jsonl", good),
    ]);
    assert!(err.contains("config.json"), "{err}");
    // An architecture the loader registry does not know: the file, the value and the
    // known model types.
    let gpt2 = tmp.path().join("gpt2");
    std::fs::create_dir(&gpt2).unwrap();
    std::fs::write(gpt2.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    let err = fails(&[
        "score",
        "--model",
        s(&gpt2),
        "--data",
        &write("ok-gpt2.jsonl", good),
    ]);
    assert!(
        err.contains("config.json")
            && err.contains("\"gpt2\"")
            && err.contains("known model types: t5, bert, roberta, llama"),
        "{err}"
    );
    // Text-to-text scoring on a classifier: its one output position is named.
    let err = fails(&[
        "score",
        "--model",
        s(&testdata("fixtures/bert-tiny")),
        "--data",
        &write("ok-bert.jsonl", good),
    ]);
    assert!(err.contains("one class"), "{err}");
    let err = fails(&[
        "init",
        "--preset",
        "t5-gigantic",
        "--seed",
        "0",
        "--out",
        s(&tmp.path().join("m")),
    ]);
    assert!(err.contains("t5-gigantic"), "{err}");

    // A config whose shapes disagree with the weights names the tensor and both shapes.
    let wrong = tmp.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    std::fs::copy(
        model.join("model.safetensors"),
        wrong.join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    std::fs::write(
        wrong.join("config.json"),
        config.replace("\"d_ff\": 128", "\"d_ff\": 96"),
    )
    .unwrap();
    let err = fails(&[
        "score",
        "--model",
        s(&wrong),
        "--data",
        &write("ok2.jsonl", good),
    ]);
    assert!(
        err.contains("wi.weight") && err.contains("128") && err.contains("96"),
        "{err}"
    );
}

/// The synthetic `reverse` task (128 training examples, `valid_size` held out) in `dir`
/// and a 120-token tokenizer trained on it: the training, validation and tokenizer paths.
fn reverse_task(dir: &Path, valid_size: usize) -> (PathBuf, PathBuf, PathBuf) {
    let suite = dir.join("suite");
    let valid_size = valid_size.to_string();
    #[rustfmt::skip]
    ok(&["tasks", "synthetic", "--out", s(&suite), "--tasks", "reverse",
        "--train-size", "128", "--valid-size", &valid_size, "--test-size", "1"]);
    let (train, valid) = (
        suite.join("reverse/train.jsonl"),
        suite.join("reverse/valid.jsonl"),
    );
    let tok = dir.join("tok.json");
    #[rustfmt::skip]
    ok(&["tokenizer", "train", "--input", s(&train), "--vocab-size", "120", "--out", s(&tok)]);
    (train, valid, tok)
}

/// Mean negative log-likelihood per target token of `score`'s output lines.
fn mean_nll(scores: &[Value]) -> f64 {
    let (mut total, mut tokens) = (0.0, 0usize);
    for line in scores {
        total -= line["target_logprob_sum"].as_f64().unwrap();
        tokens += line["token_logprobs"].as_array().unwrap().len();
    }
    total / tokens as f64
}

/// Every transformer-modification switch (README "Model switches") end to end: `init
/// --set` → 100 AdamW steps on the synthetic `reverse` task lower the validation loss →
/// the saved model, loaded again, scores the validation set as the trainer's last
/// evaluation of the in-memory model did.
#[test]
fn every_switch_trains_saves_and_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (train, valid, tok) = reverse_task(dir, 16);
    let shape = [("d_model", "32"), ("d_kv", "8")];
    let mut base = fisherkit_t5::T5Config::preset("tiny").unwrap();
    (base.d_model, base.d_kv, base.num_heads) = (32, 8, 4);
    let score = |model: &Path| -> f64 {
        let out = ok(&["score", "--model", s(model), "--data", s(&valid)]);
        mean_nll(&json_lines(&out))
    };
    for (label, settings) in base.switch_settings() {
        let model = dir.join(format!("model-{label}"));
        #[rustfmt::skip]
        let mut init: Vec<String> = ["init", "--preset", "tiny", "--seed", "0", "--tokenizer", s(&tok),
            "--layers", "2", "--d-ff", "64", "--heads", "4", "--out", s(&model)]
            .iter().map(|a| a.to_string()).collect();
        for (key, value) in shape
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(settings)
        {
            init.extend(["--set".to_string(), format!("{key}={value}")]);
        }
        ok(&init);
        let before = score(&model);
        let run = dir.join(format!("run-{label}"));
        #[rustfmt::skip]
        ok(&["train", "--model", s(&model), "--train", s(&train), "--valid", s(&valid),
            "--out", s(&run), "--optimizer", "adamw", "--lr", "3e-3", "--steps", "100",
            "--batch-size", "16", "--log-every", "100", "--valid-metrics", "exact-match",
            "--valid-generate", "4", "--seed", "0"]);
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let last_valid = metrics
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).unwrap()["valid_loss"].as_f64())
            .unwrap_or_else(|| panic!("{label}: no valid_loss in metrics.jsonl"));
        let after = score(&run.join("model"));
        assert!(after < 0.8 * before, "{label}: loss {before} → {after}");
        assert!(
            (after - last_valid).abs() < 1e-4 * after.max(1.0),
            "{label}: the loaded model scores {after}, the trained one {last_valid}"
        );
        eprintln!("{label}: {before:.3} → {after:.3}");
    }
}

/// `bench matmul`: one rate per shape and thread count, each the shape's 2·m·k·n flops
/// over its measured time.
#[test]
fn bench_matmul_rates_are_flops_over_time() {
    let out = ok(&[
        "bench",
        "matmul",
        "--sizes",
        "64",
        "--repeats",
        "1",
        "--json",
    ]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let rates = report["rates"].as_array().unwrap();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(rates.len(), 2 * if threads > 1 { 2 } else { 1 });
    for rate in rates {
        let shape: Vec<f64> = floats(&rate["shape"]);
        let flops = 2.0 * shape.iter().product::<f64>();
        let (gflops, seconds) = (
            rate["gflops"].as_f64().unwrap(),
            rate["seconds"].as_f64().unwrap(),
        );
        assert!(
            seconds > 0.0 && (gflops * seconds * 1e9 - flops).abs() < 1e-6 * flops,
            "{rate}"
        );
    }
}

/// `bench train` reports its step against the matmul peak measured in the same run: the
/// step's flops are three forward passes counted from the configuration, its rate and
/// share of the peak follow from its time.
#[test]
fn bench_train_reports_its_share_of_the_peak() {
    #[rustfmt::skip]
    let out = ok(&["bench", "train", "--preset", "tiny", "--batch", "2", "--input-len", "8",
        "--target-len", "4", "--warmup", "0", "--steps", "1"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let peak = report["peak_gflops_per_s"].as_f64().unwrap();
    let step = &report["workloads"][0];
    assert_eq!(step["name"], "train_step");
    let config = fisherkit_t5::T5Config::preset("tiny").unwrap();
    let flops = 3.0 * fisherkit_t5::flops::forward(&config, 2, 8, 4);
    assert_eq!(step["flops"].as_f64().unwrap(), flops);
    let seconds = step["seconds"].as_f64().unwrap();
    assert_eq!(seconds, report["step_seconds"].as_f64().unwrap());
    let rate = step["gflops_per_s"].as_f64().unwrap();
    assert!((rate - flops / seconds / 1e9).abs() < 1e-9 * rate, "{step}");
    assert!(peak > 0.0 && (step["peak_fraction"].as_f64().unwrap() - rate / peak).abs() < 1e-12);
}

/// Bad switches are refused before any weight is written, naming the key and listing
/// what is valid; a checkpoint whose config.json carries a bad switch value is refused
/// naming the file.
#[test]
fn bad_switches_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let init = |sets: &[&str]| -> String {
        let mut args = vec!["init", "--preset", "tiny", "--seed", "0", "--out", s(&out)];
        for set in sets {
            args.extend(["--set", set]);
        }
        fails(&args)
    };
    let err = init(&["wobble=1"]);
    assert!(
        err.contains("\"wobble\"") && err.contains("norm_type"),
        "{err}"
    );
    let err = init(&["norm_type=batch"]);
    assert!(err.contains("batch") && err.contains("rezero_rms"), "{err}");
    let err = init(&["feed_forward_proj=gated-wobble"]);
    assert!(err.contains("softplus") && err.contains("gated-"), "{err}");
    let err = init(&["embedding_dim=64", "tie_word_embeddings=true"]);
    assert!(err.contains("cannot be tied"), "{err}");
    let err = init(&["num_key_value_heads=3"]);
    assert!(err.contains("must divide num_heads 8"), "{err}");
    let err = init(&["position_embedding_type=rotary", "d_kv=33"]);
    assert!(err.contains("even d_kv"), "{err}");
    let err = init(&["num_layers"]);
    assert!(err.contains("KEY=VALUE"), "{err}");
    assert!(!out.exists(), "nothing written");

    ok(&["init", "--preset", "tiny", "--seed", "0", "--out", s(&out)]);
    let config_path = out.join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["position_embedding_type"] = "spiral".into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let data = tmp.path().join("d.jsonl");
    std::fs::write(&data, "{\"input_ids\": [5, 1], \"target_ids\": [6, 1]}\n").unwrap();
    let err = fails(&["score", "--model", s(&out), "--data", s(&data)]);
    assert!(
        err.contains("config.json") && err.contains("spiral") && err.contains("rotary"),
        "{err}"
    );
}

/// The T5 paper's single-stack architectures end to end: `init --arch` → 100 AdamW steps
/// on `{"input", "target"}` (one sequence, the loss on the target) lower the validation
/// loss; an input alone is scored token by token exactly as its split into the first
/// token and the rest; `generate` continues ids and prints the new ones only; `fisher`
/// runs. `--arch` on an encoder preset, and an input alone that is too short, are
/// refused by name.
#[test]
fn decoder_only_and_prefix_lms_train_score_generate_and_fisher() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (train, valid, tok) = reverse_task(dir, 16);
    let ids = dir.join("ids.jsonl");
    std::fs::write(
        &ids,
        "{\"input_ids\": [5, 9, 3, 17, 2]}\n\n{\"input_ids\": [7, 4]}\n",
    )
    .unwrap();
    let split = dir.join("split.jsonl");
    std::fs::write(
        &split,
        "{\"input_ids\": [5], \"target_ids\": [9, 3, 17, 2]}\n{\"input_ids\": [7], \"target_ids\": [4]}\n",
    )
    .unwrap();
    for arch in ["decoder-only", "prefix-lm"] {
        let model = dir.join(format!("model-{arch}"));
        #[rustfmt::skip]
        ok(&["init", "--preset", "tiny", "--arch", arch, "--seed", "0", "--tokenizer", s(&tok),
            "--layers", "2", "--d-ff", "64", "--heads", "4", "--set", "d_model=32",
            "--set", "d_kv=8", "--out", s(&model)]);
        let config = std::fs::read_to_string(model.join("config.json")).unwrap();
        assert!(
            config.contains(&format!("\"architecture\": \"{arch}\"")),
            "{config}"
        );
        let score = |model: &Path, data: &Path| {
            json_lines(&ok(&["score", "--model", s(model), "--data", s(data)]))
        };
        let before = mean_nll(&score(&model, &valid));
        let run = dir.join(format!("run-{arch}"));
        #[rustfmt::skip]
        ok(&["train", "--model", s(&model), "--train", s(&train), "--valid", s(&valid),
            "--out", s(&run), "--optimizer", "adamw", "--lr", "3e-3", "--steps", "100",
            "--batch-size", "16", "--log-every", "100", "--seed", "0"]);
        let trained = run.join("model");
        let after = mean_nll(&score(&trained, &valid));
        assert!(after < 0.8 * before, "{arch}: loss {before} → {after}");

        let alone = score(&trained, &ids);
        assert_eq!(alone, score(&trained, &split), "{arch}");
        assert_eq!(alone[0]["token_logprobs"].as_array().unwrap().len(), 4);

        #[rustfmt::skip]
        let generated = json_lines(&ok(&["generate", "--model", s(&trained), "--data", s(&ids),
            "--max-new-tokens", "3"]));
        assert_eq!(generated.len(), 2);
        for line in &generated {
            let new = line["ids"].as_array().unwrap();
            assert!(!new.is_empty() && new.len() <= 3, "{arch}: {line}");
        }

        let fisher = dir.join(format!("fisher-{arch}.safetensors"));
        #[rustfmt::skip]
        ok(&["fisher", "--model", s(&trained), "--data", s(&valid), "--top-k-classes", "4",
            "--out", s(&fisher)]);
        assert!(fisher.exists());
    }
    let short = dir.join("short.jsonl");
    std::fs::write(&short, "{\"input_ids\": [5, 9]}\n{\"input_ids\": [5]}\n").unwrap();
    let err = fails(&[
        "score",
        "--model",
        s(&dir.join("run-decoder-only/model")),
        "--data",
        s(&short),
    ]);
    assert!(
        err.contains("short.jsonl:2") && err.contains("two tokens"),
        "{err}"
    );
    #[rustfmt::skip]
    let err = fails(&["init", "--preset", "bert-tiny", "--arch", "decoder-only", "--seed", "0",
        "--out", s(&dir.join("bert"))]);
    assert!(err.contains("--arch"), "{err}");
}

/// A Switch Transformer from `init --set num_experts=…`: init reports the experts and
/// FLOPs; training logs the router's auxiliary loss and lowers the loss; the Fisher of
/// the hand-written backward (through the router) equals autodiff's; the linear merge of
/// two runs scores below the initial model.
#[test]
fn mixture_of_experts_trains_with_its_auxiliary_loss_fishers_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (train, valid, tok) = reverse_task(dir, 8);
    let model = dir.join("switch");
    #[rustfmt::skip]
    let out = run(&["init", "--preset", "tiny", "--seed", "0", "--tokenizer", s(&tok),
        "--layers", "2", "--d-ff", "32", "--heads", "4", "--set", "d_model=32",
        "--set", "d_kv=8", "--set", "num_experts=4", "--set", "expert_capacity=6",
        "--set", "router_z_loss_coef=0.001", "--out", s(&model)]);
    let said = stderr(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("4 experts, top-1, in 2 encoder and 2 decoder feed-forwards")
            && said.contains("MFLOP per token"),
        "{said}"
    );
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    assert!(config.contains("\"num_experts\": 4"), "{config}");
    let score =
        |model: &Path| json_lines(&ok(&["score", "--model", s(model), "--data", s(&valid)]));
    let before = mean_nll(&score(&model));
    let mut runs = Vec::new();
    for seed in ["0", "1"] {
        let run_dir = dir.join(format!("run-{seed}"));
        #[rustfmt::skip]
        ok(&["train", "--model", s(&model), "--train", s(&train), "--out", s(&run_dir),
            "--optimizer", "adamw", "--lr", "3e-3", "--steps", "60", "--batch-size", "16",
            "--log-every", "20", "--seed", seed]);
        let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
        let logged: Vec<Value> = json_lines(&metrics)
            .into_iter()
            .filter(|row| row.get("loss").is_some())
            .collect();
        assert_eq!(logged.len(), 3, "{metrics}");
        for row in &logged {
            // Four sparse layers, each α·E·Σ fᵢPᵢ ∈ (0, 0.04], plus a small z-loss.
            let aux = row["aux_loss"].as_f64().unwrap();
            assert!(aux > 0.0 && aux < 0.5, "{row}");
        }
        runs.push(run_dir.join("model"));
    }
    let after = mean_nll(&score(&runs[0]));
    assert!(after < 0.8 * before, "loss {before} → {after}");

    let fisher = |gradients: &str| {
        let out = dir.join(format!("fisher-{gradients}.safetensors"));
        #[rustfmt::skip]
        ok(&["fisher", "--model", s(&runs[0]), "--data", s(&valid), "--top-k-classes", "3",
            "--gradients", gradients, "--out", s(&out)]);
        let file = fisherkit_common::st::MappedFile::open(&out).unwrap();
        file.names_in_order()
            .unwrap()
            .into_iter()
            .map(|name| {
                let (_, values) = file.read_f32(&name).unwrap();
                (name, values)
            })
            .collect::<Vec<_>>()
    };
    let (fast, autodiff) = (fisher("fast"), fisher("autodiff"));
    assert!(fast
        .iter()
        .any(|(name, _)| name.contains("mlp.router.classifier")));
    for ((name, a), (_, b)) in fast.iter().zip(&autodiff) {
        let largest = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let differs = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            differs <= 1e-4 * largest.max(1e-12),
            "{name}: fast vs autodiff differ by {differs} (largest {largest})"
        );
    }
    let merged = dir.join("merged");
    #[rustfmt::skip]
    ok(&["merge", "--method", "linear", "--model", s(&runs[0]), "--model", s(&runs[1]),
        "--out", s(&merged)]);
    // The average of two runs from one initialisation stays well below the start.
    let merged_nll = mean_nll(&score(&merged));
    assert!(
        merged_nll < before,
        "merged {merged_nll} vs initial {before}"
    );
}
