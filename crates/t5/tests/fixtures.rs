//! The library against the Hugging Face fixtures (`testdata/fixtures/t5-tiny-v1{0,1}`,
//! `testdata/generated/t5-tiny-swiglu`):
//! teacher-forced log-probabilities, first-step logits, encoder checksums, greedy and
//! beam-search ids.

use std::path::PathBuf;

use fisherkit_model::burn::tensor::Device;
use fisherkit_model::generate::generate;
use fisherkit_model::Example;
use fisherkit_t5::{checkpoint, GenerateOptions, LengthPenalty, T5};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    input_ids: Vec<u32>,
    target_ids: Vec<u32>,
    target_token_logprobs: Vec<f32>,
    target_logprob_sum: f32,
    first_step_logits_head: Vec<f32>,
    greedy_ids: Vec<u32>,
    beam4_lp0_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Cases {
    encoder_output_first_example_sum: f32,
    encoder_output_first_example_abs_sum: f32,
    cases: Vec<Case>,
}

/// `name`: the fixture's directory under `testdata/`.
fn fixture(name: &str) -> (T5, Cases) {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata")).join(name);
    let model = checkpoint::load(&dir, &Device::flex()).unwrap();
    let text = std::fs::read_to_string(dir.join("cases.json")).unwrap();
    (model, serde_json::from_str(&text).unwrap())
}

fn check_fixture(name: &str) {
    let (model, fixture) = fixture(name);
    let batch: Vec<Example> = fixture
        .cases
        .iter()
        .map(|c| Example::new(c.input_ids.clone(), c.target_ids.clone()))
        .collect();

    // Scores of the whole padded batch at once: padding and masks matter.
    let scores = fisherkit_t5::score(&model, &batch).unwrap();
    for (i, (case, got)) in fixture.cases.iter().zip(&scores).enumerate() {
        assert_eq!(got.len(), case.target_token_logprobs.len());
        for (t, (g, want)) in got.iter().zip(&case.target_token_logprobs).enumerate() {
            assert!(
                (g - want).abs() < 1e-4,
                "{name} case {i} token {t}: {g} vs {want}"
            );
        }
        let sum: f32 = got.iter().sum();
        assert!(
            (sum - case.target_logprob_sum).abs() < 1e-3,
            "{name} case {i} sum"
        );
    }

    let inputs: Vec<Vec<u32>> = batch.iter().map(|e| e.input_ids.clone()).collect();
    let targets: Vec<Vec<u32>> = batch.iter().map(|e| e.target_ids.clone()).collect();
    let logits = model.teacher_forced_logits(&inputs, &targets).unwrap();
    let [_, len, vocab] = logits.dims();
    let logits: Vec<f32> = logits.try_into_vec_as::<f32>().unwrap();
    for (i, case) in fixture.cases.iter().enumerate() {
        let head = &logits[i * len * vocab..i * len * vocab + 16];
        for (j, (g, want)) in head.iter().zip(&case.first_step_logits_head).enumerate() {
            assert!(
                (g - want).abs() < 1e-3,
                "{name} case {i} logit {j}: {g} vs {want}"
            );
        }
    }

    let encoded = model.encode(&inputs[..1]).unwrap();
    let hidden: Vec<f32> = encoded.hidden.try_into_vec_as::<f32>().unwrap();
    let sum: f32 = hidden.iter().sum();
    let abs_sum: f32 = hidden.iter().map(|v| v.abs()).sum();
    assert!(
        (sum - fixture.encoder_output_first_example_sum).abs() < 2e-3,
        "{name} sum {sum}"
    );
    assert!(
        (abs_sum - fixture.encoder_output_first_example_abs_sum).abs() < 2e-3,
        "{name} abs sum {abs_sum}"
    );

    let greedy = GenerateOptions {
        num_beams: 1,
        max_new_tokens: 16,
        ..Default::default()
    };
    let got = generate(&model, &inputs, &greedy).unwrap();
    for (i, (case, ids)) in fixture.cases.iter().zip(&got).enumerate() {
        assert_eq!(ids, &case.greedy_ids, "{name} greedy case {i}");
    }
    let beam = GenerateOptions {
        num_beams: 4,
        length_penalty: LengthPenalty::Power(0.0),
        max_new_tokens: 16,
        min_new_tokens: 0,
        sampling: None,
    };
    let got = generate(&model, &inputs, &beam).unwrap();
    for (i, (case, ids)) in fixture.cases.iter().zip(&got).enumerate() {
        assert_eq!(ids, &case.beam4_lp0_ids, "{name} beam case {i}");
    }
    // Batching must not change anything: one input at a time gives the same beams.
    for (i, case) in fixture.cases.iter().enumerate() {
        let alone = generate(&model, &inputs[i..i + 1], &beam).unwrap();
        assert_eq!(alone[0], case.beam4_lp0_ids, "{name} beam case {i} alone");
    }
}

#[test]
fn t5_v10_fixture() {
    check_fixture("fixtures/t5-tiny-v10");
}

#[test]
fn t5_v11_fixture() {
    check_fixture("fixtures/t5-tiny-v11");
}

/// A SwiGLU T5 (`feed_forward_proj: "gated-silu"`) made by transformers.
#[test]
fn t5_swiglu_fixture() {
    check_fixture("generated/t5-tiny-swiglu");
}
