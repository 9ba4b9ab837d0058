//! The PEF writer and reader: round trip over shards with extras, resumable writing,
//! sparsification helpers, and validation errors that name file, tensor and row.

use fisherkit_common::st::{self, OwnedTensor};
use fisherkit_npeff::pef::*;
use std::collections::HashMap;

fn header(kind: PefKind, k: usize) -> PefHeader {
    PefHeader {
        kind,
        n_parameters: 10,
        parameters: vec![
            ParameterEntry {
                name: "a.weight".into(),
                shape: vec![2, 3],
                offset: 0,
            },
            ParameterEntry {
                name: "a.bias".into(),
                shape: vec![4],
                offset: 6,
            },
        ],
        top_k: k,
        n_classes: (kind == PefKind::LowRank).then_some(2),
        settings: serde_json::json!({"producer": "test"}),
    }
}

fn options(per_shard: usize, resume: bool) -> WriterOptions {
    WriterOptions {
        examples_per_shard: per_shard,
        resume,
        overwrite: false,
    }
}

#[test]
fn diagonal_round_trip_with_resume_and_extras() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pefs");
    let dense: Vec<Vec<f32>> = (0..5)
        .map(|i| (0..10).map(|j| ((i * 7 + j * 3) % 5) as f32).collect())
        .collect();
    let example = |i: usize| {
        let mut ex = DiagonalExample::from_dense(&dense[i], 3);
        ex.extras = ExampleExtras {
            label: Some(i as i64),
            prediction: Some(1),
            logits: Some(vec![0.5, i as f32]),
            source_line: Some(2 * i as u64 + 1),
        };
        ex
    };
    let mut w = PefWriter::create(&dir, header(PefKind::Diagonal, 3), options(2, false)).unwrap();
    for i in 0..3 {
        w.push_diagonal(&example(i)).unwrap();
    }
    // Interrupted: the buffered third example is lost, the first shard survives.
    drop(w);
    let err = PefDir::open(&dir).err().unwrap().to_string();
    assert!(err.contains("unfinished"), "{err}");
    assert!(PefWriter::create(&dir, header(PefKind::Diagonal, 3), options(2, false)).is_err());
    let mut w = PefWriter::create(&dir, header(PefKind::Diagonal, 3), options(2, true)).unwrap();
    assert_eq!(w.examples_written(), 2);
    for i in 2..5 {
        w.push_diagonal(&example(i)).unwrap();
    }
    let meta = w.finish().unwrap();
    assert_eq!((meta.n_examples, meta.shards.len()), (5, 3));
    let pefs = PefDir::open(&dir).unwrap();
    let rows = pefs.read_all().unwrap();
    assert_eq!(rows.n_examples, 5);
    for (i, d) in dense.iter().enumerate() {
        let (idx, val) = rows.row(i);
        // The three largest entries of the dense row, zeros dropped, norm of the dense row.
        let mut sorted: Vec<f32> = d.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let want: Vec<f32> = sorted.into_iter().take(3).filter(|v| *v != 0.0).collect();
        assert_eq!(val, want.as_slice());
        for (&j, &v) in idx.iter().zip(val) {
            assert_eq!(d[j as usize], v);
        }
        let norm = d.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((rows.norms[i] - norm).abs() < 1e-5);
    }
    // The extras come back with their example, across shards and the resume.
    for i in 0..5 {
        assert_eq!(rows.extras[i], example(i).extras, "example {i}");
    }
    let shard = st::MappedFile::open(&dir.join("shard-00001.safetensors")).unwrap();
    assert_eq!(
        shard.read_f32("logits").unwrap(),
        (vec![2, 2], vec![0.5, 2.0, 0.5, 3.0])
    );
}

#[test]
fn low_rank_sparsification_keeps_largest_entries_jointly() {
    let c0 = [0.0, 3.0, 0.0, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0];
    let c1 = [2.0, 0.0, 0.0, 0.0, -4.0, 0.0, 0.0, 0.0, 0.0, 0.1];
    let ex = LowRankExample::from_dense_columns(&[&c0, &c1], 3);
    assert_eq!(ex.columns[0].indices, vec![1]);
    assert_eq!(ex.columns[1].indices, vec![0, 4]);
    assert_eq!(ex.columns[1].values, vec![2.0, -4.0]);
    // ‖AᵀA‖_F from the dense columns.
    let dot = |a: &[f64; 10], b: &[f64; 10]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let a: [f64; 10] = c0.map(|v| v as f64);
    let b: [f64; 10] = c1.map(|v| v as f64);
    let want = (dot(&a, &a).powi(2) + 2.0 * dot(&a, &b).powi(2) + dot(&b, &b).powi(2)).sqrt();
    assert!((ex.norm as f64 - want).abs() < 1e-4);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lr");
    let mut w = PefWriter::create(&dir, header(PefKind::LowRank, 3), options(4, false)).unwrap();
    w.push_low_rank(&ex).unwrap();
    w.finish().unwrap();
    let rows = PefDir::open(&dir).unwrap().read_all().unwrap();
    assert_eq!(rows.rows_per_example, 2);
    assert_eq!(rows.row(0), (&[1u64][..], &[3.0f32][..]));
    assert_eq!(rows.row(1), (&[0u64, 4][..], &[2.0f32, -4.0][..]));
}

