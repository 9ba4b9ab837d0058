//! `fisherkit experiment npeff-heuristic`: can NPEFF expose a flawed heuristic, and does
//! moving along its component fix it? A tiny T5 is trained on the synthetic suite with a
//! planted shortcut: every input of one labelled task (default `count`) ends in
//! `hint <label>`, and the hint is the answer in `shortcut_rate` (95 %) of its training
//! examples. On held-out examples whose hint lies (counter-examples) a model that follows
//! the hint is wrong. As the reference does, LRM-NPEFF is fitted to the PEFs of the
//! misclassified held-out examples only; coefficients of every held-out example
//! (counter-examples and examples with a true hint) are then fitted against it, and we
//! look (a) whether one component's top examples are exactly the shortcut-following ones
//! and (b) whether moving the parameters along that component (both signs, a grid of
//! steps) repairs the counter-examples without hurting the examples with a true hint —
//! next to a random direction of the same norm. It reports what happens, whether or not
//! it works.
//!
//! Output directory (phases resume like the other experiments): `experiment.json`,
//! `data/` (the suite with the planted hints, tokenizer), `train/model/`, `eval.jsonl`
//! (held-out examples with `kind` = `counter` | `consistent` and `hint`),
//! `predictions.json`, `misclassified.jsonl`, `pefs-misclassified/`, `pefs-eval/`,
//! `lrm-npeff.safetensors`, `eval-coeffs.safetensors`, `summary.json`.

use crate::stage::{self, Phases, Training};
use anyhow::{ensure, Context, Result};
use fisherkit_common::atomic::{write_file, write_json};
use fisherkit_fisher::job::{self, OutputsSpec};
use fisherkit_fisher::perturb::ShiftableModel;
use fisherkit_fisher::ClassSelection;
use fisherkit_npeff::analysis::Analysed;
use fisherkit_npeff::fit::{self, FitSettings};
use fisherkit_npeff::pef::{PefDir, PefKind};
use fisherkit_npeff::perturb::{
    direction, random_direction, DirectionSettings, Predictor, Rejection, Shift,
};
use fisherkit_tasks::{synthetic, Example};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Settings of one run; everything but `out` and `force` is recorded in
/// `experiment.json` and must match when a run is resumed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Options {
    #[serde(skip)]
    pub out: PathBuf,
    #[serde(skip)]
    pub force: bool,
    pub seed: u64,
    /// The labelled task the shortcut is planted in.
    pub task: String,
    /// Fraction of its training examples whose hint is the answer.
    pub shortcut_rate: f64,
    pub train_per_task: usize,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub d_model: usize,
    pub layers: usize,
    /// Held-out examples of the task (each gives one counter-example and one with a true
    /// hint).
    pub eval_examples: usize,
    pub pef_top_k: usize,
    pub components: usize,
    pub lrm_g_only_iters: usize,
    pub lrm_iters: usize,
    /// Top examples per component inspected.
    pub top: usize,
    /// Perturbation steps, as fractions of ‖θ‖ over the decomposition's parameters.
    pub steps_relative: Vec<f64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            out: PathBuf::from("npeff-heuristic-out"),
            force: false,
            seed: 0,
            task: "count".into(),
            shortcut_rate: 0.95,
            train_per_task: 1000,
            steps: 1500,
            batch_size: 64,
            lr: 2e-3,
            d_model: 64,
            layers: 2,
            eval_examples: 200,
            pef_top_k: 4096,
            components: 6,
            lrm_g_only_iters: 50,
            lrm_iters: 200,
            top: 40,
            steps_relative: vec![0.02, 0.05, 0.1, 0.2, 0.4],
        }
    }
}

