//! Each merge method against closed-form or independently computed results on small
//! tensors, plus tensor selection, sharded output and bad input.

use fisherkit_common::st::{write, OwnedTensor};
use fisherkit_merge::checkpoint::Checkpoint;
use fisherkit_merge::engine::{merge_to_dir, OutputOptions, Plan, PlanOptions};
use fisherkit_merge::search::{self, Evaluator, MergedTensors};
use fisherkit_merge::{write_fisher, FisherMeta, FisherMode, Recipe};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

type Tensors<'a> = &'a [(&'a str, Vec<usize>, Vec<f32>)];

fn save_model(dir: &Path, name: &str, tensors: Tensors) -> PathBuf {
    let path = dir.join(name);
    let owned: Vec<(String, OwnedTensor)> = tensors
        .iter()
        .map(|(n, s, v)| (n.to_string(), OwnedTensor::f32(s.clone(), v)))
        .collect();
    write(&path, &owned, HashMap::new()).unwrap();
    path
}

fn save_fisher(dir: &Path, name: &str, tensors: Tensors) -> PathBuf {
    let path = dir.join(name);
    let t: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.to_string(), s.clone(), v.clone()))
        .collect();
    let meta = FisherMeta {
        examples: 8,
        mode: FisherMode::Exact,
        data_hash: "test".into(),
        seed: 0,
        model: None,
        extra: BTreeMap::new(),
    };
    write_fisher(&path, &t, &meta).unwrap();
    path
}

/// Merge in memory and return name → values.
fn run(yaml: &str) -> anyhow::Result<MergedTensors> {
    let recipe = Recipe::from_yaml(yaml, Path::new("test.yml"))?;
    let plan = Plan::new(recipe, &PlanOptions::default())?;
    merged(&plan, None)
}

fn merged(plan: &Plan, weights: Option<&[f64]>) -> anyhow::Result<MergedTensors> {
    let mut out = MergedTensors::new();
    plan.execute(
        weights,
        &mut |spec, bytes| {
            let mut v = vec![0f32; spec.shape.iter().product()];
            fisherkit_merge::checkpoint::decode_f32(spec.dtype, bytes, &mut v);
            out.insert(spec.name.clone(), (spec.shape.clone(), v));
            Ok(())
        },
        &indicatif::ProgressBar::hidden(),
    )?;
    Ok(out)
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}

