//! NPEFF analyses on a model whose per-example Fishers are known in closed form: a linear
//! softmax classifier p(y | x) = softmax(V x) whose examples fall into groups, each
//! group using its own block of input features (plus one feature all share). The
//! per-example Fisher of group g lives on the V columns of block g, so a fitted
//! component should (a) have one group's examples on top, (b) put its parameter mass on
//! that block, and (c) change the predictions of its top examples far more than of the
//! others when θ moves along it — while a random direction of the same norm does not.

use fisherkit_npeff::analysis::{Analysed, TopOptions};
use fisherkit_npeff::fit::{fit, FitSettings, RunOptions};
use fisherkit_npeff::pef::{
    DiagonalExample, ExampleExtras, LowRankExample, ParameterEntry, PefHeader, PefKind, PefWriter,
    Provenance, WriterOptions,
};
use fisherkit_npeff::perturb::{
    perturb, DirectionSettings, Epsilon, PerturbSettings, Predictor, Rejection, Shift,
};
use fisherkit_npeff::report::render;
use std::path::Path;

/// Every element closed in order (void elements written `<x/>`); `script` and `style`
/// hold raw text; no stray `<` or `&` in text.
fn well_formed(html: &str) -> Result<(), String> {
    let body = html.strip_prefix("<!DOCTYPE html>\n").ok_or("no doctype")?;
    let mut stack: Vec<String> = Vec::new();
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..text.len().min(i + 8)];
            if !entity.contains(';') {
                return Err(format!("bare & in text: {entity:?}"));
            }
        }
        let close = rest[open..].find('>').ok_or("unclosed tag")? + open;
        let tag = &rest[open + 1..close];
        rest = &rest[close + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            match stack.pop() {
                Some(top) if top == name => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
        } else if !tag.ends_with('/') {
            let name: String = tag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if name.is_empty() {
                return Err(format!("bad tag <{tag}>"));
            }
            if tag.matches('"').count() % 2 != 0 {
                return Err(format!("unbalanced quotes in <{tag}>"));
            }
            if name == "script" || name == "style" {
                let end = format!("</{name}>");
                let at = rest.find(&end).ok_or(format!("unclosed {name}"))?;
                rest = &rest[at + end.len()..];
            } else {
                stack.push(name);
            }
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(format!("unclosed elements {stack:?}"))
    }
}

const GROUPS: usize = 3;
const BLOCK: usize = 4;
const FEATURES: usize = GROUPS * BLOCK + 1;
const CLASSES: usize = 3;
const PER_GROUP: usize = 16;

/// The classifier: V (classes × features, row-major) and the examples' features.
struct Linear {
    v: Vec<f32>,
    x: Vec<Vec<f32>>,
    labels: Vec<usize>,
}

impl Linear {
    fn new() -> Self {
        // Deterministic pseudo-random numbers in [0, 1).
        let mut state = 12345u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let v = (0..CLASSES * FEATURES).map(|_| next() - 0.5).collect();
        let mut x = Vec::new();
        let mut labels = Vec::new();
        for g in 0..GROUPS {
            for i in 0..PER_GROUP {
                let mut row = vec![0f32; FEATURES];
                for f in 0..BLOCK {
                    row[g * BLOCK + f] = 0.5 + next();
                }
                row[FEATURES - 1] = 0.3;
                x.push(row);
                labels.push((g + i) % CLASSES);
            }
        }
        Self { v, x, labels }
    }

    fn log_probs(&self, v: &[f32], i: usize) -> Vec<f32> {
        let z: Vec<f64> = (0..CLASSES)
            .map(|k| {
                (0..FEATURES)
                    .map(|f| f64::from(v[k * FEATURES + f] * self.x[i][f]))
                    .sum()
            })
            .collect();
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + z.iter().map(|a| (a - max).exp()).sum::<f64>().ln();
        z.iter().map(|a| (a - lse) as f32).collect()
    }

    /// Columns a_k = √p_k ∇_θ log p_k (F = Σ_k a_k a_kᵀ); ∂ log p_k / ∂V[k', f] =
    /// (δ_kk' − p_k') x_f.
    fn fisher_columns(&self, i: usize) -> Vec<Vec<f32>> {
        let p: Vec<f32> = self.log_probs(&self.v, i).iter().map(|l| l.exp()).collect();
        (0..CLASSES)
            .map(|k| {
                let mut a = vec![0f32; CLASSES * FEATURES];
                for k2 in 0..CLASSES {
                    for f in 0..FEATURES {
                        let d = if k == k2 { 1.0 } else { 0.0 } - p[k2];
                        a[k2 * FEATURES + f] = p[k].sqrt() * d * self.x[i][f];
                    }
                }
                a
            })
            .collect()
    }
}

impl Predictor for Linear {
    fn log_probs(
        &mut self,
        shift: Option<&Shift<'_>>,
        examples: &[usize],
    ) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
        let mut v = self.v.clone();
        if let Some(s) = shift {
            for (&k, &d) in s.indices.iter().zip(s.values) {
                v[k as usize] += d;
            }
        }
        Ok(examples
            .iter()
            .map(|&i| vec![Linear::log_probs(self, &v, i)])
            .collect())
    }

    fn answers(&self, example: usize) -> Vec<usize> {
        vec![self.labels[example]]
    }
}

