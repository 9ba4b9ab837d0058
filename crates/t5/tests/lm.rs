//! The T5 paper's single-stack architectures (config `architecture`): decoder-only and
//! prefix LMs built from the same parts. Masks against a brute-force reference, padded
//! batches against examples scored alone, cached generation against recomputation from
//! scratch, and the checkpoint layout.

use fisherkit_model::burn::tensor::{DType, Device};
use fisherkit_model::{Example, GenerateOptions, LengthPenalty, LogProbModel, Model, ParamAccess};
use fisherkit_nn::attention::{causal_mask, lm_mask, Mask, MASKED};
use fisherkit_t5::{checkpoint, T5Config, T5};

mod common;
use common::micro_config;

const SINGLE_STACKS: [&str; 2] = ["decoder-only", "prefix-lm"];

/// The micro config as a single-stack LM of two layers (so that later positions also
/// read earlier positions' states).
fn lm_config(architecture: &str, gated: bool) -> T5Config {
    let mut config = micro_config(gated);
    config.architecture = Some(architecture.into());
    config.num_decoder_layers = Some(2);
    config
}

fn lm(architecture: &str, seed: u64) -> T5 {
    let config = lm_config(architecture, false);
    checkpoint::init(&config, false, seed, &Device::flex()).unwrap()
}

/// Whether position `query` may see position `key`, written from the definitions: a
/// causal model sees itself and the past; a prefix LM's prefix positions also see the
/// whole prefix.
fn visible(query: usize, key: usize, prefix: usize) -> bool {
    let past = key <= query;
    let both_in_prefix = query < prefix && key < prefix;
    past || both_in_prefix
}

/// The additive masks the burn forward uses, entry by entry, against [`visible`] (and
/// padding keys hidden from every query).
#[test]
fn masks_match_a_brute_force_reference() {
    let device = Device::flex();
    let lengths = [7, 4, 7];
    let masks = [Mask::Causal, Mask::Prefix(3), Mask::Prefix(7)];
    let prefixes = [0, 3, 7];
    let len = 7;
    let values: Vec<f32> = lm_mask(&lengths, &masks, len, &device, DType::F32)
        .try_into_vec_as()
        .unwrap();
    for b in 0..3 {
        for q in 0..len {
            for k in 0..len {
                let want = visible(q, k, prefixes[b]) && k < lengths[b];
                let got = values[(b * len + q) * len + k];
                assert_eq!(got == 0.0, want, "row {b} query {q} key {k}: {got}");
                assert!(got == 0.0 || got == MASKED);
            }
        }
    }
    // Decoding step by step: queries 5.. over keys 0..8 with a prompt of 4.
    let values: Vec<f32> = causal_mask(5, 3, 8, 4, &device, DType::F32)
        .try_into_vec_as()
        .unwrap();
    for (i, q) in (5..8).enumerate() {
        for k in 0..8 {
            assert_eq!(values[i * 8 + k] == 0.0, visible(q, k, 4), "{q} {k}");
        }
    }
}

/// Through the whole model (two layers, so information also flows through earlier
/// positions' states): the hidden state at `i` depends on token `j` exactly when `i` may
/// see `j` — no position sees a future token, prefix positions see each other.
#[test]
fn hidden_states_depend_on_exactly_the_visible_tokens() {
    let sequence: Vec<u32> = vec![5, 9, 3, 17, 2, 11, 7, 1, 13];
    let n = sequence.len();
    for architecture in SINGLE_STACKS {
        let model = lm(architecture, 3);
        let prefix = if architecture == "prefix-lm" { 4 } else { 0 };
        let mask = model.config().lm_mask(prefix).unwrap();
        let hidden = |seq: &[u32]| -> Vec<f32> {
            model
                .sequence_hidden(&[seq.to_vec()], &[mask])
                .unwrap()
                .try_into_vec_as()
                .unwrap()
        };
        let base = hidden(&sequence);
        let d = base.len() / n;
        for j in 0..n {
            let mut changed = sequence.clone();
            changed[j] = (changed[j] + 6) % 23;
            let other = hidden(&changed);
            for i in 0..n {
                let difference = (0..d)
                    .map(|c| (base[i * d + c] - other[i * d + c]).abs())
                    .fold(0f32, f32::max);
                if visible(i, j, prefix) {
                    assert!(difference > 1e-4, "{architecture}: {i} does not see {j}");
                } else {
                    assert!(
                        difference == 0.0,
                        "{architecture}: {i} sees {j} ({difference})"
                    );
                }
            }
        }
    }
}

