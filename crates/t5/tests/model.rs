//! Properties of the T5 implementation that do not need the HF fixtures: golden bucket
//! tables from the spec, finite-difference gradients, gradients reaching every
//! parameter, save → load round trips, parameter counts and bad checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fisherkit_common::st::{MappedFile, OwnedTensor};
use fisherkit_model::burn::tensor::{DType, Device};
use fisherkit_model::{Example, LogProbModel, ParamAccess, ParamMut};
use fisherkit_t5::{checkpoint, relative_position_bucket, T5Config, T5};

mod common;
use common::{micro_batch, micro_config, switch_model, switches};

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/fixtures"
    ))
    .join(name)
}

#[test]
fn golden_bucket_tables() {
    let encoder = [
        (-1, 1),
        (-7, 7),
        (-8, 8),
        (-12, 9),
        (-16, 10),
        (-23, 11),
        (-32, 12),
        (-46, 13),
        (-64, 14),
        (-91, 15),
        (-128, 15),
        (1, 17),
        (7, 23),
        (8, 24),
        (16, 26),
        (32, 28),
        (64, 30),
        (127, 31),
    ];
    for (rp, bucket) in encoder {
        assert_eq!(
            relative_position_bucket(rp, true, 32, 128),
            bucket,
            "encoder rp {rp}"
        );
    }
    let mut decoder: Vec<(i64, usize)> = (0..16).map(|n| (n, n as usize)).collect();
    decoder.extend([
        (16, 16),
        (19, 17),
        (22, 18),
        (26, 19),
        (27, 20),
        (31, 21),
        (38, 22),
        (45, 23),
        (46, 24),
        (54, 25),
        (64, 26),
        (77, 28),
        (91, 29),
        (108, 30),
        (127, 31),
    ]);
    for (distance, bucket) in decoder {
        // key - query = -distance; future keys (masked anyway) land in bucket 0.
        assert_eq!(
            relative_position_bucket(-distance, false, 32, 128),
            bucket,
            "decoder n {distance}"
        );
    }
    assert_eq!(relative_position_bucket(5, false, 32, 128), 0);
}

fn loss_f64(model: &T5, batch: &[Example]) -> f64 {
    let lp = model.target_logprobs(batch).unwrap();
    lp.sum().try_into_vec_as::<f64>().unwrap()[0]
}

