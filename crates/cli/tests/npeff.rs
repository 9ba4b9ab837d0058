//! `fisherkit npeff` through the binary: synth → fit → coeffs, and bad input refused with
//! a non-zero exit and a message naming the file, tensor and row.

mod support;

use fisherkit_common::st::{self, MappedFile, OwnedTensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use support::{fails, model_with_tokenizer, ok, s as p, testdata};

fn synth(dir: &Path, kind: &str, examples: &str, parameters: &str) {
    ok(&[
        "npeff",
        "synth",
        "--kind",
        kind,
        "--examples",
        examples,
        "--parameters",
        parameters,
        "--components",
        "3",
        "--top-k",
        "40",
        "--classes",
        "2",
        "--seed",
        "1",
        "--examples-per-shard",
        "16",
        "--out",
        p(dir),
    ]);
}

#[test]
fn synth_fit_coeffs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    for kind in ["diagonal", "low-rank"] {
        let pefs = tmp.path().join(kind);
        synth(&pefs, kind, "40", "200");
        let out = tmp.path().join(format!("{kind}.safetensors"));
        ok(&[
            "npeff",
            "fit",
            "--pefs",
            p(&pefs),
            "--components",
            "3",
            "--iters",
            "20",
            "--g-only-iters",
            "5",
            "--threads",
            "2",
            "--out",
            p(&out),
        ]);
        let f = MappedFile::open(&out).unwrap();
        let name = if kind == "diagonal" { "H" } else { "G" };
        let (wshape, w) = f.read_f32("W").unwrap();
        let (dshape, dict) = f.read_f32(name).unwrap();
        assert_eq!(wshape, [40, 3]);
        assert_eq!(dshape[0], 3);
        assert!(w.iter().all(|v| *v >= 0.0));
        // Post-processed: unit-norm dictionary rows.
        for row in dict.chunks(dshape[1]) {
            let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        }
        let st = f.tensors().unwrap();
        let kept = st::to_indices(&st.tensor("kept_columns").unwrap()).unwrap();
        assert_eq!(kept.len(), dshape[1]);
        assert!(kept.windows(2).all(|w| w[0] < w[1]) && *kept.last().unwrap() < 200);
        assert!(f.metadata().unwrap()["fisherkit.npeff"].contains("\"steps_done\""));
        let coeffs = tmp.path().join(format!("{kind}-w.safetensors"));
        ok(&[
            "npeff",
            "coeffs",
            "--pefs",
            p(&pefs),
            "--decomposition",
            p(&out),
            "--chunk",
            "7",
            "--out",
            p(&coeffs),
        ]);
        assert_eq!(
            MappedFile::open(&coeffs).unwrap().read_f32("W").unwrap().0,
            [40, 3]
        );
    }
}

#[test]
fn too_many_components_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pefs = tmp.path().join("d");
    synth(&pefs, "diagonal", "4", "200");
    let out = tmp.path().join("o.safetensors");
    let err = fails(&[
        "npeff",
        "fit",
        "--pefs",
        p(&pefs),
        "--components",
        "5",
        "--out",
        p(&out),
    ]);
    assert!(
        err.contains("5 components") && err.contains("4 examples"),
        "{err}"
    );
    synth(&tmp.path().join("narrow"), "diagonal", "30", "4");
    let err = fails(&[
        "npeff",
        "fit",
        "--pefs",
        p(&tmp.path().join("narrow")),
        "--components",
        "5",
        "--out",
        p(&out),
    ]);
    assert!(err.contains("kept after pruning"), "{err}");
    assert!(!out.exists());
}