impl Options {
    /// A run of a minute or two for tests and a first look.
    pub fn quick() -> Self {
        Self {
            train_per_task: 200,
            steps: 200,
            batch_size: 32,
            d_model: 32,
            layers: 1,
            eval_examples: 40,
            pef_top_k: 1024,
            components: 3,
            lrm_g_only_iters: 20,
            lrm_iters: 40,
            top: 10,
            steps_relative: vec![0.05, 0.2],
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let spec = synthetic::find(&self.task)?;
        ensure!(
            spec.labels.is_some(),
            "--task {} has no fixed label set; the shortcut needs a labelled task (e.g. count, parity, max)",
            self.task
        );
        ensure!(
            (0.0..=1.0).contains(&self.shortcut_rate),
            "--shortcut-rate must lie in [0, 1] (got {})",
            self.shortcut_rate
        );
        ensure!(
            self.train_per_task > 0 && self.steps > 0 && self.batch_size > 0,
            "--train-per-task, --steps and --batch-size must be positive"
        );
        ensure!(
            self.d_model > 0 && self.layers > 0,
            "--d-model and --layers must be positive"
        );
        ensure!(
            self.eval_examples > 0 && self.components > 0 && self.top > 0 && self.pef_top_k > 0,
            "--eval-examples, --components, --top and --pef-top-k must be positive"
        );
        ensure!(
            !self.steps_relative.is_empty()
                && self
                    .steps_relative
                    .iter()
                    .all(|s| *s > 0.0 && s.is_finite()),
            "the perturbation steps must be positive"
        );
        Ok(())
    }

    fn labels(&self) -> Vec<String> {
        synthetic::find(&self.task)
            .ok()
            .and_then(|t| t.labels)
            .unwrap_or_default()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

/// Accuracy on the two kinds of held-out examples.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Accuracies {
    /// Counter-examples (the hint lies).
    pub counter: f64,
    /// Examples whose hint is the answer.
    pub consistent: f64,
    /// Counter-examples answered with the hint.
    pub follows_hint: f64,
}

/// What one component's top held-out examples are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentShares {
    pub component: usize,
    /// Share of counter-examples among its top examples.
    pub counter: f64,
    /// Share of counter-examples answered with the hint (the shortcut followed).
    pub follows_hint: f64,
}

/// The model moved along a direction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepairRow {
    /// `component` or `random`.
    pub direction: String,
    /// Step as a fraction of ‖θ‖ over the decomposition's parameters, signed.
    pub step: f64,
    pub accuracy: Accuracies,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub task: String,
    pub shortcut_rate: f64,
    pub eval_examples: usize,
    /// The trained model before any change.
    pub original: Accuracies,
    /// Held-out examples it gets wrong (what NPEFF is fitted to).
    pub misclassified: usize,
    pub components: Vec<ComponentShares>,
    /// The component whose top examples follow the hint most.
    pub heuristic_component: usize,
    pub repair: Vec<RepairRow>,
    /// The row with the best counter-example accuracy among those losing at most 5
    /// points on the examples with a true hint (None: no step qualifies).
    pub best_repair: Option<RepairRow>,
    pub seconds: Vec<(String, Option<f64>)>,
}

/// One held-out line of `eval.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EvalRow {
    input: String,
    target: String,
    kind: String,
    hint: String,
}

fn with_hint(input: &str, hint: &str) -> String {
    format!("{input} hint {hint}")
}

/// A label other than `target`, uniformly.
fn wrong_label<'a>(labels: &'a [String], target: &str, rng: &mut impl Rng) -> &'a str {
    let others: Vec<&String> = labels.iter().filter(|l| *l != target).collect();
    others[rng.random_range(0..others.len())]
}

