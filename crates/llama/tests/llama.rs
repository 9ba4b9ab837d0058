//! Llama against the transformers-made fixture (`testdata/fixtures/llama-tiny`), the
//! per-example backward pass against autodiff, grouped-query attention against the
//! equivalent multi-head model, sampling against its definition, and the checkpoint
//! layout.

use std::path::PathBuf;

use fisherkit_llama::{checkpoint, Llama, LlamaConfig};
use fisherkit_model::burn::tensor::{Device, Tensor, TensorData};
use fisherkit_model::generate::{sample_token, IncrementalDecoder, Sampling};
use fisherkit_model::{Example, GenerateOptions, LengthPenalty, LogProbModel, Model, ParamAccess};
use serde_json::{json, Value};

fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/fixtures/llama-tiny"
    ))
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture_dir().join("cases.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    cases["cases"].as_array().unwrap().clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn greedy(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        num_beams: 1,
        length_penalty: LengthPenalty::Power(1.0),
        max_new_tokens,
        min_new_tokens: 0,
        sampling: None,
    }
}

/// Prompt log-probabilities (all prompts in one padded batch), the logits after each
/// prompt and the greedy continuations (prompts of different lengths in one call) as
/// transformers computed them.
#[test]
fn fixture_scores_and_decodes_like_transformers() {
    let model = checkpoint::load(&fixture_dir(), &Device::flex()).unwrap();
    assert!(model.lm_head.is_none(), "the fixture ties its head");
    let cases = cases();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_ids"])).collect();
    let batch: Vec<Example> = prompts
        .iter()
        .map(|p| Example::new(p[..1].to_vec(), p[1..].to_vec()))
        .collect();
    let scores = fisherkit_model::score(&model, &batch).unwrap();
    for (case, got) in cases.iter().zip(&scores) {
        let want = floats(&case["prompt_token_logprobs"]);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "log-prob {g} vs {w}");
        }
    }
    for (case, prompt) in cases.iter().zip(&prompts) {
        let (_, logits) = model.begin(std::slice::from_ref(prompt)).unwrap();
        let logits: Vec<f32> = logits.try_into_vec_as().unwrap();
        for (g, w) in logits.iter().zip(floats(&case["last_logits_head"])) {
            assert!((g - w).abs() < 1e-4, "logit {g} vs {w}");
        }
    }
    let generated = Model::generate(&model, &prompts, &greedy(12)).unwrap();
    for (case, got) in cases.iter().zip(&generated) {
        assert_eq!(got, &ids(&case["greedy_new_ids"]));
    }
}

/// A micro Llama with every option on: grouped-query attention, untied head, biases,
/// three layers, a short position range.
fn micro_config(settings: Value) -> LlamaConfig {
    let mut config = json!({
        "model_type": "llama", "vocab_size": 29, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 6, "max_position_embeddings": 64, "tie_word_embeddings": false,
        "attention_bias": true, "mlp_bias": true, "initializer_range": 0.2,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0
    });
    for (key, value) in settings.as_object().unwrap() {
        config[key] = value.clone();
    }
    LlamaConfig::from_json(&config).unwrap()
}

/// `Σ w · log p` over the picks, differentiated by burn's autodiff, flat.
fn autodiff_gradient(
    model: &Llama,
    input: &[u32],
    target: &[u32],
    picks: &[(usize, usize, f32)],
) -> Vec<f32> {
    let vocab = model.output_size();
    let lsm = model
        .log_softmax(&[Example::new(input.to_vec(), target.to_vec())])
        .unwrap();
    let mut mask = vec![0f32; target.len() * vocab];
    for &(t, c, w) in picks {
        mask[t * vocab + c] += w;
    }
    let mask = Tensor::<3>::from_data(
        TensorData::new(mask, [1, target.len(), vocab]),
        &model.device(),
    );
    let grads = (lsm * mask).sum().backward();
    model
        .gradients(&grads)
        .unwrap()
        .into_iter()
        .flat_map(|(_, g)| g)
        .collect()
}

