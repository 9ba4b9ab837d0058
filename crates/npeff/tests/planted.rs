//! End-to-end on planted PEFs: recovery of the planted components (both kinds),
//! coefficient fitting of held-out examples, thread-count independence, and resume.

use fisherkit_common::st::MappedFile;
use fisherkit_npeff::fit::{coeffs, fit, Decomposition, FitSettings, RunOptions};
use fisherkit_npeff::pef::PefKind;
use fisherkit_npeff::synth::{synth, SynthSpec, GROUND_TRUTH};
use fisherkit_npeff::with_threads;
use std::path::Path;

fn spec(kind: PefKind, examples: usize, first_example: usize) -> SynthSpec {
    SynthSpec {
        kind,
        examples,
        parameters: 400,
        components: 4,
        // Large enough to keep every planted entry: sparsification loses nothing.
        top_k: 400,
        classes: 2,
        support: Some(60),
        max_active: 2,
        seed: 7,
        first_example,
        examples_per_shard: 64,
    }
}

fn run() -> RunOptions {
    RunOptions {
        log_every: 10,
        checkpoint_every: 0,
        resume: false,
        stop_after: None,
    }
}

fn settings(kind: PefKind) -> FitSettings {
    FitSettings {
        components: 4,
        iters: if kind == PefKind::Diagonal { 300 } else { 400 },
        g_only_iters: 50,
        lr: 1e-3,
        cols_per_partition: 64,
        seed: 3,
        ..FitSettings::default()
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let d = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| *p as f64 * *q as f64)
            .sum::<f64>()
    };
    d(a, b) / (d(a, a) * d(b, b)).sqrt()
}

/// Greedy matching of fitted to planted rows by |cos|; returns the matched |cos| values.
fn matched_cosines(fitted: &[f32], planted: &[f32], r: usize) -> Vec<f64> {
    let m = planted.len() / r;
    let mut pairs: Vec<(f64, usize, usize)> = (0..r)
        .flat_map(|a| (0..r).map(move |b| (a, b)))
        .map(|(a, b)| {
            let c = cosine(&fitted[a * m..(a + 1) * m], &planted[b * m..(b + 1) * m]).abs();
            (c, a, b)
        })
        .collect();
    pairs.sort_by(|x, y| y.0.total_cmp(&x.0));
    let (mut used_a, mut used_b, mut out) = (vec![false; r], vec![false; r], vec![]);
    for (c, a, b) in pairs {
        if !used_a[a] && !used_b[b] {
            used_a[a] = true;
            used_b[b] = true;
            out.push(c);
        }
    }
    out
}

/// The planted dictionary restricted to the kept columns.
fn planted_on_kept(dir: &Path, name: &str, kept: &[u64], r: usize) -> Vec<f32> {
    let (shape, full) = MappedFile::open(&dir.join(GROUND_TRUTH))
        .unwrap()
        .read_f32(name)
        .unwrap();
    let m = shape[1];
    (0..r)
        .flat_map(|j| kept.iter().map(move |&c| (j, c)))
        .map(|(j, c)| full[j * m + c as usize])
        .collect()
}

fn recovers(kind: PefKind) {
    let tmp = tempfile::tempdir().unwrap();
    let pefs = tmp.path().join("pefs");
    synth(&spec(kind, 240, 0), &pefs, false).unwrap();
    let out = tmp.path().join("fit.safetensors");
    let report = fit(&pefs, &settings(kind), &run(), &out).unwrap();
    let losses: Vec<f64> = report.loss_history.iter().map(|h| h.1).collect();
    assert!(losses.last() < losses.first(), "{losses:?}");
    let dec = Decomposition::load(&out).unwrap();
    let name = if kind == PefKind::Diagonal { "H" } else { "G" };
    let planted = planted_on_kept(&pefs, name, &dec.kept, 4);
    let cos = matched_cosines(&dec.dict, &planted, 4);
    assert!(
        cos.iter().all(|c| *c >= 0.95),
        "{kind}: matched |cos| {cos:?}, losses {losses:?}"
    );
}

#[test]
fn d_npeff_recovers_planted_components() {
    recovers(PefKind::Diagonal);
}

#[test]
fn lrm_npeff_recovers_planted_components() {
    recovers(PefKind::LowRank);
}