fn pseudo(seed: u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|j| {
            let x = fisherkit_merge::methods::splitmix(seed * 1_000_003 + j as u64);
            (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn linear_is_the_weighted_average() {
    let d = tempfile::tempdir().unwrap();
    let a = save_model(
        d.path(),
        "a.safetensors",
        &[("w", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])],
    );
    let b = save_model(
        d.path(),
        "b.safetensors",
        &[("w", vec![2, 2], vec![5.0, 6.0, 7.0, 8.0])],
    );
    let yaml = format!(
        "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 0.7}}\n  - model: {}\n    parameters: {{weight: 0.7}}\n",
        a.display(),
        b.display()
    );
    // Equal weights → the mean, whatever their scale (normalize defaults to true).
    close(&run(&yaml).unwrap()["w"].1, &[3.0, 4.0, 5.0, 6.0], 1e-6);
    let yaml = format!(
        "merge_method: linear\nparameters: {{normalize: false}}\nmodels:\n  - model: {}\n    parameters: {{weight: 0.5}}\n  - model: {}\n    parameters: {{weight: 0.25}}\n",
        a.display(),
        b.display()
    );
    close(&run(&yaml).unwrap()["w"].1, &[1.75, 2.5, 3.25, 4.0], 1e-6);
}

fn fisher_yaml(models: &[(&Path, &Path, f64)], params: &str) -> String {
    let mut y = format!("merge_method: fisher\nparameters: {{{params}}}\nmodels:\n");
    for (m, f, w) in models {
        y += &format!(
            "  - model: {}\n    parameters:\n      weight: {w}\n      fisher: {}\n",
            m.display(),
            f.display()
        );
    }
    y
}

#[test]
fn fisher_merge_matches_hand_computation_and_floors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let a = save_model(p, "a.safetensors", &[("w", vec![3], vec![1.0, 2.0, 3.0])]);
    let b = save_model(p, "b.safetensors", &[("w", vec![3], vec![5.0, 6.0, 7.0])]);
    let fa = save_fisher(p, "fa.safetensors", &[("w", vec![3], vec![1.0, 0.0, 0.0])]);
    let fb = save_fisher(p, "fb.safetensors", &[("w", vec![3], vec![3.0, 2.0, 0.0])]);
    let out = run(&fisher_yaml(&[(&a, &fa, 0.5), (&b, &fb, 0.5)], "")).unwrap();
    // element 0: (1·1 + 3·5)/(1+3) = 4; element 1: target floored at 1e-6 → ≈ 6;
    // element 2: both zero → floor keeps the target's 3.
    let e1 = (1e-6 * 2.0 + 2.0 * 6.0) / (1e-6 + 2.0);
    close(&out["w"].1, &[4.0, e1, 3.0], 1e-6);
    // Unequal coefficients: (0.25·1·1 + 0.75·3·5)/(0.25 + 2.25).
    let out = run(&fisher_yaml(&[(&a, &fa, 0.25), (&b, &fb, 0.75)], "")).unwrap();
    close(&out["w"].1[..1], &[(0.25 + 11.25) / 2.5], 1e-6);
    // floor_all with a huge floor turns every Fisher flat → the linear average.
    let out = run(&fisher_yaml(
        &[(&a, &fa, 0.5), (&b, &fb, 0.5)],
        "fisher_floor: 1.0e6, floor_all: true",
    ))
    .unwrap();
    close(&out["w"].1, &[3.0, 4.0, 5.0], 1e-4);
}

#[test]
fn identical_fishers_give_the_linear_merge() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let n = 200_000; // spans several parallel chunks
    let a = save_model(p, "a.safetensors", &[("w", vec![n], pseudo(1, n))]);
    let b = save_model(p, "b.safetensors", &[("w", vec![n], pseudo(2, n))]);
    let f: Vec<f32> = pseudo(3, n).iter().map(|x| x * x + 0.1).collect();
    let fa = save_fisher(p, "fa.safetensors", &[("w", vec![n], f.clone())]);
    let fb = save_fisher(p, "fb.safetensors", &[("w", vec![n], f)]);
    let fisher = run(&fisher_yaml(
        &[(&a, &fa, 0.3), (&b, &fb, 0.7)],
        "normalize_fishers: true",
    ))
    .unwrap();
    let linear = run(&format!(
        "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 0.3}}\n  - model: {}\n    parameters: {{weight: 0.7}}\n",
        a.display(),
        b.display()
    ))
    .unwrap();
    close(&fisher["w"].1, &linear["w"].1, 1e-5);
}

#[test]
fn all_zero_fishers_return_the_target_and_missing_fishers_fall_back() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let a = save_model(
        p,
        "a.safetensors",
        &[("w", vec![2], vec![1.0, 2.0]), ("b", vec![1], vec![1.0])],
    );
    let b = save_model(
        p,
        "b.safetensors",
        &[("w", vec![2], vec![9.0, 8.0]), ("b", vec![1], vec![3.0])],
    );
    let fa = save_fisher(p, "fa.safetensors", &[("w", vec![2], vec![0.0, 0.0])]);
    let fb = save_fisher(p, "fb.safetensors", &[("w", vec![2], vec![0.0, 0.0])]);
    let yaml = fisher_yaml(&[(&a, &fa, 0.5), (&b, &fb, 0.5)], "normalize_fishers: true");
    let out = run(&yaml).unwrap();
    close(&out["w"].1, &[1.0, 2.0], 0.0);
    // `b` has no Fisher anywhere: isotropic average, and reported as such.
    close(&out["b"].1, &[2.0], 1e-6);
    let plan = Plan::new(
        Recipe::from_yaml(&yaml, Path::new("t")).unwrap(),
        &PlanOptions::default(),
    )
    .unwrap();
    let report = plan
        .execute(None, &mut |_, _| Ok(()), &indicatif::ProgressBar::hidden())
        .unwrap();
    assert_eq!(report.isotropic_fallback, vec!["b".to_string()]);
}

