//! The hand-written per-example backward pass against burn's autodiff of the same model
//! (itself checked against finite differences in `model.rs`).

use fisherkit_model::burn::tensor::{DType, Device, Tensor, TensorData};
use fisherkit_model::{Example, ExampleBackprop, LogProbModel, ParamAccess};
use fisherkit_t5::{checkpoint, T5};

mod common;
use common::{micro_config, switch_model, switches};

type Picks = Vec<(usize, usize, f32)>;

/// Σ_s Σ_(t,c,w) w · log p_s,t(c) differentiated by burn's autodiff, flat.
fn autodiff_gradient(
    model: &T5,
    input: &[u32],
    targets: &[Vec<u32>],
    picks: &[Picks],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let vocab = model.output_size();
    let mut objective: Option<Tensor<1>> = None;
    let mut rows = Vec::new();
    for (target, picks) in targets.iter().zip(picks) {
        let example = Example::new(input.to_vec(), target.clone());
        let lsm = model.log_softmax(&[example]).unwrap();
        rows.push(lsm.clone().detach().try_into_vec_as::<f32>().unwrap());
        let mut mask = vec![0f32; target.len() * vocab];
        for &(t, c, w) in picks {
            mask[t * vocab + c] += w;
        }
        let mask = Tensor::<3>::from_data(
            TensorData::new(mask, [1, target.len(), vocab]),
            &model.device(),
        );
        let term = (lsm * mask).sum();
        objective = Some(match objective {
            Some(o) => o + term,
            None => term,
        });
    }
    let grads = objective.unwrap().backward();
    let flat = model
        .gradients(&grads)
        .unwrap()
        .into_iter()
        .flat_map(|(_, g)| g)
        .collect();
    (flat, rows)
}

/// The backward pass's gradients of several objectives from one call, and the
/// log-softmax rows it handed out.
fn backprop_gradients(
    backprop: &dyn ExampleBackprop,
    input: &[u32],
    targets: &[Vec<u32>],
    objectives: &[&Vec<Picks>],
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut rows_seen = Vec::new();
    let mut grads = Vec::new();
    backprop
        .gradients(
            &Example::new(input.to_vec(), Vec::new()),
            targets,
            &mut |rows| {
                rows_seen = rows.iter().map(|r| r.to_vec()).collect();
                Ok(objectives.iter().map(|&o| o.clone()).collect())
            },
            &mut |index, grad| {
                assert_eq!(index, grads.len(), "objectives in order");
                grads.push(grad);
                Ok(())
            },
        )
        .unwrap();
    (rows_seen, grads)
}

/// One objective through [`backprop_gradients`]'s call, for the error cases.
fn one_gradient(
    backprop: &dyn ExampleBackprop,
    input: &[u32],
    targets: &[Vec<u32>],
    picks: Picks,
) -> anyhow::Result<Vec<f32>> {
    let mut out = Vec::new();
    backprop.gradients(
        &Example::new(input.to_vec(), Vec::new()),
        targets,
        &mut |_| Ok(vec![vec![picks.clone()]]),
        &mut |_, g| {
            out = g;
            Ok(())
        },
    )?;
    Ok(out)
}

fn assert_close(name: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tolerance * scale.max(1.0),
            "{name}[{i}]: backprop {g} vs autodiff {w} (scale {scale})"
        );
    }
}

/// The backward pass against autodiff on one model: several target sequences with
/// several weighted classes per position, two objectives sharing one forward pass,
/// inputs and targets shorter and longer than the few-row kernel's limit.
fn check_backprop(model: &T5, label: &str) {
    let vocab = model.output_size() as u32;
    let backprop = model
        .example_backprop()
        .expect("f32 CPU model has a backprop");
    let long_input: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % vocab).collect();
    for input in [vec![5, 9, 3, 17, 2, 11, 7, 1], long_input] {
        // The third target is longer than the few-row limit (the output head's
        // product then goes through gemm).
        let long_target: Vec<u32> = (0..36).map(|i| (i * 5 + 2) % vocab).collect();
        let targets = vec![vec![4, 8, 15, 16, 1], vec![12, 1], long_target];
        let picks: Vec<Picks> = vec![
            vec![
                (0, 4, 1.0),
                (1, 8, 1.0),
                (1, 3, 0.5),
                (4, 1, -0.25),
                (2, 15, 2.0),
            ],
            vec![(0, 12, 0.7), (1, 1, 1.0)],
            vec![(0, 3, 1.0), (35, 1, 1.0), (20, 7, 0.3)],
        ];
        // A second objective in the same call: the forward pass is shared, so the
        // first backward pass must leave it intact.
        let second: Vec<Picks> = picks
            .iter()
            .map(|p| {
                p.iter()
                    .map(|&(t, c, w)| (t, (c + 5) % vocab as usize, -0.5 * w))
                    .collect()
            })
            .collect();
        let (got_rows, got) = backprop_gradients(&*backprop, &input, &targets, &[&picks, &second]);
        for (objective, picks) in [&picks, &second].into_iter().enumerate() {
            let (want, rows) = autodiff_gradient(model, &input, &targets, picks);
            for (s, (got, want)) in got_rows.iter().zip(&rows).enumerate() {
                assert_close(
                    &format!("{label} log-softmax of target {s}"),
                    got,
                    want,
                    1e-5,
                );
            }
            for spec in &model.param_specs() {
                let range = spec.offset..spec.offset + spec.numel();
                assert_close(
                    &format!(
                        "{label} objective {objective} input {} {}",
                        input.len(),
                        spec.name
                    ),
                    &got[objective][range.clone()],
                    &want[range],
                    1e-4,
                );
            }
        }
        assert!(got[0].iter().any(|&g| g != 0.0));
    }
}