/// Coefficients of held-out examples against the planted dictionary (unit rows) must equal
/// W*_ij·‖d_j‖^p / s_i, where s_i is the example's normalisation (‖f‖ or ‖AAᵀ‖_F) and
/// p = 1 for diagonal, 2 for low-rank.
fn coeffs_recover(kind: PefKind) {
    let tmp = tempfile::tempdir().unwrap();
    let held_out = tmp.path().join("held-out");
    synth(&spec(kind, 50, 10_000), &held_out, false).unwrap();
    let name = if kind == PefKind::Diagonal { "H" } else { "G" };
    let truth = MappedFile::open(&held_out.join(GROUND_TRUTH)).unwrap();
    let (_, mut dict) = truth.read_f32(name).unwrap();
    let (_, w_star) = truth.read_f32("W").unwrap();
    let (r, m) = (4, 400);
    let power = if kind == PefKind::Diagonal { 1 } else { 2 };
    let norms: Vec<f32> = (0..r)
        .map(|j| {
            dict[j * m..(j + 1) * m]
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
        })
        .collect();
    for j in 0..r {
        dict[j * m..(j + 1) * m]
            .iter_mut()
            .for_each(|v| *v /= norms[j]);
    }
    // A decomposition file holding the planted dictionary on all columns.
    let pef_meta = fisherkit_npeff::pef::PefDir::open(&held_out).unwrap().meta;
    let dec = Decomposition {
        info: fisherkit_npeff::fit::DecompositionInfo {
            kind,
            settings: FitSettings {
                components: r,
                ..FitSettings::default()
            },
            n_examples: 0,
            n_parameters: m as u64,
            parameter_fingerprint: pef_meta.parameter_fingerprint(),
            classes: pef_meta.rows_per_example(),
            n_kept: m,
            nnz: 0,
            empty_examples: 0,
            partitions: 1,
            steps_done: 0,
            final_loss: None,
            loss_definition: String::new(),
            seconds_per_step: 0.0,
            peak_rss_bytes: 0,
            cpu_seconds_per_step: 0.0,
        },
        dict,
        kept: (0..m as u64).collect(),
        w: vec![0.0; r],
        loss_history: vec![],
    };
    let dec_path = tmp.path().join("planted.safetensors");
    dec.save(&dec_path).unwrap();
    let out = tmp.path().join("w.safetensors");
    // Chunks of 16 examples: streaming must not change the answer.
    let w = coeffs(&held_out, &dec_path, 2000, 1, 16, &out).unwrap();
    let rows = fisherkit_npeff::pef::PefDir::open(&held_out)
        .unwrap()
        .read_all()
        .unwrap();
    for i in 0..50 {
        let s = rows.norms[i];
        for j in 0..r {
            let want = w_star[i * r + j] * norms[j].powi(power) / s;
            let got = w[i * r + j];
            assert!(
                (got - want).abs() <= 0.05 * want.max(0.05),
                "{kind} example {i} component {j}: fitted {got}, planted {want}"
            );
        }
    }
    let again = coeffs(&held_out, &dec_path, 2000, 1, 50, &out).unwrap();
    assert_eq!(w, again, "chunk size changed the coefficients");
}

#[test]
fn coeffs_recover_planted_coefficients_of_held_out_examples() {
    coeffs_recover(PefKind::Diagonal);
    coeffs_recover(PefKind::LowRank);
}

/// The named tensors as bit patterns (so NaN compares equal to itself and -0 ≠ 0).
fn tensors(path: &Path, names: &[&str]) -> Vec<Vec<u32>> {
    let f = MappedFile::open(path).unwrap();
    names
        .iter()
        .map(|n| {
            f.read_f32(n)
                .unwrap()
                .1
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect()
}

#[test]
fn same_seed_same_bits_with_one_and_two_threads() {
    for kind in [PefKind::Diagonal, PefKind::LowRank] {
        let tmp = tempfile::tempdir().unwrap();
        let pefs = tmp.path().join("pefs");
        synth(&spec(kind, 120, 0), &pefs, false).unwrap();
        let mut s = settings(kind);
        s.iters = 20;
        s.g_only_iters = 5;
        let name = if kind == PefKind::Diagonal { "H" } else { "G" };
        let mut results = vec![];
        for threads in [1, 2] {
            let out = tmp.path().join(format!("fit{threads}.safetensors"));
            with_threads(Some(threads), || fit(&pefs, &s, &run(), &out))
                .unwrap()
                .unwrap();
            results.push(tensors(&out, &["W", name]));
        }
        assert_eq!(results[0], results[1], "{kind}: 1 vs 2 threads differ");
        // A different seed gives a different fit (the comparison above can fail).
        s.seed += 1;
        let out = tmp.path().join("other.safetensors");
        fit(&pefs, &s, &run(), &out).unwrap();
        assert_ne!(results[0], tensors(&out, &["W", name]));
    }
}

#[test]
fn stopped_and_resumed_fit_equals_uninterrupted_fit() {
    for kind in [PefKind::Diagonal, PefKind::LowRank] {
        let tmp = tempfile::tempdir().unwrap();
        let pefs = tmp.path().join("pefs");
        synth(&spec(kind, 80, 0), &pefs, false).unwrap();
        let mut s = settings(kind);
        s.iters = 12;
        s.g_only_iters = 4;
        let whole = tmp.path().join("whole.safetensors");
        let full = fit(&pefs, &s, &run(), &whole).unwrap();
        let sliced = tmp.path().join("sliced.safetensors");
        // Two slices: the first ends inside the G-only warm-up for LRM.
        for stop in [3, 6] {
            let r = fit(
                &pefs,
                &s,
                &RunOptions {
                    stop_after: Some(stop),
                    resume: true,
                    ..run()
                },
                &sliced,
            )
            .unwrap();
            assert!(r.output.is_none());
        }
        let rest = fit(
            &pefs,
            &s,
            &RunOptions {
                resume: true,
                ..run()
            },
            &sliced,
        )
        .unwrap();
        assert_eq!(rest.loss_history, full.loss_history);
        let name = if kind == PefKind::Diagonal { "H" } else { "G" };
        assert_eq!(
            tensors(&whole, &["W", name]),
            tensors(&sliced, &["W", name])
        );
        assert!(!fisherkit_npeff::fit::checkpoint_path(&sliced).exists());
    }
}
