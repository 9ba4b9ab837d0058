//! End-to-end `fisherkit fisher` / `fisherkit pefs` on the tiny T5 fixtures.

mod support;

use fisherkit_common::st::MappedFile;
use fisherkit_npeff::pef::PefDir;
use std::path::{Path, PathBuf};
use support::{model_with_tokenizer, ok, s};

/// A shared fixture directory as a `&'static str` for argument arrays (a few bytes
/// leaked per call, in tests only).
fn fixture(name: &str) -> &'static str {
    let path = support::testdata(&format!("fixtures/{name}"));
    Box::leak(s(&path).to_string().into_boxed_str())
}

/// A command that must fail cleanly with `needle` in its message.
fn fails(args: &[&str], needle: &str) {
    let err = support::fails(args);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

/// The reversal task of the fixtures, as token ids.
fn write_id_data(path: &Path, n: usize) {
    let mut lines = String::new();
    for i in 0..n {
        let input: Vec<u32> = (0..3 + i % 4)
            .map(|j| 3 + ((i * 7 + j * 5) % 37) as u32)
            .collect();
        let mut target: Vec<u32> = input.iter().rev().copied().collect();
        target.push(1);
        let mut input = input;
        input.push(1);
        lines.push_str(&format!(
            "{{\"input_ids\": {input:?}, \"target_ids\": {target:?}}}\n"
        ));
    }
    std::fs::write(path, lines).unwrap();
}

/// Tensors of a safetensors file, flattened in the model's parameter order.
fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let f = MappedFile::open(path).unwrap();
    f.names_in_order()
        .unwrap()
        .into_iter()
        .map(|n| {
            let (_, v) = f.read_f32(&n).unwrap();
            (n, v)
        })
        .collect()
}

