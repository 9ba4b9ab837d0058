//! The model adapter on a real (tiny) T5 fixture: label probabilities against the T5
//! scorer, gradients against f64 finite differences, batched against one at a time.

use fisherkit_fisher::model::{label_log_probs, Item, ModelGradients, Outputs};
use fisherkit_fisher::{example_classes, ClassSelection, GradientModel};
use fisherkit_model::burn::tensor::{DType, Device};
use fisherkit_model::{Example, LogProbModel, Model, ParamAccess};

const V10: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/fixtures/t5-tiny-v10"
);

fn load(device: &Device) -> Box<dyn Model> {
    let mut model = fisherkit_models::load(std::path::Path::new(V10), device).unwrap();
    model.set_training(false);
    model
}

fn labels() -> Vec<Vec<u32>> {
    vec![vec![5, 1], vec![9, 7, 1], vec![12, 30, 4, 1]]
}

fn example(input: &[u32], label: usize) -> Item {
    Item {
        example: Example::new(input.to_vec(), labels()[label].clone()),
        label: Some(label),
    }
}

fn outputs() -> Outputs {
    Outputs::Labels {
        names: vec!["x".into(), "y".into(), "z".into()],
        targets: labels(),
    }
}

/// log p(label | input) in f64, computed in one forward pass of the f64 model.
fn label_log_prob(model: &dyn Model, item: &Item, label: usize) -> f64 {
    let lp = label_log_probs(model, std::slice::from_ref(&item.example), &labels()).unwrap();
    lp.try_into_vec_as::<f64>().unwrap()[label]
}

#[test]
fn label_probabilities_are_the_normalised_sequence_likelihoods() {
    let model = load(&Device::flex().autodiff());
    let grads = ModelGradients::new(&model, outputs()).unwrap();
    let item = example(&[4, 8, 15, 16, 1], 1);
    let got = &grads.log_probs(&item).unwrap()[0];
    // Independently: the T5 scorer's summed token log-probabilities, normalised.
    let batch: Vec<Example> = labels()
        .into_iter()
        .map(|t| Example::new(item.example.input_ids.clone(), t))
        .collect();
    let sums: Vec<f64> = fisherkit_model::score(&model, &batch)
        .unwrap()
        .iter()
        .map(|s| s.iter().map(|&v| f64::from(v)).sum())
        .collect();
    let lse = sums.iter().map(|s| s.exp()).sum::<f64>().ln();
    for (g, s) in got.iter().zip(&sums) {
        assert!(
            (f64::from(*g) - (s - lse)).abs() < 1e-5,
            "{got:?} vs {sums:?}"
        );
    }
}

#[test]
fn batched_label_probabilities_equal_one_at_a_time() {
    let model = load(&Device::flex());
    // Inputs of different lengths, so padding and masking are exercised.
    let items = [
        example(&[4, 8, 15, 16, 23, 1], 0),
        example(&[7, 1], 2),
        example(&[11, 3, 9, 1], 1),
    ];
    let examples: Vec<Example> = items.iter().map(|i| i.example.clone()).collect();
    let batched = label_log_probs(&model, &examples, &labels())
        .unwrap()
        .try_into_vec_as::<f32>()
        .unwrap();
    for (e, item) in items.iter().enumerate() {
        let single = label_log_probs(&model, std::slice::from_ref(&item.example), &labels())
            .unwrap()
            .try_into_vec_as::<f32>()
            .unwrap();
        for c in 0..3 {
            // Batch sizes pick different matmul kernels (summation orders), so agreement
            // is to f32 rounding of the sequence scores (|score| ≈ 20 here, rounding
            // ≈ 1e-6 relative); a cross-example leak would be orders of magnitude larger.
            let (b, s) = (batched[3 * e + c], single[c]);
            assert!((b - s).abs() < 5e-5, "example {e}, label {c}: {b} vs {s}");
        }
    }
}

#[test]
fn per_example_gradients_match_f64_finite_differences() {
    let mut model = load(&Device::flex().autodiff());
    model.cast_params(DType::F64).unwrap();
    let item = example(&[4, 8, 15, 16, 1], 2);
    let grad = {
        let grads = ModelGradients::new(&model, outputs()).unwrap();
        grads.grad(&item, &[(0, 1)]).unwrap()
    };
    // A pseudo-random direction over all parameters.
    let mut state = 3u64;
    let direction: Vec<f64> = grad
        .iter()
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        })
        .collect();
    let analytic: f64 = grad
        .iter()
        .zip(&direction)
        .map(|(&g, &v)| f64::from(g) * v)
        .sum();
    let theta: Vec<Vec<f64>> = model
        .named_params()
        .iter()
        .map(|(_, p)| p.to_vec::<f64>().unwrap())
        .collect();
    let mut shifted = |eps: f64| -> f64 {
        let mut offset = 0;
        for ((_, mut param), values) in model.named_params_mut().into_iter().zip(&theta) {
            let moved: Vec<f64> = values
                .iter()
                .zip(&direction[offset..])
                .map(|(t, v)| t + eps * v)
                .collect();
            offset += values.len();
            param.set_values(moved).unwrap();
        }
        label_log_prob(&*model, &item, 1)
    };
    let eps = 1e-5;
    let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
    assert!(
        (numeric - analytic).abs() < 1e-5 * analytic.abs().max(1.0),
        "finite differences {numeric} vs autodiff {analytic}"
    );
}

/// The model's own backward pass (used by default on f32 CPU models) against burn's
/// autodiff, for label outputs (the label-softmax weighting is applied on top of the
/// token log-probabilities) and token outputs, with repeated and several picks.
#[test]
fn backprop_gradients_equal_autodiff_for_labels_and_tokens() {
    let model = load(&Device::flex().autodiff());
    let tokens = Outputs::Tokens;
    for (outputs, picks) in [
        (outputs(), vec![(0, 1)]),
        (outputs(), vec![(0, 0), (0, 2), (0, 2)]),
        (tokens, vec![(0, 9), (1, 7), (2, 1), (1, 3)]),
    ] {
        let fast = ModelGradients::new(&model, outputs.clone()).unwrap();
        let slow = ModelGradients::autodiff(&model, outputs).unwrap();
        assert!(fast.uses_backprop() && !slow.uses_backprop());
        let item = example(&[4, 8, 15, 16, 23, 42, 1], 1);
        let got = fast.grad(&item, &picks).unwrap();
        let want = slow.grad(&item, &picks).unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * scale,
                "picks {picks:?} [{i}]: backprop {g} vs autodiff {w}"
            );
        }
        // Every class of the example from one shared forward pass (`grads_each`).
        let selection = ClassSelection {
            top_k_per_position: Some(3),
            ..ClassSelection::default()
        };
        let fast_classes = example_classes(&fast, &item, &selection).unwrap();
        let slow_classes = example_classes(&slow, &item, &selection).unwrap();
        assert_eq!(fast_classes.classes.len(), slow_classes.classes.len());
        // One scale for all classes: a class with p ≈ 1 has a near-zero gradient made of
        // f32 cancellation noise at the level of the others' rounding.
        let scale = slow_classes
            .classes
            .iter()
            .flat_map(|c| &c.grad)
            .fold(0f32, |m, v| m.max(v.abs()));
        for (f, s) in fast_classes.classes.iter().zip(&slow_classes.classes) {
            assert_eq!(f.pick, s.pick);
            for (g, w) in f.grad.iter().zip(&s.grad) {
                assert!(
                    (g - w).abs() <= 1e-4 * scale,
                    "class {:?}: {g} vs {w}",
                    f.pick
                );
            }
        }
    }
}
