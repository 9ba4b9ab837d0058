//! Planted PEFs: examples generated from known non-negative coefficients W* and known
//! components (H* for diagonal, G* for low-rank), written in the PEF format with the
//! ground truth beside them (see [`GROUND_TRUTH`]).

use crate::pef::{
    DiagonalExample, LowRankExample, PefHeader, PefKind, PefWriter, SparseColumn, WriterOptions,
};
use crate::solve::row_rng;
use anyhow::{ensure, Result};
use fisherkit_common::st::{self, OwnedTensor};
use rand::seq::index::sample;
use rand::Rng;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// What to plant.
#[derive(Clone, Debug)]
pub struct SynthSpec {
    pub kind: PefKind,
    pub examples: usize,
    pub parameters: usize,
    pub components: usize,
    pub top_k: usize,
    /// Low-rank: class columns per example (c).
    pub classes: usize,
    /// Parameters in each component's support (default 2·m/r, at least 1).
    pub support: Option<usize>,
    /// Most components active in one example (diagonal; low-rank uses at most c).
    pub max_active: usize,
    pub seed: u64,
    /// Global index of the first example: examples `first_example..` of the same seed
    /// share its components, so a later range serves as held-out data.
    pub first_example: usize,
    pub examples_per_shard: usize,
}

/// One planted component: sorted support and its values.
struct Component {
    indices: Vec<u64>,
    values: Vec<f32>,
}

fn components(spec: &SynthSpec, support: usize) -> Vec<Component> {
    (0..spec.components)
        .into_par_iter()
        .map(|j| {
            let mut rng = row_rng(spec.seed, 10, j);
            let mut indices: Vec<u64> = sample(&mut rng, spec.parameters, support)
                .into_iter()
                .map(|i| i as u64)
                .collect();
            indices.sort_unstable();
            let values = indices
                .iter()
                .map(|_| match spec.kind {
                    PefKind::Diagonal => rng.random_range(0.1f32..1.0),
                    // Symmetric, heavy enough tails that top-|v| sparsification keeps structure.
                    PefKind::LowRank => {
                        let v: f32 = rng.random_range(0.2f32..1.0);
                        if rng.random::<bool>() {
                            v
                        } else {
                            -v
                        }
                    }
                })
                .collect();
            Component { indices, values }
        })
        .collect()
}

/// Active components and their weights for one example.
fn planted_row(spec: &SynthSpec, i: usize, max_active: usize) -> Vec<(usize, f32)> {
    let mut rng = row_rng(spec.seed, 11, spec.first_example + i);
    let active = rng.random_range(1..=max_active.min(spec.components));
    sample(&mut rng, spec.components, active)
        .into_iter()
        .map(|j| (j, rng.random_range(0.5f32..1.5)))
        .collect()
}

/// Σ_j w_j · comp_j as a sparse vector with ascending indices.
fn combine(parts: &[(f32, &Component)]) -> (Vec<u64>, Vec<f32>) {
    let mut pairs: Vec<(u64, f32)> = parts
        .iter()
        .flat_map(|(w, c)| {
            c.indices
                .iter()
                .zip(&c.values)
                .map(move |(&i, &v)| (i, w * v))
        })
        .collect();
    pairs.sort_unstable_by_key(|p| p.0);
    let mut out: (Vec<u64>, Vec<f32>) = (vec![], vec![]);
    for (i, v) in pairs {
        if out.0.last() == Some(&i) {
            *out.1.last_mut().unwrap() += v;
        } else {
            out.0.push(i);
            out.1.push(v);
        }
    }
    out
}

/// Where [`synth`] stores the ground truth: a subdirectory, so tools that glob
/// `DIR/*.safetensors` for shards do not pick it up.
pub const GROUND_TRUTH: &str = "ground-truth/planted.safetensors";