/// Write a one-shard diagonal PEF directory by hand, bypassing the writer's checks.
fn hand_written(dir: &std::path::Path, values: &[f32], indices: &[u32], norms: &[f32]) {
    let (n, k) = (2, values.len() / 2);
    let mut meta = serde_json::json!({
        "format": FORMAT, "kind": "diagonal", "n_examples": n, "n_parameters": 10,
        "top_k": k, "shards": [{"file": "s.safetensors", "n_examples": n}]
    });
    meta["complete"] = true.into();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("pefs.json"), meta.to_string()).unwrap();
    st::write(
        &dir.join("s.safetensors"),
        &[
            ("values".into(), OwnedTensor::f32(vec![n, k], values)),
            ("indices".into(), OwnedTensor::u32(vec![n, k], indices)),
            ("norms".into(), OwnedTensor::f32(vec![norms.len()], norms)),
        ],
        HashMap::new(),
    )
    .unwrap();
}

#[test]
fn validation_errors_name_file_tensor_and_row() {
    let tmp = tempfile::tempdir().unwrap();
    // (name, values, indices, norms, words the error must contain)
    type Case = (
        &'static str,
        Vec<f32>,
        Vec<u32>,
        Vec<f32>,
        &'static [&'static str],
    );
    let cases: [Case; 6] = [
        (
            "range",
            vec![2.0, 1.0, 2.0, 1.0],
            vec![0, 1, 3, 10],
            vec![1.0, 1.0],
            &["indices", "row 1", "out of range"],
        ),
        (
            "nan",
            vec![2.0, 1.0, f32::NAN, 1.0],
            vec![0, 1, 3, 4],
            vec![1.0, 1.0],
            &["values", "row 1", "NaN"],
        ),
        (
            "order",
            vec![1.0, 2.0, 2.0, 1.0],
            vec![0, 1, 3, 4],
            vec![1.0, 1.0],
            &["values", "row 0", "descending"],
        ),
        (
            "dup",
            vec![2.0, 1.0, 2.0, 1.0],
            vec![0, 1, 4, 4],
            vec![1.0, 1.0],
            &["indices", "row 1", "twice"],
        ),
        (
            "shape",
            vec![2.0, 1.0, 2.0, 1.0],
            vec![0, 1, 3, 4],
            vec![1.0, 1.0, 1.0],
            &["norms", "shape"],
        ),
        (
            "norm",
            vec![2.0, 1.0, 2.0, 1.0],
            vec![0, 1, 3, 4],
            vec![1.0, f32::INFINITY],
            &["norms", "row 1"],
        ),
    ];
    for (name, values, indices, norms, needles) in cases {
        let dir = tmp.path().join(name);
        hand_written(&dir, &values, &indices, &norms);
        let err = format!(
            "{:#}",
            PefDir::open(&dir).and_then(|d| d.read_all()).unwrap_err()
        );
        assert!(err.contains("s.safetensors"), "{name}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
        }
    }
}

#[test]
fn pruning_keeps_empty_examples_and_maps_columns_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    let mut w = PefWriter::create(&dir, header(PefKind::Diagonal, 2), options(8, false)).unwrap();
    // Parameter 7 appears in two examples, 2 and 9 once each.
    for (idx, val) in [
        (vec![7u64, 2], vec![3.0f32, 1.0]),
        (vec![7], vec![4.0]),
        (vec![9], vec![5.0]),
    ] {
        w.push_diagonal(&DiagonalExample::from_sparse(&idx, &val, 2))
            .unwrap();
    }
    w.finish().unwrap();
    let rows = PefDir::open(&dir).unwrap().read_all().unwrap();
    let all = fisherkit_npeff::prep::prepare(PefKind::Diagonal, &rows, 1).unwrap();
    assert_eq!(all.kept, vec![2, 7, 9]);
    assert_eq!(all.empty_examples, 0);
    // Row 0 normalised by its dense norm sqrt(10): column 7 → kept index 1.
    let (c, v) = all.x.row(0);
    assert_eq!(c, &[0, 1]);
    assert!((v[1] - 3.0 / 10f32.sqrt()).abs() < 1e-6);
    let pruned = fisherkit_npeff::prep::prepare(PefKind::Diagonal, &rows, 2).unwrap();
    assert_eq!(pruned.kept, vec![7]);
    assert_eq!(pruned.x.nrows, 3, "the emptied example stays as a zero row");
    assert_eq!(pruned.empty_examples, 1);
    assert!(pruned.x.row(2).0.is_empty());
}