#[test]
fn dataset_fisher_is_the_batch_independent_mean_of_per_example_diagonals() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    write_id_data(&data, 5);
    let f1 = dir.path().join("f1.safetensors");
    let f3 = dir.path().join("f3.safetensors");
    let common = [
        "--model",
        fixture("t5-tiny-v10"),
        "--data",
        s(&data),
        "--outputs",
        "tokens",
        "--top-k-classes",
        "3",
    ];
    ok(&[
        &["fisher"][..],
        &common,
        &["--out", s(&f1), "--batch-size", "1"],
    ]
    .concat());
    ok(&[
        &["fisher"][..],
        &common,
        &["--out", s(&f3), "--batch-size", "3"],
    ]
    .concat());
    // Batching shares only the padded forward pass that gives the class probabilities,
    // whose f32 rounding differs (log-probabilities by ~1e-6); a squared summed
    // gradient (cross-example terms) would change the values by orders of magnitude.
    let (a, b) = (tensors(&f1), tensors(&f3));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        for (&x, &y) in x.iter().zip(y) {
            worst = worst.max((x - y).abs() / (x.abs().max(y.abs()) + 1e-12));
        }
    }
    assert!(
        worst < 1e-4,
        "batch size 1 vs 3: relative difference {worst}"
    );
    // The model parts' hand-written backward pass (the default here) and burn's autodiff
    // give the same Fisher, up to f32 rounding relative to each tensor's largest value.
    let f_autodiff = dir.path().join("f_autodiff.safetensors");
    ok(&[
        &["fisher"][..],
        &common,
        &[
            "--out",
            s(&f_autodiff),
            "--batch-size",
            "1",
            "--gradients",
            "autodiff",
        ],
    ]
    .concat());
    for ((name, fast), (_, autodiff)) in a.iter().zip(&tensors(&f_autodiff)) {
        let largest = fast.iter().fold(0f32, |m, x| m.max(x.abs()));
        let differs = fast
            .iter()
            .zip(autodiff)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            differs <= 1e-4 * largest,
            "{name}: fast vs autodiff differ by {differs} (largest {largest})"
        );
    }
    let meta = MappedFile::open(&f1).unwrap().metadata().unwrap();
    assert_eq!(meta["mode"], "exact");
    assert_eq!(meta["examples"], "5");
    assert!(meta["data_hash"].starts_with("fnv1a64:"));

    // Every model parameter is present, in checkpoint order, non-negative, not all zero.
    let model = tensors(&Path::new(fixture("t5-tiny-v10")).join("model.safetensors"));
    let n_params: usize = a.iter().map(|(_, v)| v.len()).sum();
    assert!(a.iter().all(|(_, v)| v.iter().all(|x| *x >= 0.0)));
    assert!(a.iter().any(|(_, v)| v.iter().any(|x| *x > 0.0)));
    for (name, _) in &a {
        assert!(
            model.iter().any(|(n, _)| n == name),
            "unknown tensor {name}"
        );
    }

    // Diagonal PEFs keeping every value (same batching): their mean is the dataset Fisher.
    let pefs = dir.path().join("pefs");
    let k = n_params.to_string();
    ok(&[
        &["pefs"][..],
        &common,
        &[
            "--out",
            s(&pefs),
            "--kind",
            "diagonal",
            "--top-k",
            &k,
            "--batch-size",
            "1",
            "--examples-per-shard",
            "2",
        ],
    ]
    .concat());
    let rows = PefDir::open(&pefs).unwrap().read_all().unwrap();
    assert_eq!(rows.n_examples, 5);
    let mut mean = vec![0f64; n_params];
    for r in 0..5 {
        let (idx, val) = rows.row(r);
        let dense_norm: f64 = val
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((dense_norm - f64::from(rows.norms[r])).abs() < 1e-5 * dense_norm);
        for (&i, &v) in idx.iter().zip(val) {
            mean[i as usize] += f64::from(v) / 5.0;
        }
    }
    let flat: Vec<f32> = a.iter().flat_map(|(_, v)| v.clone()).collect();
    for (i, (&f, &m)) in flat.iter().zip(&mean).enumerate() {
        assert!(
            (f64::from(f) - m).abs() <= 1e-6 * m.abs().max(1e-3),
            "parameter {i}: Fisher {f} vs mean of PEFs {m}"
        );
    }

    // A top-k of 10 keeps the 10 largest values of each example, with the dense norm.
    let small = dir.path().join("small");
    ok(&[
        &["pefs"][..],
        &common,
        &[
            "--out",
            s(&small),
            "--kind",
            "diagonal",
            "--top-k",
            "10",
            "--batch-size",
            "1",
        ],
    ]
    .concat());
    // The PEFs are what `fisherkit npeff` decomposes.
    let npeff = dir.path().join("npeff.safetensors");
    ok(&[
        "npeff",
        "fit",
        "--pefs",
        s(&small),
        "--components",
        "2",
        "--iters",
        "3",
        "--out",
        s(&npeff),
    ]);
    assert!(!MappedFile::open(&npeff)
        .unwrap()
        .names_in_order()
        .unwrap()
        .is_empty());
    let sparse = PefDir::open(&small).unwrap().read_all().unwrap();
    for r in 0..5 {
        let (_, full) = rows.row(r);
        let mut sorted = full.to_vec();
        sorted.sort_by(|x, y| y.total_cmp(x));
        let (_, kept) = sparse.row(r);
        let mut kept = kept.to_vec();
        kept.sort_by(|x, y| y.total_cmp(x));
        assert_eq!(kept, sorted[..10].to_vec());
        assert_eq!(
            sparse.norms[r], rows.norms[r],
            "norm taken before sparsifying"
        );
    }
}