/// Write planted PEFs to `out` and `out/ground-truth/planted.safetensors`
/// (`W` [n, r], `H` or `G` [r, m] dense, in the original parameter space).
pub fn synth(spec: &SynthSpec, out: &Path, overwrite: bool) -> Result<()> {
    ensure!(spec.examples > 0, "--examples must be positive");
    ensure!(spec.parameters > 0, "--parameters must be positive");
    ensure!(spec.components > 0, "--components must be positive");
    ensure!(spec.top_k > 0, "--top-k must be positive");
    ensure!(spec.classes > 0, "--classes must be positive");
    let support = spec
        .support
        .unwrap_or(2 * spec.parameters / spec.components)
        .clamp(1, spec.parameters);
    let comps = components(spec, support);
    let max_active = match spec.kind {
        PefKind::Diagonal => spec.max_active.max(1),
        PefKind::LowRank => spec.classes,
    };
    let header = PefHeader {
        kind: spec.kind,
        n_parameters: spec.parameters as u64,
        parameters: vec![crate::pef::ParameterEntry {
            name: "planted".into(),
            shape: vec![spec.parameters],
            offset: 0,
        }],
        top_k: spec.top_k,
        n_classes: (spec.kind == PefKind::LowRank).then_some(spec.classes),
        settings: serde_json::json!({
            "synthetic": true, "seed": spec.seed, "components": spec.components,
            "support": support, "first_example": spec.first_example,
        }),
    };
    let mut writer = PefWriter::create(
        out,
        header,
        WriterOptions {
            examples_per_shard: spec.examples_per_shard,
            resume: false,
            overwrite,
        },
    )?;
    let r = spec.components;
    let mut w_star = vec![0f32; spec.examples * r];
    let pb = fisherkit_common::progress::bar(spec.examples as u64, "examples");
    // Generate a shard's worth in parallel, write sequentially.
    for start in (0..spec.examples).step_by(spec.examples_per_shard.max(1)) {
        let end = (start + spec.examples_per_shard.max(1)).min(spec.examples);
        let rows: Vec<Vec<(usize, f32)>> = (start..end)
            .map(|i| planted_row(spec, i, max_active))
            .collect();
        match spec.kind {
            PefKind::Diagonal => {
                let examples: Vec<DiagonalExample> = rows
                    .par_iter()
                    .map(|row| {
                        let parts: Vec<(f32, &Component)> =
                            row.iter().map(|&(j, w)| (w, &comps[j])).collect();
                        let (idx, val) = combine(&parts);
                        DiagonalExample::from_sparse(&idx, &val, spec.top_k)
                    })
                    .collect();
                for ex in &examples {
                    writer.push_diagonal(ex)?;
                }
            }
            PefKind::LowRank => {
                let examples: Vec<LowRankExample> = rows
                    .par_iter()
                    .map(|row| {
                        let mut columns: Vec<SparseColumn> = row
                            .iter()
                            .map(|&(j, w)| SparseColumn {
                                indices: comps[j].indices.clone(),
                                values: comps[j].values.iter().map(|v| v * w.sqrt()).collect(),
                            })
                            .collect();
                        columns.resize(spec.classes, SparseColumn::default());
                        LowRankExample::from_sparse_columns(columns, spec.top_k)
                    })
                    .collect();
                for ex in &examples {
                    writer.push_low_rank(ex)?;
                }
            }
        }
        for (i, row) in (start..end).zip(&rows) {
            for &(j, w) in row {
                w_star[i * r + j] = w;
            }
        }
        pb.inc((end - start) as u64);
    }
    writer.finish()?;
    pb.finish_and_clear();
    let mut dict = vec![0f32; r * spec.parameters];
    for (j, c) in comps.iter().enumerate() {
        for (&i, &v) in c.indices.iter().zip(&c.values) {
            dict[j * spec.parameters + i as usize] = v;
        }
    }
    let name = match spec.kind {
        PefKind::Diagonal => "H",
        PefKind::LowRank => "G",
    };
    st::write(
        &out.join(GROUND_TRUTH),
        &[
            (
                "W".into(),
                OwnedTensor::f32(vec![spec.examples, r], &w_star),
            ),
            (
                name.into(),
                OwnedTensor::f32(vec![r, spec.parameters], &dict),
            ),
        ],
        HashMap::from([(
            "fisherkit.npeff.synth".to_string(),
            serde_json::json!({"kind": spec.kind, "seed": spec.seed, "support": support,
                "first_example": spec.first_example})
            .to_string(),
        )]),
    )
}

/// A control copy of the PEFs in `pefs`: every example keeps its values, norm and extras,
/// but its parameter indices go through its own random bijection of the parameter space
/// (k ↦ (a·k + b) mod n with gcd(a, n) = 1, seeded per example). What examples share —
/// the structure NPEFF finds — is destroyed; sparsity and value distributions are not.
/// The header (parameter table, producer settings) is kept, so the copy still names its
/// model and data.
pub fn shuffled_copy(pefs: &Path, out: &Path, seed: u64) -> Result<()> {
    use crate::pef::{PefDir, SparseColumn};
    let dir = PefDir::open(pefs)?;
    let meta = &dir.meta;
    let n = meta.n_parameters;
    let header = PefHeader {
        kind: meta.kind,
        n_parameters: n,
        parameters: meta.parameters.clone(),
        top_k: meta.top_k,
        n_classes: meta.n_classes,
        settings: meta.settings.clone(),
    };
    // An unfinished copy from an interrupted run is replaced.
    let options = WriterOptions {
        overwrite: true,
        ..WriterOptions::default()
    };
    let mut writer = PefWriter::create(out, header, options)?;
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let mut done = 0;
    for s in 0..dir.n_shards() {
        let rows = dir.read_shard(s, done)?;
        for e in 0..rows.n_examples {
            let i = done + e;
            let mut rng = row_rng(seed, 77, i);
            let a = loop {
                let a = rng.random_range(1..n.max(2));
                if gcd(a, n) == 1 {
                    break a;
                }
            };
            let b = rng.random_range(0..n);
            let map =
                |k: u64| ((u128::from(a) * u128::from(k) + u128::from(b)) % u128::from(n)) as u64;
            let c = rows.rows_per_example;
            match meta.kind {
                PefKind::Diagonal => {
                    let (idx, val) = rows.row(e);
                    writer.push_diagonal(&DiagonalExample {
                        values: val.to_vec(),
                        indices: idx.iter().map(|&k| map(k)).collect(),
                        norm: rows.norms[e],
                        extras: rows.extras[e].clone(),
                    })?;
                }
                PefKind::LowRank => {
                    let columns = (0..c)
                        .map(|col| {
                            let (idx, val) = rows.row(e * c + col);
                            let mut pairs: Vec<(u64, f32)> = idx
                                .iter()
                                .map(|&k| map(k))
                                .zip(val.iter().copied())
                                .collect();
                            pairs.sort_unstable_by_key(|p| p.0);
                            let (indices, values) = pairs.into_iter().unzip();
                            SparseColumn { indices, values }
                        })
                        .collect();
                    writer.push_low_rank(&LowRankExample {
                        columns,
                        norm: rows.norms[e],
                        extras: rows.extras[e].clone(),
                    })?;
                }
            }
        }
        done += rows.n_examples;
    }
    writer.finish()?;
    Ok(())
}
