//! The hand-written per-example backward of BERT/RoBERTa classifiers against burn's
//! autodiff of the same model: every parameter's gradient, for weighted objectives over
//! the classes, a sentence pair with token types, and RoBERTa's shifted positions.

use std::path::PathBuf;

use fisherkit_bert::checkpoint;
use fisherkit_model::burn::tensor::{Device, Tensor, TensorData};
use fisherkit_model::{Example, LogProbModel, ParamAccess};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/fixtures"
    ))
    .join(name)
}

/// Autodiff's gradient of `Σ w · log p(c)` over `weights` (one per class).
fn autodiff(name: &str, example: &Example, weights: &[f32]) -> Vec<f32> {
    let model = checkpoint::load(&fixture(name), &Device::flex().autodiff()).unwrap();
    let lsm = model.log_softmax(std::slice::from_ref(example)).unwrap();
    let mask = Tensor::<3>::from_data(
        TensorData::new(weights.to_vec(), [1, 1, weights.len()]),
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

/// The backward pass's gradient of the same objective, and the distribution it saw.
fn backprop(name: &str, example: &Example, weights: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let model = checkpoint::load(&fixture(name), &Device::flex()).unwrap();
    let backprop = model
        .example_backprop()
        .expect("a classifier on the CPU has one");
    let targets: Vec<Vec<u32>> = (0..weights.len() as u32).map(|c| vec![c]).collect();
    let picks: Vec<Vec<(usize, usize, f32)>> = weights
        .iter()
        .enumerate()
        .map(|(c, &w)| vec![(0, c, w)])
        .collect();
    let (mut grad, mut rows) = (Vec::new(), Vec::new());
    backprop
        .gradients(
            example,
            &targets,
            &mut |seen| {
                rows = seen[0].to_vec();
                Ok(vec![picks.clone()])
            },
            &mut |_, g| {
                grad = g;
                Ok(())
            },
        )
        .unwrap();
    (grad, rows)
}

fn check(name: &str, example: Example) {
    let model = checkpoint::load(&fixture(name), &Device::flex()).unwrap();
    let want_rows: Vec<f32> = model
        .log_softmax(std::slice::from_ref(&example))
        .unwrap()
        .try_into_vec_as()
        .unwrap();
    for weights in [[1.0f32, 0.0, 0.0], [0.2, 0.5, 0.3], [0.0, -1.0, 2.0]] {
        let want = autodiff(name, &example, &weights);
        let (got, rows) = backprop(name, &example, &weights);
        for (g, w) in rows.iter().zip(&want_rows) {
            assert!((g - w).abs() < 1e-5, "{name}: log-softmax {g} vs {w}");
        }
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        let mut offset = 0;
        for spec in model.param_specs() {
            let n = spec.numel();
            for (i, (g, w)) in got[offset..offset + n]
                .iter()
                .zip(&want[offset..offset + n])
                .enumerate()
            {
                assert!(
                    (g - w).abs() <= 2e-4 * scale + 1e-3 * w.abs(),
                    "{name} {} [{i}]: backprop {g} vs autodiff {w} (weights {weights:?})",
                    spec.name
                );
            }
            offset += n;
        }
    }
}

#[test]
fn bert_backprop_matches_autodiff_on_a_sentence_pair() {
    check(
        "bert-tiny",
        Example {
            input_ids: vec![2, 17, 45, 3, 99, 120, 3],
            target_ids: vec![],
            token_type_ids: vec![0, 0, 0, 0, 1, 1, 1],
        },
    );
}

#[test]
fn roberta_backprop_matches_autodiff() {
    // Id 1 is RoBERTa's pad: a pad inside the input takes the pad position, as in HF.
    check(
        "roberta-tiny",
        Example::new(vec![0, 40, 77, 1, 150, 2], vec![]),
    );
}

/// A bare encoder has nothing to differentiate: no backward (autodiff reports it).
#[test]
fn bare_encoders_have_no_fast_path() {
    let mut config = fisherkit_bert::BertConfig::from_json(
        &fisherkit_bert::BertConfig::preset("bert-tiny").unwrap(),
    )
    .unwrap();
    config.labels.clear();
    let model = checkpoint::init(&config, 1, &Device::flex()).unwrap();
    assert!(model.example_backprop().is_none());
}