#[test]
fn normalized_fishers_divide_by_global_l2_norm() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let a = save_model(p, "a.safetensors", &[("w", vec![2], vec![0.0, 0.0])]);
    let b = save_model(p, "b.safetensors", &[("w", vec![2], vec![1.0, 1.0])]);
    // ‖Fa‖ = 5, ‖Fb‖ = 1: normalised Fa = [0.6, 0.8], Fb = [1, 0].
    let fa = save_fisher(p, "fa.safetensors", &[("w", vec![2], vec![3.0, 4.0])]);
    let fb = save_fisher(p, "fb.safetensors", &[("w", vec![2], vec![1.0, 0.0])]);
    let out = run(&fisher_yaml(
        &[(&a, &fa, 0.5), (&b, &fb, 0.5)],
        "normalize_fishers: true, fisher_floor: 0",
    ))
    .unwrap();
    close(&out["w"].1, &[1.0 / 1.6, 0.0], 1e-6);
    let out = run(&fisher_yaml(
        &[(&a, &fa, 0.5), (&b, &fb, 0.5)],
        "fisher_floor: 0",
    ))
    .unwrap();
    close(&out["w"].1, &[0.25, 0.0], 1e-6);
}

fn task_yaml(method: &str, base: &Path, models: &[(&Path, f64, f64)], params: &str) -> String {
    let mut y = format!(
        "merge_method: {method}\nbase_model: {}\nparameters: {{{params}}}\nmodels:\n  - model: {}\n",
        base.display(),
        base.display()
    );
    for (m, w, dens) in models {
        y += &format!(
            "  - model: {}\n    parameters: {{weight: {w}, density: {dens}}}\n",
            m.display()
        );
    }
    y
}

#[test]
fn task_arithmetic_adds_scaled_task_vectors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let base = save_model(p, "base.safetensors", &[("w", vec![2], vec![1.0, 1.0])]);
    let a = save_model(p, "a.safetensors", &[("w", vec![2], vec![2.0, 0.0])]);
    let b = save_model(p, "b.safetensors", &[("w", vec![2], vec![1.0, 4.0])]);
    let out = run(&task_yaml(
        "task_arithmetic",
        &base,
        &[(&a, 0.5, 1.0), (&b, 1.0, 1.0)],
        "lambda: 2.0",
    ))
    .unwrap();
    // δa = [1, −1], δb = [0, 3]; 1 + 2·(0.5·δa + δb) = [2, 6]
    close(&out["w"].1, &[2.0, 6.0], 1e-6);
}

/// TIES written out the plain way (sort-based top-k, explicit sign election).
fn ties_reference(base: &[f32], models: &[(&[f32], f32, f64)], normalize: bool) -> Vec<f32> {
    let n = base.len();
    let deltas: Vec<Vec<f32>> = models
        .iter()
        .map(|(m, w, dens)| {
            let d: Vec<f32> = m.iter().zip(base).map(|(x, b)| x - b).collect();
            let k = (dens * n as f64) as usize;
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&i, &j| d[j].abs().partial_cmp(&d[i].abs()).unwrap().then(i.cmp(&j)));
            let mut kept = vec![0f32; n];
            for &i in &idx[..k] {
                kept[i] = d[i] * w;
            }
            kept
        })
        .collect();
    (0..n)
        .map(|j| {
            let s: f32 = deltas.iter().map(|d| d[j]).sum();
            let sign = if s >= 0.0 { 1.0 } else { -1.0 };
            let (mut mixed, mut div) = (0f32, 0f32);
            for (d, (_, w, _)) in deltas.iter().zip(models) {
                if d[j] != 0.0 && d[j].signum() == sign {
                    mixed += d[j];
                    div += w;
                }
            }
            if div == 0.0 {
                div = 1.0;
            }
            base[j] + if normalize { mixed / div } else { mixed }
        })
        .collect()
}

#[test]
fn ties_matches_hand_computed_and_reference() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let base = save_model(p, "base.safetensors", &[("w", vec![4], vec![0.0; 4])]);
    let a = save_model(
        p,
        "a.safetensors",
        &[("w", vec![4], vec![3.0, -1.0, 0.5, 2.0])],
    );
    let b = save_model(
        p,
        "b.safetensors",
        &[("w", vec![4], vec![-2.0, 4.0, 0.25, 1.0])],
    );
    // density 0.5: a keeps {3, 2} (idx 0, 3), b keeps {-2, 4} (idx 0, 1).
    // idx0: 3 − 2 = 1 ≥ 0 → + ; only a agrees → 3/1. idx1: 4 → 4. idx2: nothing → 0.
    // idx3: a only → 2.
    let out = run(&task_yaml(
        "ties",
        &base,
        &[(&a, 1.0, 0.5), (&b, 1.0, 0.5)],
        "",
    ))
    .unwrap();
    close(&out["w"].1, &[3.0, 4.0, 0.0, 2.0], 1e-6);

    // Larger random case with many exact ties in |δ| (values on a coarse grid), across chunks.
    let n = 150_000;
    let coarse = |s| {
        pseudo(s, n)
            .iter()
            .map(|x| (x * 8.0).round() / 8.0)
            .collect::<Vec<f32>>()
    };
    let (vb, va, vc) = (coarse(10), coarse(11), coarse(12));
    let base = save_model(p, "base2.safetensors", &[("w", vec![n], vb.clone())]);
    let a = save_model(p, "a2.safetensors", &[("w", vec![n], va.clone())]);
    let c = save_model(p, "c2.safetensors", &[("w", vec![n], vc.clone())]);
    let out = run(&task_yaml(
        "ties",
        &base,
        &[(&a, 0.6, 0.3), (&c, 0.4, 0.7)],
        "",
    ))
    .unwrap();
    let want = ties_reference(&vb, &[(&va, 0.6, 0.3), (&vc, 0.4, 0.7)], true);
    close(&out["w"].1, &want, 1e-5);
}