/// ReLU tied (v1.0), gated GELU untied (v1.1), plain exact GELU, gated SiLU.
#[test]
fn backprop_equals_autodiff_for_every_feed_forward_and_head() {
    let variants = [
        ("relu", false, false),
        ("gated-gelu", true, true),
        ("gelu", false, true),
        ("gated-silu", true, false),
    ];
    for (proj, gated, untied) in variants {
        let mut config = micro_config(gated);
        config.feed_forward_proj = proj.into();
        config.tie_word_embeddings = !untied;
        config.scale_decoder_outputs = Some(!untied);
        let device = Device::flex().autodiff();
        let model = checkpoint::init(&config, untied, 11, &device).unwrap();
        check_backprop(&model, proj);
    }
}

/// Every transformer-modification switch (README "Model switches") takes the fast path
/// and agrees with autodiff.
#[test]
fn backprop_equals_autodiff_for_every_switch() {
    for (label, settings) in switches() {
        let model = switch_model(&settings, 11, &Device::flex().autodiff());
        check_backprop(&model, &label);
    }
}

/// The decoder-only and prefix LMs (one stack over input and target, the head on the
/// target positions) with a tied ReLU and an untied gated head, and with rotary
/// positions and shared layers, agree with autodiff.
#[test]
fn backprop_equals_autodiff_for_single_stack_lms() {
    let device = Device::flex().autodiff();
    for architecture in ["decoder-only", "prefix-lm"] {
        for gated in [false, true] {
            let mut config = micro_config(gated);
            config.architecture = Some(architecture.into());
            // Two layers: the second reads prefix states that saw later prefix tokens.
            config.num_decoder_layers = Some(2);
            let model = checkpoint::init(&config, gated, 11, &device).unwrap();
            check_backprop(&model, &format!("{architecture} gated={gated}"));
        }
        for settings in [
            vec![
                ("position_embedding_type", "rotary"),
                ("d_kv", "4"),
                ("num_decoder_layers", "2"),
            ],
            vec![("share_layers", "all"), ("num_decoder_layers", "2")],
        ] {
            let mut settings: Vec<(String, String)> = settings
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            settings.push(("architecture".into(), architecture.into()));
            let label = format!("{settings:?}");
            check_backprop(&switch_model(&settings, 11, &device), &label);
        }
    }
}

/// Mixture-of-experts feed-forwards (top-1 and top-2, capacity small enough that the
/// 40-token input drops choices, sparse in every layer or every other one), in an
/// encoder–decoder and a decoder-only LM: the router's gradient through the gates and
/// the experts' gradients agree with autodiff.
#[test]
fn backprop_equals_autodiff_for_mixtures_of_experts() {
    let device = Device::flex().autodiff();
    for (top_k, step, architecture) in [
        ("1", "1", "encoder-decoder"),
        ("2", "2", "encoder-decoder"),
        ("2", "1", "decoder-only"),
    ] {
        let settings: Vec<(String, String)> = [
            ("num_experts", "3"),
            ("num_experts_per_tok", top_k),
            ("expert_capacity", "5"),
            ("encoder_sparse_step", step),
            ("decoder_sparse_step", "1"),
            ("num_decoder_layers", "2"),
            ("architecture", architecture),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec();
        let model = switch_model(&settings, 11, &device);
        assert!(model
            .named_params()
            .iter()
            .any(|(n, _)| n.ends_with("mlp.router.classifier.weight")));
        check_backprop(&model, &format!("{settings:?}"));
    }
}

#[test]
fn training_mode_and_other_dtypes_fall_back_to_autodiff() {
    let device = Device::flex().autodiff();
    let mut model = checkpoint::init(&micro_config(false), false, 1, &device).unwrap();
    assert!(model.example_backprop().is_some());
    model.set_training(true);
    assert!(
        model.example_backprop().is_none(),
        "no dropout in the hand-written pass"
    );
    model.set_training(false);
    model.cast_params(DType::F64).unwrap();
    assert!(model.example_backprop().is_none());
}

#[test]
fn bad_ids_and_pick_lists_are_errors() {
    let device = Device::flex().autodiff();
    let model = checkpoint::init(&micro_config(false), false, 1, &device).unwrap();
    let backprop = model.example_backprop().unwrap();
    let backprop = &*backprop;
    let err = one_gradient(backprop, &[3, 99], &[vec![1]], vec![]).unwrap_err();
    assert!(err.to_string().contains("token id 99"), "{err}");
    let err = one_gradient(backprop, &[3], &[vec![]], vec![]).unwrap_err();
    assert!(err.to_string().contains("empty target"), "{err}");
    let err = one_gradient(backprop, &[3], &[vec![4, 1]], vec![(2, 0, 1.0)]).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}