/// The data file the PEFs point at: one line per example (a blank line first, so line
/// numbers and example indices differ).
fn write_data(path: &Path, n: usize) {
    let mut text = String::from("\n");
    for i in 0..n {
        text.push_str(&format!(
            "{{\"input\": \"example <{i}> of group {}\", \"target\": \"c{}\"}}\n",
            i / PER_GROUP,
            i % CLASSES
        ));
    }
    std::fs::write(path, text).unwrap();
}

fn write_pefs(model: &Linear, kind: PefKind, dir: &Path, data: &Path) {
    let n = model.x.len();
    let bytes = std::fs::read(data).unwrap();
    let provenance = Provenance {
        data: Some(data.display().to_string()),
        data_hash: Some(fisherkit_common::data_hash(&bytes)),
        label_names: Some((0..CLASSES).map(|k| format!("c{k}")).collect()),
        ..Provenance::default()
    };
    let header = PefHeader {
        kind,
        n_parameters: (CLASSES * FEATURES) as u64,
        parameters: vec![ParameterEntry {
            name: "classifier.weight".into(),
            shape: vec![CLASSES, FEATURES],
            offset: 0,
        }],
        top_k: CLASSES * FEATURES,
        n_classes: (kind == PefKind::LowRank).then_some(CLASSES),
        settings: provenance.with_settings(serde_json::json!({})),
    };
    let mut w = PefWriter::create(dir, header, WriterOptions::default()).unwrap();
    for i in 0..n {
        let log_probs = model.log_probs(&model.v, i);
        let extras = ExampleExtras {
            label: Some(model.labels[i] as i64),
            prediction: Some(fisherkit_common::argmax(&log_probs) as i64),
            logits: Some(log_probs),
            source_line: Some(i as u64 + 2),
        };
        let columns = model.fisher_columns(i);
        match kind {
            PefKind::Diagonal => {
                let diag: Vec<f32> = (0..CLASSES * FEATURES)
                    .map(|p| columns.iter().map(|a| a[p] * a[p]).sum())
                    .collect();
                let mut ex = DiagonalExample::from_dense(&diag, CLASSES * FEATURES);
                ex.extras = extras;
                w.push_diagonal(&ex).unwrap();
            }
            PefKind::LowRank => {
                let refs: Vec<&[f32]> = columns.iter().map(Vec::as_slice).collect();
                let mut ex = LowRankExample::from_dense_columns(&refs, CLASSES * FEATURES);
                ex.extras = extras;
                w.push_low_rank(&ex).unwrap();
            }
        }
    }
    w.finish().unwrap();
}

fn fitted(kind: PefKind, tmp: &Path) -> (Linear, Analysed) {
    let model = Linear::new();
    let data = tmp.join("data.jsonl");
    write_data(&data, model.x.len());
    let pefs = tmp.join(format!("{kind}"));
    write_pefs(&model, kind, &pefs, &data);
    let out = tmp.join(format!("{kind}.safetensors"));
    let settings = FitSettings {
        components: GROUPS,
        iters: 400,
        g_only_iters: 100,
        lr: 1e-2,
        seed: 1,
        ..FitSettings::default()
    };
    let run = RunOptions {
        log_every: 50,
        checkpoint_every: 0,
        resume: false,
        stop_after: None,
    };
    fit(&pefs, &settings, &run, &out).unwrap();
    let an = Analysed::open(&out, &pefs, None).unwrap();
    (model, an)
}

/// The group whose examples dominate component `j`'s top examples, and that share.
fn dominant_group(top: &[usize]) -> (usize, f64) {
    let mut counts = [0usize; GROUPS];
    for &i in top {
        counts[i / PER_GROUP] += 1;
    }
    let g = (0..GROUPS).max_by_key(|&g| counts[g]).unwrap();
    (g, counts[g] as f64 / top.len() as f64)
}