#[test]
fn corrupt_shards_are_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let pefs = tmp.path().join("d");
    synth(&pefs, "diagonal", "20", "200");
    let shard = pefs.join("shard-00001.safetensors");
    let f = MappedFile::open(&shard).unwrap();
    let (vshape, mut values) = f.read_f32("values").unwrap();
    let st = f.tensors().unwrap();
    let mut indices = st::to_indices(&st.tensor("indices").unwrap()).unwrap();
    let (_, norms) = f.read_f32("norms").unwrap();
    drop(st);
    drop(f);
    let write = |values: &[f32], indices: &[u64]| {
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        st::write(
            &shard,
            &[
                ("values".into(), OwnedTensor::f32(vshape.clone(), values)),
                ("indices".into(), OwnedTensor::u32(vshape.clone(), &idx)),
                ("norms".into(), OwnedTensor::f32(vec![norms.len()], &norms)),
            ],
            HashMap::new(),
        )
        .unwrap();
    };
    let out = tmp.path().join("o.safetensors");
    let k = vshape[1];
    let fit = [
        "npeff",
        "fit",
        "--pefs",
        p(&pefs),
        "--components",
        "2",
        "--out",
        p(&out),
    ];
    // Row 2 of the second shard is global example 18.
    indices[2 * k] = 5000;
    write(&values, &indices);
    let err = fails(&fit);
    assert!(
        err.contains("shard-00001.safetensors")
            && err.contains("`indices` row 18")
            && err.contains("out of range"),
        "{err}"
    );
    indices[2 * k] = 0;
    values[k + 1] = f32::INFINITY;
    write(&values, &indices);
    let err = fails(&fit);
    assert!(
        err.contains("`values` row 17") && err.contains("NaN/inf"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn decomposition_of_another_model_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    synth(&a, "diagonal", "20", "200");
    synth(&b, "diagonal", "20", "300");
    let dec = tmp.path().join("a.safetensors");
    ok(&[
        "npeff",
        "fit",
        "--pefs",
        p(&a),
        "--components",
        "2",
        "--iters",
        "5",
        "--out",
        p(&dec),
    ]);
    let out = tmp.path().join("w.safetensors");
    let err = fails(&[
        "npeff",
        "coeffs",
        "--pefs",
        p(&b),
        "--decomposition",
        p(&dec),
        "--out",
        p(&out),
    ]);
    assert!(err.contains("different parameter table"), "{err}");
    let err = fails(&["npeff", "top", "--pefs", p(&b), "--decomposition", p(&dec)]);
    assert!(err.contains("different parameter table"), "{err}");
    let lr = tmp.path().join("lr");
    synth(&lr, "low-rank", "20", "200");
    let err = fails(&[
        "npeff",
        "coeffs",
        "--pefs",
        p(&lr),
        "--decomposition",
        p(&dec),
        "--out",
        p(&out),
    ]);
    assert!(
        err.contains("diagonal decomposition") && err.contains("low-rank PEFs"),
        "{err}"
    );
}

/// `(plus + minus) / 2` of a perturbation's baseline KL.
fn mean_baseline_kl(pm: &Value) -> f64 {
    (pm["plus"]["kl_baseline"].as_f64().unwrap() + pm["minus"]["kl_baseline"].as_f64().unwrap())
        / 2.0
}

#[test]
fn top_perturb_and_report_of_a_model_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_with_tokenizer(tmp.path());
    let data = tmp.path().join("d.jsonl");
    let words = ["a", "b", "c", "d"];
    let mut lines = vec![String::new()];
    let mut inputs = vec![String::new()];
    for i in 0..36 {
        let input: Vec<&str> = (0..2 + i % 3).map(|j| words[(i * 5 + j * 3) % 4]).collect();
        let mut input = input.join(" ");
        if i == 7 {
            input.push_str(" <b> & \"c\"");
        }
        let target = if input.contains('a') { "yes" } else { "no" };
        lines.push(serde_json::json!({"input": input, "target": target}).to_string());
        inputs.push(input);
    }
    // A blank first line: data lines and example indices differ by 2.
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let pefs = tmp.path().join("pefs");
    ok(&[
        "pefs",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--outputs",
        "labels",
        "--labels",
        "yes,no",
        "--kind",
        "diagonal",
        "--top-k",
        "300",
        "--out",
        p(&pefs),
    ]);
    let dec = tmp.path().join("dec.safetensors");
    ok(&[
        "npeff",
        "fit",
        "--pefs",
        p(&pefs),
        "--components",
        "3",
        "--iters",
        "40",
        "--out",
        p(&dec),
    ]);
    let analysed = ["--decomposition", p(&dec), "--pefs", p(&pefs)];
    let top_json = tmp.path().join("top.json");
    let mut args = vec!["npeff", "top", "--top", "5", "--out", p(&top_json)];
    args.extend(analysed);
    let printed: Value = serde_json::from_str(&ok(&args)).unwrap();
    let top: Value = serde_json::from_str(&std::fs::read_to_string(&top_json).unwrap()).unwrap();
    assert_eq!(printed, top);
    assert_eq!(top["label_names"], serde_json::json!(["yes", "no"]));
    let components = top["per_component"].as_array().unwrap();
    assert_eq!(components.len(), 3);
    let table: Vec<String> = fisherkit_npeff::pef::PefDir::open(&pefs)
        .unwrap()
        .meta
        .parameters
        .iter()
        .map(|e| e.name.clone())
        .collect();
    for c in components {
        let examples = c["top_examples"].as_array().unwrap();
        assert!(!examples.is_empty() && examples.len() <= 5);
        let coefficients: Vec<f64> = examples
            .iter()
            .map(|e| e["coefficient"].as_f64().unwrap())
            .collect();
        assert!(
            coefficients.windows(2).all(|w| w[0] >= w[1]),
            "{coefficients:?}"
        );
        for e in examples {
            // The text is the example's own line of the data file.
            let i = e["example"].as_u64().unwrap() as usize;
            assert_eq!(e["line"].as_u64().unwrap() as usize, i + 2);
            assert_eq!(e["input"].as_str().unwrap(), inputs[i + 1]);
            let label = e["label"].as_str().unwrap();
            assert_eq!(
                label,
                if inputs[i + 1].contains('a') {
                    "yes"
                } else {
                    "no"
                }
            );
            assert_eq!(
                e["correct"].as_bool().unwrap(),
                e["prediction"] == e["label"]
            );
        }
        for grouping in ["by_tensor", "by_layer", "by_kind"] {
            let shares = c["attribution"][grouping].as_array().unwrap();
            let total: f64 = shares.iter().map(|s| s["share"].as_f64().unwrap()).sum();
            assert!((total - 1.0).abs() < 1e-6, "{grouping} sums to {total}");
        }
        for t in c["attribution"]["by_tensor"].as_array().unwrap() {
            assert!(table.contains(&t["name"].as_str().unwrap().to_string()));
        }
    }

    let perturbed = tmp.path().join("perturb.json");
    let mut args = vec![
        "npeff",
        "perturb",
        "--top",
        "5",
        "--baseline",
        "12",
        "--target-kl",
        "0.02",
        "--random-control",
        "--out",
        p(&perturbed),
    ];
    args.extend(analysed);
    ok(&args);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&perturbed).unwrap()).unwrap();
    let per = report["per_component"].as_array().unwrap();
    assert_eq!(per.len(), 3);
    for (c, t) in per.iter().zip(components) {
        // ε was found so that the baseline KL hits the target; the top examples are
        // `top`'s.
        let kl = mean_baseline_kl(&c["component_direction"]);
        assert!((kl - 0.02).abs() <= 0.05 * 0.02 + 1e-12, "baseline KL {kl}");
        assert!(c["epsilon"].as_f64().unwrap() > 0.0);
        let ids: Vec<&Value> = t["top_examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["example"])
            .collect();
        let mine: Vec<&Value> = c["top_examples"].as_array().unwrap().iter().collect();
        assert_eq!(ids, mine);
        assert_eq!(c["baseline_examples"], 12);
        assert!(c["random_direction"]["max_ratio"].as_f64().unwrap() > 0.0);
    }

    let html = tmp.path().join("report.html");
    // Every example with a positive coefficient is shown, the one with markup included.
    let mut args = vec![
        "npeff",
        "report",
        "--top",
        "36",
        "--perturbations",
        p(&perturbed),
        "--out",
        p(&html),
    ];
    args.extend(analysed);
    ok(&args);
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<section class=\"component\"").count(), 3);
    assert!(!page.contains("<b> &"));
    assert!(page.contains("&lt;b&gt; &amp; &quot;c&quot;"));
    assert!(page.contains("random (control)"));

    // Bad input: a step of zero, a component out of range, another model, a report
    // that is not a perturbation report.
    let bad = |extra: &[&str], needle: &str| {
        let mut args = vec!["npeff", "perturb"];
        args.extend(analysed);
        args.extend(extra);
        let err = fails(&args);
        assert!(err.contains(needle), "expected {needle:?} in {err}");
    };
    bad(&["--epsilon", "0"], "--epsilon must be positive");
    bad(&["--components", "0,7"], "component 7 is out of range");
    let other = testdata("fixtures/t5-tiny-v11");
    bad(
        &["--model", p(&other)],
        "the PEFs were computed with another model",
    );
    let mut args = vec![
        "npeff",
        "report",
        "--perturbations",
        p(&top_json),
        "--out",
        p(&html),
    ];
    args.extend(analysed);
    let err = fails(&args);
    assert!(err.contains("not an `npeff perturb` report"), "{err}");
}