#[test]
fn dare_is_seeded_keeps_density_and_rescales_l1() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let n = 100_000;
    let vb = vec![0.0f32; n];
    let va: Vec<f32> = pseudo(5, n).iter().map(|x| x + 2.0).collect(); // δ > 0 everywhere
    let base = save_model(p, "base.safetensors", &[("w", vec![n], vb)]);
    let a = save_model(p, "a.safetensors", &[("w", vec![n], va.clone())]);
    let yaml = |seed: u64, dens: f64| {
        task_yaml("dare_linear", &base, &[(&a, 1.0, dens)], "") + &format!("seed: {seed}\n")
    };
    let out = run(&yaml(1, 0.3)).unwrap()["w"].1.clone();
    let kept: Vec<usize> = (0..n).filter(|&j| out[j] != 0.0).collect();
    let frac = kept.len() as f64 / n as f64;
    assert!((frac - 0.3).abs() < 0.01, "kept fraction {frac}");
    // Kept values are δ·(‖δ‖₁/‖kept δ‖₁): the output's L1 equals the input's.
    let l1_in: f64 = va.iter().map(|x| *x as f64).sum();
    let l1_out: f64 = out.iter().map(|x| *x as f64).sum();
    assert!((l1_in - l1_out).abs() / l1_in < 1e-4);
    let scale = out[kept[0]] / va[kept[0]];
    for &j in &kept {
        assert!((out[j] - va[j] * scale).abs() < 1e-4);
    }
    assert_eq!(
        run(&yaml(1, 0.3)).unwrap()["w"].1,
        out,
        "same seed, same result"
    );
    assert_ne!(
        run(&yaml(2, 0.3)).unwrap()["w"].1,
        out,
        "other seed, other drops"
    );
    // density 1 keeps everything: dare_linear == task arithmetic.
    close(&run(&yaml(1, 1.0)).unwrap()["w"].1, &va, 1e-6);
}

#[test]
fn slerp_follows_the_great_circle() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let a = save_model(
        p,
        "a.safetensors",
        &[
            ("w", vec![2], vec![2.0, 0.0]),
            ("c", vec![2], vec![1.0, 1.0]),
        ],
    );
    let b = save_model(
        p,
        "b.safetensors",
        &[
            ("w", vec![2], vec![0.0, 2.0]),
            ("c", vec![2], vec![2.0, 2.0]),
        ],
    );
    let yaml = format!(
        "merge_method: slerp\nbase_model: {a}\nparameters:\n  t: 0.5\nmodels:\n  - model: {a}\n  - model: {b}\n",
        a = a.display(),
        b = b.display()
    );
    let out = run(&yaml).unwrap();
    let s = std::f32::consts::FRAC_1_SQRT_2 * 2.0; // 2·sin(π/4)/sin(π/2)
    close(&out["w"].1, &[s, s], 1e-6);
    // Colinear tensors are lerped.
    close(&out["c"].1, &[1.5, 1.5], 1e-6);
}

#[test]
fn passthrough_scales_one_model() {
    let d = tempfile::tempdir().unwrap();
    let a = save_model(
        d.path(),
        "a.safetensors",
        &[("w", vec![2], vec![2.0, -4.0])],
    );
    let yaml = format!(
        "merge_method: passthrough\nmodels:\n  - model: {}\n    parameters: {{scale: 0.5}}\n",
        a.display()
    );
    close(&run(&yaml).unwrap()["w"].1, &[1.0, -2.0], 0.0);
}