/// The shared single-stack backward pass agrees with autodiff for every parameter,
/// tied and untied, with grouped-query attention and biases.
#[test]
fn backprop_equals_autodiff() {
    let device = Device::flex().autodiff();
    for tied in [false, true] {
        let config = micro_config(json!({"tie_word_embeddings": tied}));
        let model = checkpoint::init(&config, 5, &device).unwrap();
        let backprop = model.example_backprop().expect("f32 CPU model");
        let input = vec![1, 7, 3, 19, 4];
        let targets = vec![vec![8, 2], vec![5, 11, 23, 2]];
        let picks = vec![
            vec![(0, 8, 1.0), (1, 2, 1.0), (1, 6, -0.5)],
            vec![(0, 5, 1.0), (3, 2, 0.7), (2, 23, 1.0)],
        ];
        let mut got = Vec::new();
        backprop
            .gradients(
                &Example::new(input.clone(), Vec::new()),
                &targets,
                &mut |_| Ok(vec![picks.clone()]),
                &mut |_, g| {
                    got = g;
                    Ok(())
                },
            )
            .unwrap();
        let mut want = vec![0f32; got.len()];
        for (target, picks) in targets.iter().zip(&picks) {
            let g = autodiff_gradient(&model, &input, target, picks);
            want.iter_mut().zip(g).for_each(|(w, g)| *w += g);
        }
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for spec in model.param_specs() {
            let range = spec.offset..spec.offset + spec.numel();
            for (g, w) in got[range.clone()].iter().zip(&want[range]) {
                assert!(
                    (g - w).abs() <= 1e-4 * scale.max(1.0),
                    "tied={tied} {}: backprop {g} vs autodiff {w}",
                    spec.name
                );
            }
            assert!(
                want[spec.offset..spec.offset + spec.numel()]
                    .iter()
                    .any(|&v| v != 0.0),
                "{} gets no gradient",
                spec.name
            );
        }
    }
}

/// Grouped-query attention is multi-head attention whose key/value heads are shared:
/// the same model with each key/value head copied to its group scores identically.
#[test]
fn grouped_query_attention_equals_multi_head_with_shared_heads() {
    let grouped = checkpoint::init(&micro_config(json!({})), 3, &Device::flex()).unwrap();
    let mut full = checkpoint::init(
        &micro_config(json!({"num_key_value_heads": 4})),
        3,
        &Device::flex(),
    )
    .unwrap();
    let (head_dim, group) = (6, 2);
    let copied: Vec<(String, Vec<f32>)> = grouped
        .read_params()
        .unwrap()
        .into_iter()
        .map(|(name, values)| {
            if !(name.contains("k_proj") || name.contains("v_proj")) {
                return (name, values);
            }
            // Rows are heads × head_dim (weights: each row d_model wide).
            let width = if name.ends_with("bias") { 1 } else { 16 };
            let heads: Vec<&[f32]> = values.chunks(head_dim * width).collect();
            let expanded = heads
                .iter()
                .flat_map(|h| std::iter::repeat_n(*h, group))
                .flatten()
                .copied()
                .collect();
            (name, expanded)
        })
        .collect();
    full.write_params(&copied).unwrap();
    let batch = vec![
        Example::new(vec![1, 7, 3], vec![19, 4, 2]),
        Example::new(vec![1, 9], vec![2]),
    ];
    let a = fisherkit_model::score(&grouped, &batch).unwrap();
    let b = fisherkit_model::score(&full, &batch).unwrap();
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
}