#[test]
fn top_examples_attribution_and_perturbation_on_a_known_model() {
    let tmp = tempfile::tempdir().unwrap();
    for kind in [PefKind::Diagonal, PefKind::LowRank] {
        let (mut model, an) = fitted(kind, tmp.path());
        let report = an
            .top(
                &TopOptions {
                    top: PER_GROUP,
                    components: vec![],
                    data: None,
                },
                Path::new("d"),
                Path::new("p"),
            )
            .unwrap();
        assert!(report.notes.is_empty(), "{:?}", report.notes);
        let mut groups = Vec::new();
        for c in &report.per_component {
            // `top` is the brute-force order of W's column.
            let j = c.component;
            let mut brute: Vec<(f32, usize)> = (0..an.n_examples())
                .map(|i| (an.coefficient(i, j), i))
                .filter(|(w, _)| *w > 0.0)
                .collect();
            brute.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let got: Vec<usize> = c.top_examples.iter().map(|e| e.example).collect();
            let want: Vec<usize> = brute.iter().take(PER_GROUP).map(|(_, i)| *i).collect();
            assert_eq!(got, want, "{kind} component {j}");
            // One group on top, and the texts are that example's line of the data file.
            let (g, share) = dominant_group(&got);
            assert!(
                share >= 0.8,
                "{kind} component {j}: top share {share} of group {g}"
            );
            groups.push(g);
            for e in &c.top_examples {
                let want = format!("example <{}> of group {}", e.example, e.example / PER_GROUP);
                assert_eq!(e.text.input.as_deref(), Some(want.as_str()));
                assert_eq!(e.line, Some(e.example as u64 + 2));
                assert_eq!(
                    e.label.as_deref(),
                    Some(format!("c{}", model.labels[e.example]).as_str())
                );
            }
            let fractions: f64 = c.label_fractions.iter().map(|s| s.share).sum();
            assert!((fractions - 1.0).abs() < 1e-9);
            // The mass sits on the group's block of V columns.
            let attribution = c.attribution.as_ref().unwrap();
            assert_eq!(attribution.by_tensor.len(), 1);
            assert!((attribution.by_tensor[0].share - 1.0).abs() < 1e-6);
            let mass = an.parameter_mass(j);
            let on_block: f64 = an
                .decomposition
                .kept
                .iter()
                .zip(&mass)
                .filter(|(&k, _)| (k as usize % FEATURES) / BLOCK == g)
                .map(|(_, m)| m)
                .sum();
            assert!(
                on_block > 0.8,
                "{kind} component {j}: {on_block} of its mass on block {g}"
            );
        }
        groups.sort_unstable();
        assert_eq!(
            groups,
            (0..GROUPS).collect::<Vec<_>>(),
            "{kind}: every group found once"
        );

        let settings = PerturbSettings {
            components: vec![],
            top: PER_GROUP,
            baseline: 2 * PER_GROUP,
            epsilon: Epsilon::Fixed(1.0),
            direction: DirectionSettings {
                max_cos: 0.3,
                rejection: Rejection::Span,
                seed: 5,
            },
            random_control: true,
        };
        let result = perturb(&an, &mut model, &settings, |_| {}).unwrap();
        for c in &result.per_component {
            let own = c.component_direction.max_ratio;
            let random = c.random_direction.as_ref().unwrap().max_ratio;
            assert!(
                own > 10.0 && own > 10.0 * random,
                "{kind} component {}: ratio {own}, a random direction's {random}",
                c.component
            );
            assert_eq!(c.baseline_examples, 2 * PER_GROUP);
            assert!(c.baseline_examples + c.top_examples.len() <= an.n_examples());
        }
        // A random direction moves the top examples about as much as the others.
        let random = result.median_random_ratio.unwrap();
        assert!(
            (1.0 / 3.0..3.0).contains(&random),
            "{kind}: random median ratio {random}"
        );
        assert!(result.median_ratio > 10.0);
        // The report holds every component, its top examples' text escaped, and the
        // perturbation numbers.
        let html = render(
            &report,
            &an.decomposition.info,
            &an.decomposition.loss_history,
            Some(&result),
        );
        well_formed(&html).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(html.matches("<section class=\"component\"").count(), GROUPS);
        for j in 0..GROUPS {
            assert!(html.contains(&format!("id=\"component-{j}\"")));
        }
        assert!(
            html.contains("example &lt;0&gt; of group 0")
                || html.contains("example &lt;16&gt; of group 1")
        );
        assert!(!html.contains("example <"));
        assert!(html.contains("random (control)"));
        assert!(
            !html.contains("src=") && !html.contains("href=\"http"),
            "no external resources"
        );
        assert!(well_formed("<!DOCTYPE html>\n<p><b>x</p></b>").is_err());
        assert!(well_formed("<!DOCTYPE html>\n<p>a & b</p>").is_err());
        // Out-of-range components and bad steps are refused before any work.
        let bad = PerturbSettings {
            components: vec![GROUPS],
            ..settings.clone()
        };
        let err = perturb(&an, &mut model, &bad, |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("component 3 is out of range"), "{err}");
        let bad = PerturbSettings {
            epsilon: Epsilon::Fixed(0.0),
            ..settings
        };
        let err = perturb(&an, &mut model, &bad, |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("--epsilon must be positive"), "{err}");
    }
}

#[test]
fn changed_data_leaves_texts_out_with_a_note() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, an) = fitted(PefKind::Diagonal, tmp.path());
    let data = tmp.path().join("data.jsonl");
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{\"input\": \"appended later\", \"target\": \"c0\"}\n");
    std::fs::write(&data, text).unwrap();
    let options = TopOptions {
        top: 2,
        components: vec![0],
        data: None,
    };
    let report = an.top(&options, Path::new("d"), Path::new("p")).unwrap();
    assert!(
        report.notes[0].contains("changed since the PEFs were computed"),
        "{:?}",
        report.notes
    );
    assert!(report.per_component[0].top_examples[0].text.input.is_none());
    assert_eq!(report.per_component.len(), 1);
}