fn batch() -> Vec<Example> {
    vec![
        Example::new(vec![5, 9, 3, 17, 2, 11, 7, 1], vec![4, 8, 15, 16, 1]),
        Example::new(vec![22, 6, 1], vec![12, 1]),
        Example::new(vec![3], vec![7, 7, 2, 9, 14, 1, 5, 8, 1]),
    ]
}

/// A padded batch scores every example as it scores alone (the padding and the
/// per-example prefixes are masked), and scoring is the log-softmax of the logits.
#[test]
fn padded_batches_score_like_examples_alone() {
    for architecture in SINGLE_STACKS {
        let model = lm(architecture, 5);
        let together = fisherkit_model::score(&model, &batch()).unwrap();
        for (example, got) in batch().iter().zip(&together) {
            let alone = fisherkit_model::score(&model, std::slice::from_ref(example)).unwrap();
            assert_eq!(got.len(), example.target_ids.len());
            for (g, a) in got.iter().zip(&alone[0]) {
                assert!((g - a).abs() < 1e-5, "{architecture}: {g} vs {a}");
                assert!(*g < 0.0);
            }
        }
    }
}

/// With positions that do not depend on direction (absolute), the two architectures
/// with the same weights differ only in the mask: identical scores when the input is a
/// single token (a prefix of one is causal), different ones when it is longer (the
/// second layer reads prefix states that saw later prefix tokens).
#[test]
fn decoder_only_and_prefix_lm_differ_only_in_the_mask() {
    let build = |architecture: &str| {
        let config = lm_config(architecture, false)
            .with_settings(&[("position_embedding_type".into(), "absolute".into())])
            .unwrap();
        checkpoint::init(&config, false, 9, &Device::flex()).unwrap()
    };
    let decoder_only = build("decoder-only");
    let mut prefix_lm = build("prefix-lm");
    prefix_lm
        .write_params(&decoder_only.read_params().unwrap())
        .unwrap();
    let score = |model: &T5, input: Vec<u32>| {
        fisherkit_model::score(model, &[Example::new(input, vec![4, 8, 1])]).unwrap()
    };
    let (a, b) = (score(&decoder_only, vec![5]), score(&prefix_lm, vec![5]));
    assert_eq!(a, b);
    let (a, b) = (
        score(&decoder_only, vec![5, 9, 3]),
        score(&prefix_lm, vec![5, 9, 3]),
    );
    assert!(
        a[0].iter().zip(&b[0]).all(|(x, y)| (x - y).abs() > 1e-5),
        "every target position reads the prefix: {a:?} {b:?}"
    );
}

/// Cached greedy decoding of prompts of different lengths in one call equals taking,
/// step by step, the argmax of the teacher-forced logits recomputed from scratch.
#[test]
fn cached_greedy_decoding_equals_recomputation() {
    let prompts = vec![vec![5, 9, 3, 17], vec![22, 6], vec![8, 8, 14, 2], vec![19]];
    let options = GenerateOptions {
        num_beams: 1,
        length_penalty: LengthPenalty::Power(1.0),
        max_new_tokens: 6,
        min_new_tokens: 0,
        sampling: None,
    };
    for architecture in SINGLE_STACKS {
        let model = lm(architecture, 13);
        let eos = model.config().eos_token_id;
        let generated = Model::generate(&model, &prompts, &options).unwrap();
        for (prompt, got) in prompts.iter().zip(&generated) {
            let mut want: Vec<u32> = Vec::new();
            while want.len() < options.max_new_tokens && want.last() != Some(&eos) {
                // The target's last position is the one being predicted (its id is
                // only a placeholder: targets are shifted).
                let mut target = want.clone();
                target.push(0);
                let logits =
                    Model::logits(&model, &[Example::new(prompt.clone(), target)]).unwrap();
                let [_, len, vocab] = logits.dims();
                let row: Vec<f32> = logits.try_into_vec_as().unwrap();
                let last = &row[(len - 1) * vocab..];
                want.push(fisherkit_model::argmax(last) as u32);
            }
            assert_eq!(got, &want, "{architecture}: prompt {prompt:?}");
        }
    }
}