/// Sampling: reproducible from its seed; top-k 1 is greedy; the first token's frequency
/// over many rows matches softmax(logits / T); top-p never leaves the nucleus.
#[test]
fn sampling_follows_its_definition() {
    let model = checkpoint::load(&fixture_dir(), &Device::flex()).unwrap();
    let prompt = ids(&cases()[0]["prompt_ids"]);
    let sample = |sampling: Sampling, rows: usize, tokens: usize| {
        let options = GenerateOptions {
            sampling: Some(sampling),
            ..greedy(tokens)
        };
        Model::generate(&model, &vec![prompt.clone(); rows], &options).unwrap()
    };
    let base = Sampling {
        temperature: 1.0,
        top_k: None,
        top_p: None,
        seed: 7,
    };
    assert_eq!(sample(base, 4, 6), sample(base, 4, 6));
    assert_ne!(
        sample(base, 8, 6),
        sample(Sampling { seed: 8, ..base }, 8, 6)
    );
    let one = sample(
        Sampling {
            top_k: Some(1),
            ..base
        },
        2,
        12,
    );
    let want = Model::generate(&model, std::slice::from_ref(&prompt), &greedy(12)).unwrap();
    assert_eq!(one[0], want[0]);

    let (_, logits) = model.begin(std::slice::from_ref(&prompt)).unwrap();
    let logits: Vec<f32> = logits.try_into_vec_as().unwrap();
    let temperature = 2.5;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let rows = 4000;
    let draws = sample(
        Sampling {
            temperature,
            ..base
        },
        rows,
        1,
    );
    let mut counts = vec![0usize; logits.len()];
    for d in &draws {
        counts[d[0] as usize] += 1;
    }
    for (token, &count) in counts.iter().enumerate() {
        let p = weights[token] / total;
        let expected = p * rows as f64;
        let sd = (rows as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (count as f64 - expected).abs() <= 5.0 * sd + 1.0,
            "token {token}: {count} draws, expected {expected:.1} ± {sd:.1}"
        );
    }

    // The nucleus at p = 0.6 from the sorted probabilities; every draw is inside it.
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let probs: Vec<f64> = {
        let w: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
        let t: f64 = w.iter().sum();
        w.iter().map(|v| v / t).collect()
    };
    let mut mass = 0.0;
    let nucleus: Vec<usize> = order
        .iter()
        .copied()
        .take_while(|&i| {
            let inside = mass < 0.6;
            mass += probs[i];
            inside
        })
        .collect();
    let draws = sample(
        Sampling {
            top_p: Some(0.6),
            ..base
        },
        500,
        1,
    );
    assert!(draws.iter().all(|d| nucleus.contains(&(d[0] as usize))));
    // u just below 1 picks the least likely token kept.
    let row: Vec<f32> = logits.clone();
    let last = sample_token(
        &row,
        &Sampling {
            top_p: Some(0.6),
            ..base
        },
        0.999_999,
    );
    assert_eq!(last as usize, *nucleus.last().unwrap());
}

/// HF names; a saved model (tied: no `lm_head.weight`) loads back to the same scores;
/// config keys other than the model's survive.
#[test]
fn checkpoints_round_trip_in_the_hf_layout() {
    let model = checkpoint::load(&fixture_dir(), &Device::flex()).unwrap();
    let names: Vec<String> = model.param_specs().into_iter().map(|s| s.name).collect();
    for name in [
        "model.embed_tokens.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight",
    ] {
        assert!(names.contains(&name.to_string()), "{name} in {names:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = checkpoint::save(&model, &tmp.path().join("m"), None, false).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["id2label"]["0"], "LABEL_0");
    assert_eq!(config["tie_word_embeddings"], true);
    let loaded = checkpoint::load(&dir, &Device::flex()).unwrap();
    let batch = vec![Example::new(vec![1, 23], vec![39, 25, 3])];
    assert_eq!(
        fisherkit_model::score(&loaded, &batch).unwrap(),
        fisherkit_model::score(&model, &batch).unwrap()
    );
}

#[test]
fn bad_configs_and_inputs_are_named() {
    let err =
        LlamaConfig::from_json(&json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}))
            .unwrap_err()
            .to_string();
    assert!(err.contains("llama3"), "{err}");
    let err = LlamaConfig::from_json(&json!({"num_attention_heads": 6, "num_key_value_heads": 4}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_key_value_heads"), "{err}");
    let config = LlamaConfig::from_json(
        &json!({"eos_token_id": [7, 9], "vocab_size": 10, "pad_token_id": null}),
    )
    .unwrap();
    assert_eq!((config.eos_token_id, config.pad_token_id), (7, 7));
    let model = checkpoint::init(&micro_config(json!({})), 1, &Device::flex()).unwrap();
    let long: Vec<u32> = (0..70).map(|i| i % 29).collect();
    let err = fisherkit_model::score(&model, &[Example::new(long, vec![2])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
    let err = fisherkit_model::score(&model, &[Example::new(vec![1, 40], vec![2])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("token id 40"), "{err}");
}