/// Central differences in f64 against backward() for a few coordinates of every
/// parameter.
fn check_finite_differences(model: &mut T5, label: &str) {
    model.cast_params(DType::F64).unwrap();
    let batch = micro_batch();
    let loss = model.target_logprobs(&batch).unwrap().sum();
    let grads = model.gradients(&loss.backward()).unwrap();
    let specs = model.param_specs();
    let h = 1e-6;
    let mut mismatches = Vec::new();
    for (spec, (name, grad)) in specs.iter().zip(&grads) {
        let values: Vec<f64> = {
            let params = model.named_params();
            params
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .to_vec::<f64>()
                .unwrap()
        };
        for k in 0..3 {
            let index = (k * 7919 + 13) % spec.numel();
            let mut eval = |delta: f64| {
                let mut perturbed = values.clone();
                perturbed[index] += delta;
                set(model, name, perturbed);
                loss_f64(model, &batch)
            };
            let numeric = (eval(h) - eval(-h)) / (2.0 * h);
            set(model, name, values.clone());
            let analytic = grad[index] as f64;
            let scale = numeric.abs().max(analytic.abs()).max(1e-3);
            if (numeric - analytic).abs() / scale >= 1e-4 {
                mismatches.push(format!(
                    "{name}[{index}]: numeric {numeric} vs backward {analytic}"
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{label}:\n{}", mismatches.join("\n"));
}

/// The v1.0 and the gated v1.1 layout.
#[test]
fn finite_difference_gradients_f64() {
    for gated in [false, true] {
        let config = micro_config(gated);
        let device = Device::flex().autodiff();
        let mut model = checkpoint::init(&config, gated, 7, &device).unwrap();
        check_finite_differences(&mut model, &format!("gated={gated}"));
    }
}

/// The decoder-only and prefix LMs' burn forward: autodiff against finite differences.
#[test]
fn finite_difference_gradients_f64_for_single_stack_lms() {
    for architecture in ["decoder-only", "prefix-lm"] {
        for gated in [false, true] {
            let mut config = micro_config(gated);
            config.architecture = Some(architecture.into());
            config.num_decoder_layers = Some(2);
            let device = Device::flex().autodiff();
            let mut model = checkpoint::init(&config, gated, 7, &device).unwrap();
            check_finite_differences(&mut model, &format!("{architecture} gated={gated}"));
        }
    }
}

/// Every transformer-modification switch: autodiff of the burn forward against
/// finite differences, and every parameter reached by the loss.
#[test]
fn finite_difference_gradients_f64_for_every_switch() {
    for (label, settings) in switches() {
        let mut model = switch_model(&settings, 7, &Device::flex().autodiff());
        let loss = model.target_logprobs(&micro_batch()).unwrap().sum();
        for (name, grad) in model.gradients(&loss.backward()).unwrap() {
            assert!(
                grad.iter().any(|&g| g != 0.0) && grad.iter().all(|g| g.is_finite()),
                "{label} {name}: gradient all zero or not finite"
            );
        }
        check_finite_differences(&mut model, &label);
    }
}

fn set(model: &mut T5, name: &str, values: Vec<f64>) {
    let mut params = model.named_params_mut();
    let (_, param) = params.iter_mut().find(|(n, _)| n == name).unwrap();
    let param: &mut ParamMut = param;
    param.set_values(values).unwrap();
}

#[test]
fn every_parameter_gets_a_gradient() {
    for gated in [false, true] {
        let config = micro_config(gated);
        let model = checkpoint::init(&config, gated, 3, &Device::flex().autodiff()).unwrap();
        let loss = model.target_logprobs(&micro_batch()).unwrap().sum();
        let grads = model.gradients(&loss.backward()).unwrap();
        let names: Vec<&str> = grads.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        );
        assert_eq!(names.contains(&"lm_head.weight"), gated);
        for (name, grad) in &grads {
            assert!(
                grad.iter().all(|g| g.is_finite()),
                "{name}: non-finite gradient"
            );
            assert!(
                grad.iter().any(|&g| g != 0.0),
                "{name}: gradient is all zero"
            );
        }
    }
}

#[test]
fn dropout_only_in_training_mode() {
    let mut config = micro_config(true);
    config.dropout_rate = 0.5;
    let mut model = checkpoint::init(&config, true, 1, &Device::flex()).unwrap();
    let batch = micro_batch();
    let eval_a = fisherkit_t5::score(&model, &batch).unwrap();
    let eval_b = fisherkit_t5::score(&model, &batch).unwrap();
    assert_eq!(eval_a, eval_b, "eval mode must be deterministic");
    model.set_training(true);
    let train = fisherkit_t5::score(&model, &batch).unwrap();
    assert_ne!(train, eval_a, "training mode must apply dropout");
}

#[test]
fn preset_parameter_counts_match_the_spec() {
    // Counted from shapes alone (no allocation of the real sizes).
    fn count(config: &T5Config) -> usize {
        let (d, inner, ff) = (config.d_model, config.inner_dim(), config.d_ff);
        let gated = config.feed_forward().gated;
        let attention = 4 * d * inner;
        let ffn = if gated { 3 * d * ff } else { 2 * d * ff };
        let bias = config.relative_attention_num_buckets * config.num_heads;
        let encoder = config.num_layers * (attention + ffn + 2 * d) + bias + d;
        let decoder = config.decoder_layers() * (2 * attention + ffn + 3 * d) + bias + d;
        let head = if config.tie_word_embeddings {
            0
        } else {
            config.vocab_size * d
        };
        config.vocab_size * d + encoder + decoder + head
    }
    for (preset, params) in [
        ("t5-small", 60_506_624),
        ("t5-base", 222_903_552),
        ("t5-large", 737_668_096),
        ("t5-v1_1-small", 76_961_152),
    ] {
        assert_eq!(
            count(&T5Config::preset(preset).unwrap()),
            params,
            "{preset}"
        );
    }
    // And the count formula agrees with the real model on a small shape.
    let config = micro_config(true);
    let model = checkpoint::init(&config, true, 0, &Device::flex()).unwrap();
    assert_eq!(model.num_params(), count(&config));
}

/// Parameters of a config counted from the switches' definitions alone (README "Model
/// switches"), independently of the model code.
fn count_with_switches(config: &T5Config) -> usize {
    let (d, ff) = (config.d_model, config.d_ff);
    let (inner, kv_inner) = (config.inner_dim(), config.kv_heads() * config.d_kv);
    let norm_type = config.norm_type.as_deref().unwrap_or("rms");
    let norm = match norm_type {
        "rms" | "rezero_rms" => d,
        "layer" | "rezero_layer" => 2 * d,
        _ => 0,
    };
    let residual = match norm_type {
        "rezero" | "rezero_layer" | "rezero_rms" => 1,
        "fixup" => 3,
        _ => 0,
    };
    let sublayer = norm + residual;
    let attention = 2 * d * inner + 2 * d * kv_inner;
    let ffn = if config.feed_forward().gated {
        3 * d * ff
    } else {
        2 * d * ff
    };
    let positions = match config
        .position_embedding_type
        .as_deref()
        .unwrap_or("relative")
    {
        "relative" => config.relative_attention_num_buckets * config.num_heads,
        "absolute" => config.max_positions() * d,
        _ => 0,
    };
    let share = config.share_layers.as_deref().unwrap_or("none");
    let encoder_blocks = if matches!(share, "encoder" | "all") {
        1
    } else {
        config.num_layers
    };
    let decoder_blocks = if matches!(share, "decoder" | "all") {
        1
    } else {
        config.decoder_layers()
    };
    let encoder = encoder_blocks * (attention + ffn + 2 * sublayer) + positions + norm;
    let decoder = decoder_blocks * (2 * attention + ffn + 3 * sublayer) + positions + norm;
    let width = config.embedding_width();
    let embedding = config.vocab_size * width + if width != d { d * width } else { 0 };
    let head = if config.tie_word_embeddings {
        0
    } else {
        config.vocab_size * d
    };
    embedding + encoder + decoder + head
}

/// Every switch on the `tiny` preset: the model's parameter count equals the closed form
/// (the README's switch table quotes these numbers).
#[test]
fn switch_parameter_counts_match_closed_forms() {
    let tiny = T5Config::preset("tiny").unwrap();
    for (label, settings) in tiny.switch_settings() {
        let config = tiny.with_settings(&settings).unwrap();
        let model = T5::skeleton(&config, !config.tie_word_embeddings, &Device::flex()).unwrap();
        assert_eq!(model.num_params(), count_with_switches(&config), "{label}");
        eprintln!("tiny {label}: {}", model.num_params());
    }
}

fn tensors_of(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let file = MappedFile::open(path).unwrap();
    file.names_in_order()
        .unwrap()
        .into_iter()
        .map(|name| {
            let tensor = file.read_f32(&name).unwrap();
            (name, tensor)
        })
        .collect()
}

#[test]
fn save_load_round_trip_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    for fixture in ["t5-tiny-v10", "t5-tiny-v11"] {
        let model = checkpoint::load(&fixture_dir(fixture), &Device::flex()).unwrap();
        let out = tmp.path().join(fixture);
        checkpoint::save(&model, &out, None, false).unwrap();
        // Same names, shapes and bits as the HF file.
        let original = tensors_of(&fixture_dir(fixture).join("model.safetensors"));
        let saved = tensors_of(&out.join("model.safetensors"));
        assert_eq!(original, saved, "{fixture}");
        let file = MappedFile::open(&out.join("model.safetensors")).unwrap();
        assert_eq!(
            file.metadata().unwrap().get("format").map(String::as_str),
            Some("pt")
        );
        // The config keys HF reads are all there and mean the same.
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let original: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir(fixture).join("config.json")).unwrap(),
        )
        .unwrap();
        for key in original.as_object().unwrap().keys() {
            assert!(
                config.get(key).is_some(),
                "{fixture}: config key {key} lost"
            );
        }
        for key in [
            "d_model",
            "d_kv",
            "num_heads",
            "feed_forward_proj",
            "scale_decoder_outputs",
        ] {
            assert_eq!(config[key], original[key], "{fixture}: {key}");
        }
        let reloaded = checkpoint::load(&out, &Device::flex()).unwrap();
        assert_eq!(
            model.read_params().unwrap(),
            reloaded.read_params().unwrap()
        );
        let batch = micro_batch();
        assert_eq!(
            fisherkit_t5::score(&model, &batch).unwrap(),
            fisherkit_t5::score(&reloaded, &batch).unwrap()
        );
        // Refuses to overwrite unless asked.
        assert!(checkpoint::save(&model, &out, None, false).is_err());
    }
}

#[test]
fn untied_head_round_trips_and_sharded_bf16_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let config = micro_config(true);
    let model = checkpoint::init(&config, true, 11, &Device::flex()).unwrap();
    let dir = tmp.path().join("untied");
    checkpoint::save(&model, &dir, None, false).unwrap();
    let config_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config_json["tie_word_embeddings"], false);
    assert!(tensors_of(&dir.join("model.safetensors")).contains_key("lm_head.weight"));

    // Re-shard in bf16 across two files with an index, as large HF checkpoints are.
    let sharded = tmp.path().join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    std::fs::copy(dir.join("config.json"), sharded.join("config.json")).unwrap();
    let tensors = model.read_params().unwrap();
    let mut weight_map = serde_json::Map::new();
    let mut shards: [Vec<(String, OwnedTensor)>; 2] = Default::default();
    let mut rounded = Vec::new();
    for (i, ((name, values), spec)) in tensors.iter().zip(model.param_specs()).enumerate() {
        let bf: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
        rounded.push((
            name.clone(),
            bf.iter().map(|v| v.to_f32()).collect::<Vec<f32>>(),
        ));
        let tensor = OwnedTensor {
            dtype: safetensors::Dtype::BF16,
            shape: spec.shape.clone(),
            data: bf.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        weight_map.insert(name.clone(), file.into());
        shards[i % 2].push((name.clone(), tensor));
    }
    for (i, shard) in shards.iter().enumerate() {
        let path = sharded.join(format!("model-0000{}-of-00002.safetensors", i + 1));
        fisherkit_common::st::write(&path, shard, HashMap::new()).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let loaded = checkpoint::load(&sharded, &Device::flex()).unwrap();
    assert_eq!(loaded.read_params().unwrap(), rounded);
}

#[test]
fn bad_checkpoints_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let v10 = fixture_dir("t5-tiny-v10");
    let copy = |name: &str, config: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(v10.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
        dir
    };
    let original = std::fs::read_to_string(v10.join("config.json")).unwrap();
    let err = |dir: &Path| format!("{:#}", checkpoint::load(dir, &Device::flex()).unwrap_err());

    let wrong_shape = copy("shape", &original.replace("\"d_ff\": 128", "\"d_ff\": 100"));
    let message = err(&wrong_shape);
    assert!(
        message.contains("DenseReluDense.wi.weight")
            && message.contains("[128, 64]")
            && message.contains("[100, 64]"),
        "{message}"
    );

    let unknown_act = copy(
        "act",
        &original.replace(
            "\"feed_forward_proj\": \"relu\"",
            "\"feed_forward_proj\": \"gated-wobble\"",
        ),
    );
    assert!(err(&unknown_act).contains("wobble"));

    let malformed = copy("malformed", "{ not json");
    assert!(err(&malformed).contains("config.json"));

    let missing = tmp.path().join("empty");
    std::fs::create_dir(&missing).unwrap();
    std::fs::write(missing.join("config.json"), &original).unwrap();
    assert!(err(&missing).contains("model.safetensors"));

    let model = checkpoint::load(&v10, &Device::flex()).unwrap();
    let out_of_vocab = vec![Example::new(vec![3, 300], vec![1])];
    let message = format!(
        "{:#}",
        fisherkit_t5::score(&model, &out_of_vocab).unwrap_err()
    );
    assert!(message.contains("300"), "{message}");
    let empty = vec![Example::new(vec![], vec![1])];
    assert!(fisherkit_t5::score(&model, &empty).is_err());
}