#[test]
fn label_outputs_write_fishers_and_low_rank_pefs_with_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_with_tokenizer(dir.path());
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"input\": \"a b c\", \"target\": \"yes\"}\n{\"input\": \"d c\", \"target\": \"no\"}\n{\"input\": \"b\", \"target\": \"yes\"}\n",
    )
    .unwrap();
    let m = s(&model);
    let d = s(&data);
    let out = dir.path().join("f.safetensors");
    // `fisherkit <command> --model M --data D --outputs labels --labels L <rest>`
    fn with_labels<'a>(
        command: &'a str,
        m: &'a str,
        d: &'a str,
        labels: &'a str,
        rest: &[&'a str],
    ) -> Vec<&'a str> {
        let mut args = vec![
            command,
            "--model",
            m,
            "--data",
            d,
            "--outputs",
            "labels",
            "--labels",
            labels,
        ];
        args.extend_from_slice(rest);
        args
    }
    let out_arg = s(&out);
    for mode in ["exact", "sampled", "empirical"] {
        ok(&with_labels(
            "fisher",
            m,
            d,
            "yes,no",
            &["--mode", mode, "--out", out_arg],
        ));
        let meta = MappedFile::open(&out).unwrap().metadata().unwrap();
        assert_eq!(meta["mode"], mode);
        assert_eq!(meta["outputs"], "labels:yes,no");
    }
    fails(
        &with_labels("fisher", m, d, "yes,maybe", &["--out", out_arg]),
        "d.jsonl:2: target \"no\" is not one of the labels yes,maybe",
    );
    fails(
        &with_labels("fisher", m, d, "yes,no,maybe", &["--out", out_arg]),
        "label \"maybe\" never occurs",
    );
    let pefs = dir.path().join("lr");
    ok(&with_labels(
        "pefs",
        m,
        d,
        "yes,no",
        &["--kind", "low-rank", "--top-k", "50", "--out", s(&pefs)],
    ));
    let pef = PefDir::open(&pefs).unwrap();
    assert_eq!(pef.meta.n_classes, Some(2));
    let rows = pef.read_all().unwrap();
    assert_eq!(rows.n_examples, 3);
    for e in 0..3 {
        let kept: usize = (0..2).map(|c| rows.row(2 * e + c).0.len()).sum();
        assert!(kept <= 50 && kept > 0);
        assert!(rows.norms[e] > 0.0);
    }
    // Labels, predictions and label log-probabilities are stored with the PEFs: the
    // observed labels are the data's, predictions the argmax of the stored log-probs.
    let shard = MappedFile::open(&pef.dir.join(&pef.meta.shards[0].file)).unwrap();
    let st = shard.tensors().unwrap();
    let ints = |name: &str| -> Vec<i64> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    assert_eq!(ints("labels"), vec![0, 1, 0]);
    let (shape, logits) = shard.read_f32("logits").unwrap();
    assert_eq!(shape, vec![3, 2]);
    for (e, &pred) in ints("predictions").iter().enumerate() {
        let row = &logits[2 * e..2 * e + 2];
        let total: f32 = row.iter().map(|l| l.exp()).sum();
        assert!(
            (total - 1.0).abs() < 1e-5,
            "label probabilities sum to {total}"
        );
        assert_eq!(pred, if row[1] > row[0] { 1 } else { 0 });
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    write_id_data(&data, 3);
    let d = s(&data);
    let out = dir.path().join("f.safetensors");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "{\"input_ids\": [5, 1], \"target_ids\": [4, 1]}\n{\"input_ids\": [5, 1], \"target_ids\": []}\n").unwrap();
    fails(
        &[
            "fisher",
            "--model",
            fixture("t5-tiny-v10"),
            "--data",
            s(&empty),
            "--top-k-classes",
            "2",
            "--out",
            s(&out),
        ],
        "empty.jsonl:2: the target is empty",
    );
    fails(
        &[
            "fisher",
            "--model",
            fixture("t5-tiny-v10"),
            "--data",
            d,
            "--out",
            s(&out),
        ],
        "needs --top-k-classes",
    );
    fails(
        &[
            "pefs",
            "--model",
            fixture("t5-tiny-v10"),
            "--data",
            d,
            "--top-k-classes",
            "2",
            "--kind",
            "diagonal",
            "--top-k",
            "999999999",
            "--out",
            s(&dir.path().join("p")),
        ],
        "larger than the model's parameter count",
    );
    fails(
        &[
            "fisher",
            "--model",
            fixture("t5-tiny-v10"),
            "--data",
            d,
            "--outputs",
            "labels",
            "--out",
            s(&out),
        ],
        "--labels",
    );
}