#[test]
fn filters_and_layer_gradients_resolve_per_tensor() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let names = [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.2.mlp.up_proj.weight",
    ];
    let ones: Vec<(&str, Vec<usize>, Vec<f32>)> =
        names.iter().map(|n| (*n, vec![1], vec![1.0])).collect();
    let twos: Vec<(&str, Vec<usize>, Vec<f32>)> =
        names.iter().map(|n| (*n, vec![1], vec![2.0])).collect();
    let a = save_model(p, "a.safetensors", &ones);
    let b = save_model(p, "b.safetensors", &twos);
    // mergekit's documented slerp recipe shape: filtered gradients plus a default.
    let yaml = format!(
        "merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\nparameters:\n  t:\n    - filter: self_attn\n      value: [0.1, 0.9]\n    - filter: mlp\n      value: [0.0, 0.5, 1.0]\n    - value: 0.5\ndtype: float32\n",
        a = a.display(),
        b = b.display()
    );
    let out = run(&yaml).unwrap();
    // Colinear vectors lerp: the output is 1 + t, t picked by filter and layer
    // (layer 0 of 3 at t=0, layer 1 halfway, layer 2 at the end of the gradient).
    close(&out[names[0]].1, &[1.1], 1e-6);
    close(&out[names[1]].1, &[1.0], 1e-6);
    close(&out[names[2]].1, &[1.5], 1e-6);
    close(&out[names[3]].1, &[2.0], 1e-6);
}

#[test]
fn mergekit_documented_recipes_parse_to_the_expected_structure() {
    use fisherkit_merge::recipe::{Conditional, Scalar, ScalarOrGradient, Setting};
    // The TIES example from mergekit's README.
    let ties = r#"
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"#;
    let r = Recipe::from_yaml(ties, Path::new("ties.yml")).unwrap();
    let n = |x: f64| Scalar::Number(x);
    assert_eq!(r.merge_method, "ties");
    assert_eq!(r.base_model.as_deref(), Some("TheBloke/Llama-2-13B-fp16"));
    assert_eq!(r.dtype.as_deref(), Some("float16"));
    assert_eq!(r.models.len(), 3);
    assert_eq!(
        r.models[0].parameters["density"],
        Setting::Plain(ScalarOrGradient::Gradient(vec![n(1.0), n(0.7), n(0.1)]))
    );
    assert_eq!(
        r.models[2].parameters["weight"],
        Setting::Conditions(vec![
            Conditional {
                filter: Some("mlp".into()),
                value: ScalarOrGradient::Scalar(n(0.5))
            },
            Conditional {
                filter: None,
                value: ScalarOrGradient::Scalar(n(0.0))
            },
        ])
    );
    assert_eq!(
        r.parameters["int8_mask"],
        Setting::Plain(ScalarOrGradient::Scalar(Scalar::Bool(true)))
    );
    // Round trip through the YAML fisherkit saves next to the output.
    assert_eq!(
        Recipe::from_yaml(&r.to_yaml().unwrap(), Path::new("x")).unwrap(),
        r
    );
    // Unsupported layouts and typos are refused, naming the problem.
    let err =
        Recipe::from_yaml("merge_method: linear\nslices: []\n", Path::new("s.yml")).unwrap_err();
    assert!(format!("{err:#}").contains("slices"), "{err:#}");
    let err = Recipe::from_yaml(
        "merge_method: linear\nmodels: []\nbase_modle: x\n",
        Path::new("t.yml"),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("base_modle"), "{err:#}");
    let err = Recipe::from_yaml(
        "merge_method: della\nmodels: [{model: a}]\n",
        Path::new("d.yml"),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("della"), "{err:#}");
}