/// Plant the hint into the task's training and validation splits of a suite directory.
fn plant_hints(dir: &Path, opts: &Options) -> Result<()> {
    let labels = opts.labels();
    for (i, split) in ["train", "valid"].iter().enumerate() {
        let path = dir.join(&opts.task).join(format!("{split}.jsonl"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ (0x4849_4e54 + i as u64));
        let examples: Vec<Example> = fisherkit_tasks::load_examples(&path)?
            .into_iter()
            .map(|e| {
                let hint = if rng.random::<f64>() < opts.shortcut_rate {
                    e.target.clone()
                } else {
                    wrong_label(&labels, &e.target, &mut rng).to_string()
                };
                Example {
                    input: with_hint(&e.input, &hint),
                    target: e.target,
                }
            })
            .collect();
        fisherkit_tasks::write_examples(&path, &examples)?;
    }
    Ok(())
}

/// Held-out examples of the task, each once with a lying hint and once with a true one.
fn write_eval(data_dir: &Path, opts: &Options, out: &Path) -> Result<()> {
    let labels = opts.labels();
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x4556_414c);
    let test = stage::load_split(data_dir, &opts.task, "test")?;
    let mut rows = Vec::new();
    for e in &test {
        let lie = wrong_label(&labels, &e.target, &mut rng).to_string();
        for (kind, hint) in [("counter", lie), ("consistent", e.target.clone())] {
            rows.push(EvalRow {
                input: with_hint(&e.input, &hint),
                target: e.target.clone(),
                kind: kind.into(),
                hint,
            });
        }
    }
    write_rows(out, &rows)
}