#[test]
fn pef_runs_resume_and_refuse_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    write_id_data(&data, 4);
    let d = s(&data);
    let full = dir.path().join("full");
    let args = |out: &Path, model: &str| -> Vec<String> {
        [
            "pefs",
            "--model",
            model,
            "--data",
            d,
            "--top-k-classes",
            "2",
            "--kind",
            "diagonal",
            "--top-k",
            "40",
            "--examples-per-shard",
            "1",
            "--out",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let run = |a: Vec<String>| support::run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run(args(&full, fixture("t5-tiny-v10"))).status.success());
    // Simulate an interruption after two shards.
    let part = dir.path().join("part");
    std::fs::create_dir_all(&part).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("pefs.json")).unwrap()).unwrap();
    let mut cut = meta.clone();
    let shards = meta["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4);
    cut["shards"] = serde_json::Value::Array(shards[..2].to_vec());
    cut["n_examples"] = 2.into();
    cut["complete"] = false.into();
    for sh in &shards[..2] {
        let f = sh["file"].as_str().unwrap();
        std::fs::copy(full.join(f), part.join(f)).unwrap();
    }
    std::fs::write(part.join("pefs.json"), serde_json::to_string(&cut).unwrap()).unwrap();
    let other = run(args(&part, fixture("t5-tiny-v11")));
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("cannot resume"), "{err}");
    let resumed = run(args(&part, fixture("t5-tiny-v10")));
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resumed after 2"));
    let (a, b) = (
        PefDir::open(&full).unwrap().read_all().unwrap(),
        PefDir::open(&part).unwrap().read_all().unwrap(),
    );
    assert_eq!(
        (a.indices, a.values, a.norms),
        (b.indices, b.values, b.norms)
    );
}

/// A copy of the t5-tiny-v10 fixture whose weights are `scale`·v10 + noise (same
/// architecture, worse at the task), with the word-level tokenizer of `template`.
fn perturbed_model(dir: &Path, template: &Path, seed: u64) -> PathBuf {
    let model = dir.join(format!("perturbed{seed}"));
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(template.join(f), model.join(f)).unwrap();
    }
    let mut state = seed;
    let tensors: Vec<(String, fisherkit_common::st::OwnedTensor)> =
        tensors(&template.join("model.safetensors"))
            .into_iter()
            .map(|(name, values)| {
                let (shape, _) = MappedFile::open(&template.join("model.safetensors"))
                    .unwrap()
                    .read_f32(&name)
                    .unwrap();
                let noisy: Vec<f32> = values
                    .iter()
                    .map(|v| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        v + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
                    })
                    .collect();
                (name, fisherkit_common::st::OwnedTensor::f32(shape, &noisy))
            })
            .collect();
    fisherkit_common::st::write(
        &model.join("model.safetensors"),
        &tensors,
        Default::default(),
    )
    .unwrap();
    model
}