/// With as many beams as tokens and two steps, beam search is exhaustive: its answer
/// is the best of every one- and two-token continuation, scored from scratch.
#[test]
fn wide_beam_search_finds_the_best_continuation() {
    let vocab = 23u32;
    let options = GenerateOptions {
        num_beams: vocab as usize,
        length_penalty: LengthPenalty::Power(0.0),
        max_new_tokens: 2,
        min_new_tokens: 0,
        sampling: None,
    };
    let prompts = vec![vec![5u32, 9, 3], vec![12, 4, 7]];
    for architecture in SINGLE_STACKS {
        let model = lm(architecture, 17);
        let eos = model.config().eos_token_id;
        let got = Model::generate(&model, &prompts, &options).unwrap();
        for (prompt, got) in prompts.iter().zip(&got) {
            let mut candidates = vec![vec![eos]];
            for a in (0..vocab).filter(|&a| a != eos) {
                candidates.extend((0..vocab).map(|b| vec![a, b]));
            }
            let examples: Vec<Example> = candidates
                .iter()
                .map(|c| Example::new(prompt.clone(), c.clone()))
                .collect();
            let scores = fisherkit_model::score(&model, &examples).unwrap();
            let total = |s: &Vec<f32>| s.iter().map(|&v| v as f64).sum::<f64>();
            let best = (0..candidates.len())
                .max_by(|&x, &y| total(&scores[x]).total_cmp(&total(&scores[y])))
                .unwrap();
            assert_eq!(got, &candidates[best], "{architecture}: prompt {prompt:?}");
        }
    }
}

/// One stack under `decoder.`, no encoder; `config.json` says what the model is; the
/// saved model loads back to the same scores; the per-example backward pass exists.
#[test]
fn checkpoints_name_one_stack_and_round_trip() {
    for architecture in SINGLE_STACKS {
        let model = lm(architecture, 21);
        let names: Vec<String> = model.param_specs().into_iter().map(|s| s.name).collect();
        assert!(
            names.iter().all(|n| !n.starts_with("encoder.")),
            "{names:?}"
        );
        assert!(names.contains(&"decoder.block.0.layer.1.DenseReluDense.wi.weight".into()));
        assert!(!names.iter().any(|n| n.contains("EncDecAttention")));
        assert!(names.contains(&"decoder.final_layer_norm.weight".into()));
        let tmp = tempfile::tempdir().unwrap();
        let dir = checkpoint::save(&model, &tmp.path().join("m"), None, false).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["architecture"], architecture);
        assert_eq!(config["is_encoder_decoder"], false);
        let loaded = checkpoint::load(&dir, &Device::flex()).unwrap();
        assert!(loaded.is_decoder_only());
        assert_eq!(loaded.special_tokens().decoder_start, None);
        assert_eq!(
            fisherkit_model::score(&loaded, &batch()).unwrap(),
            fisherkit_model::score(&model, &batch()).unwrap()
        );
        let err = loaded.encode(&[vec![3, 1]]).unwrap_err().to_string();
        assert!(err.contains("no encoder"), "{err}");
        assert!(loaded.example_backprop().is_some());
    }
}

#[test]
fn unknown_architecture_is_named() {
    let err = micro_config(false)
        .with_settings(&[("architecture".into(), "encoder-only".into())])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder-only") && err.contains("prefix-lm"),
        "{err}"
    );
}
