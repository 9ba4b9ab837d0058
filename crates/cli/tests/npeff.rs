//! `fisherkit npeff` through the binary: synth → fit → coeffs, and bad input refused with
//! a non-zero exit and a message naming the file, tensor and row.

use fisherkit_common::st::{self, MappedFile, OwnedTensor};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

fn fisherkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fisherkit"))
        .args(args)
        .env("FISHERKIT_NO_PROGRESS", "1")
        .output()
        .expect("running fisherkit")
}

fn ok(args: &[&str]) {
    let out = fisherkit(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a command that must fail; return its stderr.
fn fails(args: &[&str]) -> String {
    let out = fisherkit(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} unexpectedly succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    err
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

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