fn write_rows(out: &Path, rows: &[EvalRow]) -> Result<()> {
    write_file(out, |w| {
        for r in rows {
            serde_json::to_writer(&mut *w, r)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

fn read_rows(path: &Path) -> Result<Vec<EvalRow>> {
    Ok(fisherkit_common::jsonl::read_all::<EvalRow>(path)?
        .into_iter()
        .map(|l| l.value)
        .collect())
}

/// The model of `model_dir` scoring the label outputs of `data` (with its labels).
fn shiftable(model_dir: &Path, data: &Path, labels: &[String]) -> Result<ShiftableModel> {
    job::with_model_source_on(model_dir, false, |source| {
        let (outputs, dataset) =
            job::load_data(source, data, &OutputsSpec::Labels(labels.to_vec()), None)?;
        ShiftableModel::new(source.model.as_ref(), outputs, dataset.items, 32)
    })
}

/// Predicted label index of every item, with the parameters shifted by `shift`.
fn predictions(model: &mut ShiftableModel, shift: Option<&Shift<'_>>) -> Result<Vec<usize>> {
    let all: Vec<usize> = (0..model.items().len()).collect();
    Ok(model
        .log_probs(shift, &all)?
        .iter()
        .map(|rows| fisherkit_model::argmax(&rows[0]))
        .collect())
}

fn accuracies(rows: &[EvalRow], predicted: &[usize], labels: &[String]) -> Accuracies {
    let (mut counter, mut n_counter, mut consistent, mut n_consistent, mut follows) =
        (0, 0, 0, 0, 0);
    for (r, &p) in rows.iter().zip(predicted) {
        let said = &labels[p];
        if r.kind == "counter" {
            n_counter += 1;
            counter += usize::from(*said == r.target);
            follows += usize::from(*said == r.hint);
        } else {
            n_consistent += 1;
            consistent += usize::from(*said == r.target);
        }
    }
    let frac = |a: usize, n: usize| a as f64 / n.max(1) as f64;
    Accuracies {
        counter: frac(counter, n_counter),
        consistent: frac(consistent, n_consistent),
        follows_hint: frac(follows, n_counter),
    }
}

/// Run (or resume) the experiment; `log` receives one line per phase.
pub fn run(opts: &Options, log: &mut dyn FnMut(&str)) -> Result<Summary> {
    opts.validate()?;
    let mut settings = serde_json::to_value(opts)?;
    settings["experiment"] = "npeff-heuristic".into();
    stage::prepare_out_dir(&opts.out, opts.force, &settings)?;
    let out = &opts.out;
    let labels = opts.labels();
    let mut phases = Phases::new(log);
    let data_dir = out.join("data");
    phases.run(
        "suite with the planted hint, tokenizer",
        data_dir.exists(),
        || {
            stage::write_suite(
                &data_dir,
                opts.train_per_task,
                opts.eval_examples,
                opts.seed,
                Some(&|dir: &Path| plant_hints(dir, opts)),
            )
        },
    )?;
    let training = Training {
        lr: opts.lr,
        steps: opts.steps,
        batch_size: opts.batch_size,
        seed: opts.seed,
    };
    let model_dir = stage::train_phase(
        &mut phases,
        &data_dir,
        opts.d_model,
        opts.layers,
        &training,
        out,
    )?;
    let eval_path = out.join("eval.jsonl");
    phases.run("held-out counter-examples", eval_path.exists(), || {
        write_eval(&data_dir, opts, &eval_path)
    })?;
    let rows = read_rows(&eval_path)?;
    let predictions_path = out.join("predictions.json");
    let misclassified_path = out.join("misclassified.jsonl");
    phases.run("predictions", misclassified_path.exists(), || {
        let mut model = shiftable(&model_dir, &eval_path, &labels)?;
        let predicted = predictions(&mut model, None)?;
        let wrong: Vec<EvalRow> = rows
            .iter()
            .zip(&predicted)
            .filter(|(r, &p)| labels[p] != r.target)
            .map(|(r, _)| r.clone())
            .collect();
        ensure!(
            wrong.len() >= opts.components,
            "the model gets only {} of the {} held-out examples wrong: fewer than --components {} (it did not learn the shortcut; raise --shortcut-rate or --steps)",
            wrong.len(),
            rows.len(),
            opts.components
        );
        write_json(&predictions_path, &predicted)?;
        write_rows(&misclassified_path, &wrong)
    })?;
    let predicted: Vec<usize> = serde_json::from_str(
        &std::fs::read_to_string(&predictions_path)
            .with_context(|| format!("reading {}", predictions_path.display()))?,
    )?;
    let original = accuracies(&rows, &predicted, &labels);

    let pefs_wrong = out.join("pefs-misclassified");
    let pefs_eval = out.join("pefs-eval");
    for (name, data, pefs) in [
        ("misclassified", &misclassified_path, &pefs_wrong),
        ("all held-out", &eval_path, &pefs_eval),
    ] {
        phases.run(
            &format!("PEFs of the {name} examples"),
            PefDir::open(pefs).is_ok(),
            || {
                stage::compute_pefs(
                    &model_dir,
                    data,
                    pefs,
                    OutputsSpec::Labels(labels.clone()),
                    PefKind::LowRank,
                    opts.pef_top_k,
                    ClassSelection::all(),
                )
            },
        )?;
    }
    let fitted = out.join("lrm-npeff.safetensors");
    phases.run(
        "LRM-NPEFF of the misclassified examples",
        fitted.exists(),
        || {
            let settings = FitSettings {
                components: opts.components,
                iters: opts.lrm_iters,
                g_only_iters: opts.lrm_g_only_iters,
                seed: opts.seed,
                ..FitSettings::default()
            };
            stage::fit_npeff(&pefs_wrong, &settings, &fitted)
        },
    )?;
    let coeffs = out.join("eval-coeffs.safetensors");
    phases.run(
        "coefficients of all held-out examples",
        coeffs.exists(),
        || fit::coeffs(&pefs_eval, &fitted, 200, opts.seed, 1024, &coeffs).map(|_| ()),
    )?;

    // Which component's top examples follow the hint?
    let held_out = Analysed::open(&fitted, &pefs_eval, Some(&coeffs))?;
    let components: Vec<ComponentShares> = (0..held_out.components())
        .map(|j| {
            let top = held_out.top_examples(j, opts.top);
            let n = top.len().max(1) as f64;
            let counter = top.iter().filter(|&&i| rows[i].kind == "counter").count();
            let follows = top
                .iter()
                .filter(|&&i| rows[i].kind == "counter" && labels[predicted[i]] == rows[i].hint)
                .count();
            ComponentShares {
                component: j,
                counter: counter as f64 / n,
                follows_hint: follows as f64 / n,
            }
        })
        .collect();
    let heuristic = components
        .iter()
        .max_by(|a, b| a.follows_hint.total_cmp(&b.follows_hint))
        .map_or(0, |c| c.component);

    // Move along it, and along a random direction of the same norm.
    let repair_path = out.join("repair.json");
    phases.run(
        "moving along the heuristic component",
        repair_path.exists(),
        || {
            let fitted_on = Analysed::open(&fitted, &pefs_wrong, None)?;
            let settings = DirectionSettings {
                max_cos: 0.3,
                rejection: Rejection::Span,
                seed: opts.seed,
            };
            let own = direction(&fitted_on, heuristic, &settings)?.values;
            let kept = &fitted_on.decomposition.kept;
            let random = random_direction(kept.len(), opts.seed, heuristic);
            let mut model = shiftable(&model_dir, &eval_path, &labels)?;
            let theta_norm = kept
                .iter()
                .map(|&k| f64::from(model.theta()[k as usize]).powi(2))
                .sum::<f64>()
                .sqrt();
            let mut repair = Vec::new();
            for (name, dir) in [("component", &own), ("random", &random)] {
                for &step in &opts.steps_relative {
                    for sign in [1.0, -1.0] {
                        let eps = sign * step * theta_norm;
                        let values: Vec<f32> =
                            dir.iter().map(|&g| (eps * f64::from(g)) as f32).collect();
                        let shift = Shift {
                            indices: kept,
                            values: &values,
                        };
                        let predicted = predictions(&mut model, Some(&shift))?;
                        repair.push(RepairRow {
                            direction: name.into(),
                            step: sign * step,
                            accuracy: accuracies(&rows, &predicted, &labels),
                        });
                    }
                }
            }
            write_json(&repair_path, &repair)
        },
    )?;
    let repair: Vec<RepairRow> = serde_json::from_str(&std::fs::read_to_string(&repair_path)?)?;
    let best_repair = repair
        .iter()
        .filter(|r| {
            r.direction == "component" && r.accuracy.consistent >= original.consistent - 0.05
        })
        .max_by(|a, b| a.accuracy.counter.total_cmp(&b.accuracy.counter))
        .cloned();
    let summary = Summary {
        task: opts.task.clone(),
        shortcut_rate: opts.shortcut_rate,
        eval_examples: rows.len(),
        original,
        misclassified: PefDir::open(&pefs_wrong)?.meta.n_examples,
        components,
        heuristic_component: heuristic,
        repair,
        best_repair,
        seconds: phases.seconds,
    };
    write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// The summary as plain text.
pub fn table(summary: &Summary, out: &Path) -> String {
    let a = &summary.original;
    let mut s = format!(
        "Planted shortcut in {}: the hint is the answer in {:.0} % of its training examples.\n\
         Trained model on {} held-out examples: counter-examples {:.1} % right ({:.1} % answer the hint), \
         true-hint examples {:.1} % right; {} misclassified → LRM-NPEFF.\n\n\
         component  top: counter-examples  follow the hint\n",
        summary.task,
        100.0 * summary.shortcut_rate,
        summary.eval_examples,
        100.0 * a.counter,
        100.0 * a.follows_hint,
        100.0 * a.consistent,
        summary.misclassified
    );
    for c in &summary.components {
        s.push_str(&format!(
            "{:>9}  {:>20.1} % {:>14.1} %{}\n",
            c.component,
            100.0 * c.counter,
            100.0 * c.follows_hint,
            if c.component == summary.heuristic_component {
                "   ← heuristic"
            } else {
                ""
            }
        ));
    }
    s.push_str("\ndirection   step    counter   true hint   follow hint\n");
    for r in &summary.repair {
        s.push_str(&format!(
            "{:<10} {:>+6.2} {:>8.1} % {:>9.1} % {:>11.1} %\n",
            r.direction,
            r.step,
            100.0 * r.accuracy.counter,
            100.0 * r.accuracy.consistent,
            100.0 * r.accuracy.follows_hint
        ));
    }
    match &summary.best_repair {
        Some(r) => s.push_str(&format!(
            "\nbest step along the component keeping true-hint accuracy within 5 points: {:+.2} → counter-examples {:.1} % right (from {:.1} %)\n",
            r.step,
            100.0 * r.accuracy.counter,
            100.0 * a.counter
        )),
        None => s.push_str("\nno step along the component keeps the true-hint accuracy within 5 points\n"),
    }
    s.push_str(&format!("outputs in {}\n", out.display()));
    s
}