/// The micro model with mixture-of-experts feed-forwards: `experts` experts, top-`top_k`,
/// `capacity` tokens per sequence, sparse in every layer of two-layer stacks.
fn moe_model(top_k: usize, capacity: usize, extra: &[(&str, &str)], device: &Device) -> T5 {
    let mut settings: Vec<(String, String)> = [
        ("num_experts", "4".to_string()),
        ("num_experts_per_tok", top_k.to_string()),
        ("expert_capacity", capacity.to_string()),
        ("num_decoder_layers", "2".to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec();
    settings.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    switch_model(&settings, 5, device)
}

/// The router and the experts: autodiff of the burn forward against finite differences
/// (top-1 and top-2, a capacity that drops choices of the 8-token input).
#[test]
fn finite_difference_gradients_f64_for_mixtures_of_experts() {
    for top_k in [1, 2] {
        let mut model = moe_model(top_k, 2, &[], &Device::flex().autodiff());
        check_finite_differences(&mut model, &format!("experts top-{top_k}"));
    }
}

/// One input token and one target token: each sparse layer routes one token (top-1), so
/// exactly one expert per layer has a gradient and the other three have exactly zero,
/// while every router's gradient is non-zero (softmax reaches all its rows).
#[test]
fn an_expert_no_token_reaches_gets_a_zero_gradient() {
    let model = moe_model(1, 4, &[], &Device::flex().autodiff());
    let batch = [Example::new(vec![7], vec![3])];
    let loss = model.target_logprobs(&batch).unwrap().sum();
    let grads = model.gradients(&loss.backward()).unwrap();
    let mut layers: HashMap<String, Vec<bool>> = HashMap::new();
    for (name, grad) in &grads {
        if let Some((layer, rest)) = name.split_once("mlp.experts.expert_") {
            let reached = grad.iter().any(|&g| g != 0.0);
            let expert: usize = rest.split('.').next().unwrap().parse().unwrap();
            let entry = layers.entry(layer.to_string()).or_insert(vec![false; 4]);
            entry[expert] |= reached;
        }
        if name.ends_with("router.classifier.weight") {
            assert!(grad.iter().any(|&g| g != 0.0), "{name}");
        }
    }
    assert_eq!(layers.len(), 4, "two sparse layers per stack: {layers:?}");
    for (layer, reached) in &layers {
        assert_eq!(
            reached.iter().filter(|&&r| r).count(),
            1,
            "{layer}: {reached:?}"
        );
    }
}

/// Capacity is per sequence and padding comes last, so an example scores the same alone
/// and beside a longer one (whose tokens and padding would otherwise compete for the
/// experts); a capacity of 1 makes every layer drop tokens.
#[test]
fn expert_routing_does_not_depend_on_the_batch() {
    for top_k in [1, 2] {
        let model = moe_model(top_k, 1, &[], &Device::flex());
        let batch = micro_batch();
        let together = fisherkit_t5::score(&model, &batch).unwrap();
        for (i, example) in batch.iter().enumerate() {
            let alone = fisherkit_t5::score(&model, std::slice::from_ref(example)).unwrap();
            for (a, b) in alone[0].iter().zip(&together[i]) {
                assert!((a - b).abs() < 1e-5, "top-{top_k} example {i}: {a} vs {b}");
            }
        }
    }
}

/// The experts' parameters by closed form: every sparse layer replaces one feed-forward
/// by E of them and a d × E router (HF's sparse step 2: layers 1 and 3 of each stack).
#[test]
fn mixture_of_experts_parameter_count_matches_the_closed_form() {
    let tiny = T5Config::preset("tiny").unwrap();
    let dense = T5::skeleton(&tiny, !tiny.tie_word_embeddings, &Device::flex())
        .unwrap()
        .num_params();
    let (d, ff) = (tiny.d_model, tiny.d_ff);
    let ffn = if tiny.feed_forward().gated { 3 } else { 2 } * d * ff;
    for (step, sparse_layers) in [(1, 8), (2, 4)] {
        let config = tiny
            .with_settings(
                &[
                    ("num_experts", "8".to_string()),
                    ("encoder_sparse_step", step.to_string()),
                    ("decoder_sparse_step", step.to_string()),
                ]
                .map(|(k, v)| (k.to_string(), v)),
            )
            .unwrap();
        assert_eq!(
            tiny.num_layers, 4,
            "the closed form assumes tiny's 4 + 4 layers"
        );
        let model = T5::skeleton(&config, !config.tie_word_embeddings, &Device::flex()).unwrap();
        assert_eq!(
            model.num_params(),
            dense + sparse_layers * (7 * ffn + d * 8),
            "sparse step {step}"
        );
        assert_eq!(
            config.sparse_layers().0 + config.sparse_layers().1,
            sparse_layers
        );
    }
}

/// A training forward collects one auxiliary loss per sparse layer, each α·E·Σ fᵢPᵢ in
/// (0, α·E] (the Pᵢ are positive, Σ fᵢ = 1, Pᵢ ≤ 1); the z-loss adds to it; α = 0
/// removes it.
#[test]
fn training_forwards_collect_one_auxiliary_loss_per_sparse_layer() {
    use fisherkit_model::auxiliary::collect;
    use fisherkit_model::Model;
    let batch = micro_batch();
    let total = |model: &T5| {
        let (logits, losses) = collect(|| model.logits(&batch));
        logits.unwrap();
        assert_eq!(losses.len(), 4);
        losses
            .into_iter()
            .map(|l| l.into_scalar::<f32>())
            .sum::<f32>()
    };
    let device = Device::flex();
    let plain = total(&moe_model(1, 4, &[], &device));
    let with_z = total(&moe_model(1, 4, &[("router_z_loss_coef", "0.5")], &device));
    assert!(plain > 0.0 && plain <= 4.0 * 0.01 * 4.0, "{plain}");
    assert!(with_z > plain, "{with_z} vs {plain}");
    let unweighted = total(&moe_model(1, 4, &[("router_aux_loss_coef", "0")], &device));
    assert_eq!(unweighted, 0.0);
}

/// Inconsistent expert settings are refused naming the key.
#[test]
fn bad_expert_settings_are_named() {
    let tiny = T5Config::preset("tiny").unwrap();
    for (settings, key) in [
        (vec![("num_experts", "1")], "num_experts"),
        (
            vec![("num_experts", "4"), ("num_experts_per_tok", "3")],
            "num_experts_per_tok",
        ),
        (vec![("expert_capacity", "8")], "expert_capacity"),
        (
            vec![("num_experts", "4"), ("router_aux_loss_coef", "-1")],
            "router_aux_loss_coef",
        ),
        (
            vec![("num_experts", "4"), ("decoder_sparse_step", "0")],
            "decoder_sparse_step",
        ),
    ] {
        let settings: Vec<(String, String)> = settings
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let err = format!("{:#}", tiny.with_settings(&settings).unwrap_err());
        assert!(err.contains(key), "{settings:?}: {err}");
    }
}

/// Dropping is causal: in a decoder-only LM whose experts take one token per sequence,
/// a target's log-probabilities do not change when later target tokens are appended
/// (GShard's first-choices-first order would let later tokens take capacity from
/// earlier second choices).
#[test]
fn expert_capacity_keeps_a_decoder_causal() {
    for top_k in [1, 2] {
        let model = moe_model(
            top_k,
            1,
            &[("architecture", "decoder-only")],
            &Device::flex(),
        );
        let full = Example::new(vec![5, 9, 3], vec![4, 8, 15, 16, 1, 7, 2]);
        let whole = fisherkit_t5::score(&model, std::slice::from_ref(&full)).unwrap();
        for cut in 1..full.target_ids.len() {
            let prefix = Example::new(full.input_ids.clone(), full.target_ids[..cut].to_vec());
            let part = fisherkit_t5::score(&model, &[prefix]).unwrap();
            for (t, (a, b)) in part[0].iter().zip(&whole[0]).enumerate() {
                assert!(
                    (a - b).abs() < 1e-5,
                    "top-{top_k} cut {cut} position {t}: {a} vs {b}"
                );
            }
        }
    }
}