#[test]
fn sharded_output_reloads_exactly_with_selection_report() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let n = 5000;
    let ma = vec![
        ("embed.weight", vec![n], pseudo(20, n)),
        ("layers.0.w", vec![n], pseudo(21, n)),
        ("layers.1.w", vec![n], pseudo(22, n)),
        ("classifier.weight", vec![4], vec![1.0, 2.0, 3.0, 4.0]),
        ("head_only_in_a", vec![2], vec![7.0, 8.0]),
    ];
    let mb = vec![
        ("embed.weight", vec![n], pseudo(30, n)),
        ("layers.0.w", vec![n], pseudo(31, n)),
        ("layers.1.w", vec![n], pseudo(32, n)),
        ("classifier.weight", vec![4], vec![9.0, 9.0, 9.0, 9.0]),
        ("extra_in_b", vec![1], vec![0.0]),
    ];
    let a_dir = p.join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    save_model(&a_dir, "model.safetensors", &ma);
    std::fs::write(a_dir.join("config.json"), r#"{"torch_dtype": "float32"}"#).unwrap();
    std::fs::write(a_dir.join("tokenizer.json"), "{}").unwrap();
    let b = save_model(p, "b.safetensors", &mb);
    let yaml = format!(
        "merge_method: linear\nexclude: ['^classifier\\.']\nout_dtype: bfloat16\nmodels:\n  - model: {}\n    parameters: {{weight: 1}}\n  - model: {}\n    parameters: {{weight: 3}}\n",
        a_dir.display(),
        b.display()
    );
    let plan = Plan::new(
        Recipe::from_yaml(&yaml, Path::new("r.yml")).unwrap(),
        &PlanOptions::default(),
    )
    .unwrap();
    let in_memory = merged(&plan, None).unwrap();
    let out = p.join("out");
    let opts = OutputOptions {
        out: out.clone(),
        force: false,
        max_shard_bytes: 12_000, // 5000 bf16 = 10 kB per big tensor → several shards
        recipe_text: Some(yaml.clone()),
        fsync: true,
    };
    let report = merge_to_dir(&plan, &opts).unwrap();
    assert!(report.shards.len() >= 3, "{:?}", report.shards);
    assert!(out.join("model.safetensors.index.json").is_file());
    assert_eq!(
        std::fs::read_to_string(out.join("mergekit_config.yml")).unwrap(),
        yaml
    );
    assert!(out.join("tokenizer.json").is_file());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let reloaded = Checkpoint::open(&out).unwrap();
    assert_eq!(reloaded.names().len(), 5);
    for (name, (shape, values)) in &in_memory {
        let (s, v) = reloaded.read_f32(name).unwrap();
        assert_eq!((&s, &v), (shape, values), "{name}");
        assert_eq!(
            reloaded.tensor(name).unwrap().dtype,
            safetensors::Dtype::BF16
        );
    }
    // Merged values are the bf16 rounding of the f32 average.
    let want: Vec<f32> = ma[1]
        .2
        .iter()
        .zip(&mb[1].2)
        .map(|(x, y)| half::bf16::from_f32((x + 3.0 * y) / 4.0).to_f32())
        .collect();
    assert_eq!(in_memory["layers.0.w"].1, want);
    assert_eq!(in_memory["classifier.weight"].1, vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(in_memory["head_only_in_a"].1, vec![7.0, 8.0]);
    assert_eq!(report.merged.len(), 3);
    let copied: Vec<&str> = report.copied.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(copied, vec!["classifier.weight", "head_only_in_a"]);
    assert_eq!(report.skipped[0].0, "extra_in_b");
    // The output directory now exists: refused without force, replaced with it.
    assert!(merge_to_dir(&plan, &opts).is_err());
    merge_to_dir(
        &plan,
        &OutputOptions {
            force: true,
            ..opts
        },
    )
    .unwrap();
}

fn err_of(yaml: &str, options: &PlanOptions) -> String {
    let recipe = Recipe::from_yaml(yaml, Path::new("r.yml")).unwrap();
    match Plan::new(recipe, options).and_then(|p| merged(&p, None)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

fn two(method: &str, a: &Path, b: &Path, wa: f64, wb: f64) -> String {
    format!(
        "merge_method: {method}\nmodels:\n  - model: {}\n    parameters: {{weight: {wa}}}\n  - model: {}\n    parameters: {{weight: {wb}}}\n",
        a.display(),
        b.display()
    )
}

#[test]
fn bad_inputs_are_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let opts = PlanOptions::default();
    let a = save_model(
        p,
        "a.safetensors",
        &[
            ("x", vec![2], vec![1.0, 2.0]),
            ("y", vec![1], vec![1.0]),
            ("z", vec![1], vec![1.0]),
        ],
    );
    let c = save_model(
        p,
        "c.safetensors",
        &[("x", vec![2], vec![1.0, 2.0]), ("y", vec![1], vec![1.0])],
    );
    let b = save_model(
        p,
        "b.safetensors",
        &[
            ("x", vec![2], vec![1.0, 2.0]),
            ("y", vec![1], vec![1.0]),
            ("z", vec![1], vec![1.0]),
        ],
    );
    // z is missing in c but present in b: an error naming it, unless --allow-missing.
    let three = format!(
        "{}  - model: {}\n    parameters: {{weight: 1}}\n",
        two("linear", &a, &b, 1.0, 1.0),
        c.display()
    );
    let e = err_of(&three, &opts);
    assert!(
        e.contains("c.safetensors lacks 1 tensor") && e.contains(": z"),
        "{e}"
    );
    let r = Recipe::from_yaml(&three, Path::new("r")).unwrap();
    let plan = Plan::new(
        r,
        &PlanOptions {
            allow_missing: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(merged(&plan, None).unwrap()["z"].1, vec![1.0]);

    let s = save_model(
        p,
        "s.safetensors",
        &[
            ("x", vec![1, 2], vec![1.0, 2.0]),
            ("y", vec![1], vec![1.0]),
            ("z", vec![1], vec![1.0]),
        ],
    );
    let e = err_of(&two("linear", &a, &s, 1.0, 1.0), &opts);
    assert!(
        e.contains("tensor x: shape [2]") && e.contains("[1, 2]"),
        "{e}"
    );

    assert!(err_of(&two("linear", &a, &b, 1.0, -0.5), &opts).contains("negative"));
    assert!(err_of(&two("linear", &a, &b, 0.0, 0.0), &opts).contains("all weights are zero"));

    let nan = save_model(
        p,
        "nan.safetensors",
        &[
            ("x", vec![2], vec![1.0, f32::NAN]),
            ("y", vec![1], vec![1.0]),
            ("z", vec![1], vec![1.0]),
        ],
    );
    let e = err_of(&two("linear", &a, &nan, 1.0, 1.0), &opts);
    assert!(
        e.contains("tensor x") && e.contains("nan.safetensors holds a non-finite value"),
        "{e}"
    );

    let f_ok = save_fisher(p, "fok.safetensors", &[("x", vec![2], vec![1.0, 1.0])]);
    let f_bad = save_fisher(
        p,
        "fbad.safetensors",
        &[
            ("x", vec![2], vec![1.0, 1.0]),
            ("not_in_model", vec![1], vec![1.0]),
        ],
    );
    let e = err_of(
        &fisher_yaml(&[(&a, &f_ok, 0.5), (&b, &f_bad, 0.5)], ""),
        &opts,
    );
    assert!(
        e.contains("fbad.safetensors does not match the model") && e.contains("not_in_model"),
        "{e}"
    );
    let f_other = save_fisher(p, "fother.safetensors", &[("y", vec![1], vec![1.0])]);
    let e = err_of(
        &fisher_yaml(&[(&a, &f_ok, 0.5), (&b, &f_other, 0.5)], ""),
        &opts,
    );
    assert!(e.contains("has no tensor x while other Fishers do"), "{e}");
    let e = err_of(
        &format!("merge_method: ties\nmodels:\n  - model: {}\n", a.display()),
        &opts,
    );
    assert!(e.contains("needs a base_model"), "{e}");
}

struct DistanceTo(Vec<f32>);

impl Evaluator for DistanceTo {
    fn evaluate(&mut self, _: &[f64], merged: &MergedTensors) -> anyhow::Result<f64> {
        let v = &merged["w"].1;
        Ok(-v
            .iter()
            .zip(&self.0)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>())
    }
}

#[test]
fn weights_grid_search_finds_the_best_coefficient() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let a = save_model(p, "a.safetensors", &[("w", vec![2], vec![0.0, 0.0])]);
    let b = save_model(p, "b.safetensors", &[("w", vec![2], vec![1.0, 2.0])]);
    let plan = Plan::new(
        Recipe::from_yaml(&two("linear", &a, &b, 0.5, 0.5), Path::new("r")).unwrap(),
        &PlanOptions::default(),
    )
    .unwrap();
    let grid = search::parse_grid("1:0:0.02").unwrap();
    let cands = search::candidates(&grid, 2, 0, 0, 0).unwrap();
    // Closest merge to [0.36, 0.72] is target weight 0.64.
    let scored = search::search(&plan, &cands, &mut DistanceTo(vec![0.36, 0.72])).unwrap();
    assert_eq!(scored.len(), 51);
    let best = search::best(&scored).unwrap();
    assert!((best.weights[0] - 0.64).abs() < 1e-9, "{:?}", best.weights);
}