/// Rows of a CSV table written by `merge --search`: weights then score.
fn search_rows(out: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(out.join("search.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect()
}

/// `fisherkit score`: the summed target log-probability of each example.
fn score_sums(model: &Path, data: &Path) -> Vec<f64> {
    let out = support::run(&["score", "--model", s(model), "--data", s(data)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["target_logprob_sum"].as_f64().unwrap()
        })
        .collect()
}

#[test]
fn merge_search_scores_candidates_with_the_model_and_writes_the_best_merge() {
    let dir = tempfile::tempdir().unwrap();
    let target = model_with_tokenizer(dir.path());
    let other = perturbed_model(dir.path(), &target, 7);
    let eval = dir.path().join("eval.jsonl");
    write_id_data(&eval, 6);
    let out = dir.path().join("best");
    let base = [
        "merge",
        "--method",
        "linear",
        "--model",
        s(&target),
        "--model",
        s(&other),
    ];
    ok(&[
        &base[..],
        &[
            "--search",
            "grid",
            "--weights-grid",
            "1:0:0.25",
            "--eval-data",
            s(&eval),
            "--metric",
            "logprob",
            "--out",
            s(&out),
        ],
    ]
    .concat());
    let rows = search_rows(&out);
    assert_eq!(rows.len(), 5);
    // Each candidate's score is the merged model's mean target log-likelihood: at
    // weight 1 (the target alone) and 0 (the other model alone) it equals what
    // `fisherkit score` reports for those checkpoints.
    for (row, model) in [(&rows[0], &target), (&rows[4], &other)] {
        let sums = score_sums(model, &eval);
        let mean = sums.iter().sum::<f64>() / sums.len() as f64;
        assert!(
            (row[2] - mean).abs() < 1e-4 * mean.abs().max(1.0),
            "{row:?} vs {mean}"
        );
    }
    assert_eq!((rows[0][0], rows[0][1]), (1.0, 0.0));
    // The written merge is the best candidate's linear combination.
    let best = rows
        .iter()
        .fold(&rows[0], |b, r| if r[2] > b[2] { r } else { b });
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("search.json")).unwrap()).unwrap();
    assert_eq!(json["best"]["weights"][0].as_f64().unwrap(), best[0]);
    assert_eq!(json["candidates"].as_array().unwrap().len(), 5);
    let (a, b) = (
        tensors(&target.join("model.safetensors")),
        tensors(&other.join("model.safetensors")),
    );
    let merged = MappedFile::open(&out.join("model.safetensors")).unwrap();
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let (_, m) = merged.read_f32(name).unwrap();
        for ((&m, &x), &y) in m.iter().zip(x).zip(y) {
            let want = best[0] * f64::from(x) + best[1] * f64::from(y);
            assert!((f64::from(m) - want).abs() < 1e-5, "{name}: {m} vs {want}");
        }
    }

    // Rank classification over label strings: the accuracy at weight 1 is the target's,
    // recomputed here from `fisherkit score` of every label.
    let labelled = dir.path().join("labels.jsonl");
    let inputs = ["a b c", "d c", "b", "c a", "d"];
    let gold = ["yes", "no", "yes", "no", "no"];
    let mut lines = String::new();
    let mut every_label = String::new();
    for (i, g) in inputs.iter().zip(gold) {
        lines.push_str(&format!("{{\"input\": \"{i}\", \"target\": \"{g}\"}}\n"));
        for l in ["yes", "no"] {
            every_label.push_str(&format!("{{\"input\": \"{i}\", \"target\": \"{l}\"}}\n"));
        }
    }
    std::fs::write(&labelled, lines).unwrap();
    let all = dir.path().join("all.jsonl");
    std::fs::write(&all, every_label).unwrap();
    let sums = score_sums(&target, &all);
    let correct = (0..inputs.len())
        .filter(|&e| {
            let pred = if sums[2 * e] >= sums[2 * e + 1] {
                "yes"
            } else {
                "no"
            };
            pred == gold[e]
        })
        .count();
    let out2 = dir.path().join("acc");
    ok(&[
        &base[..],
        &[
            "--search",
            "grid",
            "--weights-grid",
            "1:0:0.5",
            "--eval-data",
            s(&labelled),
            "--labels",
            "yes,no",
            "--out",
            s(&out2),
        ],
    ]
    .concat());
    let rows = search_rows(&out2);
    assert_eq!(rows.len(), 3);
    assert!(
        (rows[0][2] - correct as f64 / 5.0).abs() < 1e-12,
        "{rows:?} vs {correct}/5"
    );
    for r in &rows {
        assert!(
            (r[2] * 5.0 - (r[2] * 5.0).round()).abs() < 1e-9,
            "accuracy {r:?}"
        );
    }

    // Selection data must differ from the test data; accuracy needs labels.
    let copy = dir.path().join("copy.jsonl");
    std::fs::copy(&eval, &copy).unwrap();
    fails(
        &[
            &base[..],
            &[
                "--search",
                "grid",
                "--eval-data",
                s(&eval),
                "--test-data",
                s(&copy),
                "--out",
                s(&dir.path().join("x")),
            ],
        ]
        .concat(),
        "same contents as --eval-data",
    );
    fails(
        &[
            &base[..],
            &[
                "--search",
                "grid",
                "--eval-data",
                s(&eval),
                "--metric",
                "accuracy",
                "--out",
                s(&dir.path().join("y")),
            ],
        ]
        .concat(),
        "--labels",
    );
    // A random search over two models with a test set reports the chosen merge's score.
    let out3 = dir.path().join("random");
    let test = dir.path().join("test.jsonl");
    write_id_data(&test, 9);
    ok(&[
        &base[..],
        &[
            "--search",
            "random",
            "--weights-samples",
            "3",
            "--seed",
            "5",
            "--eval-data",
            s(&eval),
            "--test-data",
            s(&test),
            "--out",
            s(&out3),
        ],
    ]
    .concat());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out3.join("search.json")).unwrap()).unwrap();
    assert_eq!(json["candidates"].as_array().unwrap().len(), 3);
    assert!(json["test"]["score"].as_f64().unwrap().is_finite());
}
