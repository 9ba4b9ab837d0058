//! `fisherkit experiment merge-synthetic`: the Fisher-merging paper's central claim,
//! measured on the built-in synthetic suite. One tiny T5 is pre-trained on the suite's
//! other tasks, fine-tuned twice (task A, task B), each fine-tune's diagonal Fisher is
//! computed on its own training examples, and for every λ of a grid the isotropic merge
//! λA + (1−λ)B and the Fisher merge (λF_A A + (1−λ)F_B B)/(λF_A + (1−λ)F_B) are scored
//! on held-out test examples of both tasks.
//!
//! Output directory (each phase's output appears atomically; a rerun skips the phases
//! whose outputs exist, so an interrupted run resumes):
//! - `experiment.json` — the settings (a resumed run must match them);
//! - `data/` — the suite (`<task>/{train,valid,test}.jsonl`, `suite.json`) and `tokenizer.json`;
//! - `pretrain/`, `finetune-<A>/`, `finetune-<B>/` — training runs (model in `model/`);
//! - `fisher-<A>.safetensors`, `fisher-<B>.safetensors` — diagonal Fishers (merge's format);
//! - `recipe-isotropic.yml`, `recipe-fisher.yml` — the merges, for `fisherkit merge`;
//! - `results.jsonl`, `summary.json`, `merge-synthetic.svg`.

use crate::plot::{self, Chart, Series};
use crate::stage;
use anyhow::{ensure, Context, Result};
use fisherkit_common::atomic::{write_bytes, write_file, write_json};
use fisherkit_fisher::evaluate::{Metric, ModelEvaluator};
use fisherkit_fisher::job::{self, FisherJob, OutputsSpec};
use fisherkit_fisher::model::{Item, Outputs};
use fisherkit_fisher::Mode;
use fisherkit_merge::search::{self, Evaluator, MergedTensors};
use fisherkit_merge::{engine, Recipe};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::{Model, ParamAccess};
use fisherkit_tasks::{metrics, synthetic, tokenizer};
use fisherkit_train::quickstart;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Settings of one experiment; everything but `out` and `force` is recorded in
/// `experiment.json` and must match when a run is resumed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Options {
    #[serde(skip)]
    pub out: PathBuf,
    #[serde(skip)]
    pub force: bool,
    pub seed: u64,
    /// Task A (the target: weight λ) and task B (weight 1 − λ).
    pub tasks: [String; 2],
    pub train_per_task: usize,
    /// Held-out (test split) examples per task that every merge is scored on.
    pub eval_per_task: usize,
    pub pretrain_steps: u64,
    pub finetune_steps: u64,
    pub batch_size: usize,
    pub pretrain_lr: f64,
    pub finetune_lr: f64,
    pub d_model: usize,
    pub layers: usize,
    pub fisher_examples: usize,
    /// `exact` (top-k classes per target position) or `sampled`.
    pub fisher_mode: String,
    pub top_k_classes: Option<usize>,
    /// Divide each Fisher by its global L2 norm before merging (the merge engine's
    /// `normalize_fishers`), so a confident model's small Fisher is not swamped.
    #[serde(default)]
    pub normalize_fishers: bool,
    /// The target's weight λ of every candidate merge.
    pub grid: Vec<f64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            out: PathBuf::from("merge-synthetic-out"),
            force: false,
            seed: 0,
            tasks: ["count".into(), "parity".into()],
            train_per_task: 2000,
            eval_per_task: 200,
            pretrain_steps: 1500,
            finetune_steps: 300,
            batch_size: 64,
            pretrain_lr: 2e-3,
            finetune_lr: 1e-3,
            d_model: 128,
            layers: 2,
            fisher_examples: 500,
            fisher_mode: "exact".into(),
            top_k_classes: Some(3),
            normalize_fishers: false,
            grid: search::parse_grid("0:1:0.05").expect("valid default grid"),
        }
    }
}

impl Options {
    fn validate(&self) -> Result<()> {
        for t in &self.tasks {
            synthetic::find(t)?;
        }
        ensure!(
            self.tasks[0] != self.tasks[1],
            "--tasks needs two different tasks, got {0},{0}",
            self.tasks[0]
        );
        ensure!(
            self.pretrain_steps > 0 && self.finetune_steps > 0,
            "--pretrain-steps and --finetune-steps must be positive"
        );
        ensure!(self.batch_size > 0, "--batch-size must be positive");
        ensure!(
            self.train_per_task > 0 && self.eval_per_task > 0 && self.fisher_examples > 0,
            "--train-per-task, --eval-per-task and --fisher-examples must be positive"
        );
        ensure!(
            self.d_model > 0 && self.layers > 0,
            "--d-model and --layers must be positive"
        );
        ensure!(
            !self.grid.is_empty(),
            "the grid has no points (expected start:stop:step within [0, 1])"
        );
        self.mode()?;
        Ok(())
    }

    fn mode(&self) -> Result<Mode> {
        let mode: Mode = self.fisher_mode.parse()?;
        ensure!(
            mode != Mode::Empirical,
            "--fisher-mode empirical is not the Fisher of the paper; use exact or sampled"
        );
        Ok(mode)
    }

    /// The suite's tasks the shared model is pre-trained on: all but A and B, so the
    /// pre-trained model has the shared sub-skills but has never seen either task.
    pub fn pretrain_tasks(&self) -> Vec<&'static str> {
        synthetic::all_names()
            .into_iter()
            .filter(|n| !self.tasks.iter().any(|t| t == n))
            .collect()
    }
}

/// Scores of one model on one task's held-out examples.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskScore {
    pub task: String,
    /// Fraction of examples whose greedy generation equals the target exactly.
    pub exact_match: f64,
    /// Mean over examples of log p(target | input), summed over target tokens (EOS included).
    pub logprob: f64,
}

/// One row of `results.jsonl`: one merge method at one λ.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultRow {
    pub method: String,
    /// Weight of task A's model.
    pub lambda: f64,
    pub scores: Vec<TaskScore>,
    /// Mean exact match over the two tasks.
    pub mean_exact_match: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodSummary {
    pub method: String,
    /// The grid point with the best mean exact match (first of equals). Chosen on the
    /// same test examples it is reported on: an oracle choice, the same for both methods.
    pub best_lambda: f64,
    pub best_mean_exact_match: f64,
    pub best_scores: Vec<TaskScore>,
    /// Mean exact match averaged over the grid (the area under the curve).
    pub mean_over_grid: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub tasks: [String; 2],
    pub pretrain_tasks: Vec<String>,
    pub parameters: usize,
    pub eval_examples_per_task: usize,
    pub methods: Vec<MethodSummary>,
    pub pretrained: Vec<TaskScore>,
    pub finetuned_a: Vec<TaskScore>,
    pub finetuned_b: Vec<TaskScore>,
    /// Seconds per phase run by this invocation (absent: skipped, output existed).
    pub seconds: Vec<(String, Option<f64>)>,
}

const METHODS: [(&str, &str); 2] = [("isotropic", "linear"), ("fisher", "fisher")];

/// Run (or resume) the experiment; `log` receives one line per phase.
pub fn run(opts: &Options, log: &mut dyn FnMut(&str)) -> Result<Summary> {
    opts.validate()?;
    let mut settings = serde_json::to_value(opts)?;
    settings["experiment"] = "merge-synthetic".into();
    stage::prepare_out_dir(&opts.out, opts.force, &settings)?;
    let out = &opts.out;
    let [a, b] = &opts.tasks;
    let mut phases = stage::Phases::new(log);

    let data_dir = out.join("data");
    let tk_path = data_dir.join("tokenizer.json");
    phases.run("1/5 suite and tokenizer", data_dir.exists(), || {
        stage::write_suite(
            &data_dir,
            opts.train_per_task,
            opts.eval_per_task,
            opts.seed,
            None,
        )
    })?;
    let tk = tokenizer::load(&tk_path)?;

    let pretrain_dir = out.join("pretrain");
    phases.run(
        "2/5 pre-training",
        pretrain_dir.join("model").exists(),
        || {
            let names = opts.pretrain_tasks();
            let model = fisherkit_models::init(
                &quickstart::tiny_config(tk.get_vocab_size(true), opts.d_model, opts.layers),
                opts.seed,
                &Device::flex().autodiff(),
            )?;
            stage::train_on(
                model,
                &names,
                &stage::Training {
                    lr: opts.pretrain_lr,
                    steps: opts.pretrain_steps,
                    batch_size: opts.batch_size,
                    seed: opts.seed,
                },
                &data_dir,
                &tk,
                &pretrain_dir,
            )
        },
    )?;

    let finetuned = |task: &str| out.join(format!("finetune-{task}"));
    for task in [a, b] {
        let dir = finetuned(task);
        phases.run(
            &format!("3/5 fine-tuning on {task}"),
            dir.join("model").exists(),
            || {
                let model = fisherkit_models::load(
                    &pretrain_dir.join("model"),
                    &Device::flex().autodiff(),
                )?;
                stage::train_on(
                    model,
                    &[task.as_str()],
                    &stage::Training {
                        lr: opts.finetune_lr,
                        steps: opts.finetune_steps,
                        batch_size: opts.batch_size,
                        seed: opts.seed,
                    },
                    &data_dir,
                    &tk,
                    &dir,
                )
            },
        )?;
    }

    let fisher_path = |task: &str| out.join(format!("fisher-{task}.safetensors"));
    for task in [a, b] {
        let path = fisher_path(task);
        phases.run(
            &format!("4/5 Fisher of the {task} model"),
            path.exists(),
            || fisher(opts, &finetuned(task).join("model"), &data_dir, task, &path),
        )?;
    }

    let held_out = [a, b]
        .iter()
        .map(|t| HeldOut::load(&data_dir, t, &tk, opts.eval_per_task))
        .collect::<Result<Vec<_>>>()?;
    let results_path = out.join("results.jsonl");
    let mut rows = Vec::new();
    phases.run("5/5 scoring the merges", results_path.exists(), || {
        rows = score_grid(
            opts,
            &finetuned(a),
            &finetuned(b),
            &fisher_path,
            &held_out,
            &tk,
        )?;
        write_file(&results_path, |w| {
            for r in &rows {
                serde_json::to_writer(&mut *w, r)?;
                w.write_all(b"\n")?;
            }
            Ok(())
        })
    })?;
    if rows.is_empty() {
        rows = load_results(out)?;
    }
    ensure!(
        rows.len() == METHODS.len() * opts.grid.len(),
        "{} has {} rows, expected {} (2 methods × {} grid points): delete it to score again",
        results_path.display(),
        rows.len(),
        METHODS.len() * opts.grid.len(),
        opts.grid.len()
    );

    let endpoint = |dir: &Path| -> Result<(Vec<TaskScore>, usize)> {
        let scorer = scorer(dir, &held_out)?;
        let parameters = scorer.model().num_params();
        Ok((score_tasks(&scorer, &tk, &held_out)?, parameters))
    };
    let (pretrained, parameters) = endpoint(&pretrain_dir.join("model"))?;
    let summary = Summary {
        tasks: opts.tasks.clone(),
        pretrain_tasks: opts
            .pretrain_tasks()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        parameters,
        eval_examples_per_task: opts.eval_per_task,
        methods: METHODS
            .iter()
            .map(|(m, _)| summarise(m, &rows))
            .collect::<Result<_>>()?,
        pretrained,
        finetuned_a: endpoint(&finetuned(a).join("model"))?.0,
        finetuned_b: endpoint(&finetuned(b).join("model"))?.0,
        seconds: phases.seconds,
    };
    write_json(&out.join("summary.json"), &summary)?;
    write_bytes(
        &out.join("merge-synthetic.svg"),
        plot::svg(&chart(opts, &rows)).as_bytes(),
    )?;
    Ok(summary)
}

/// Phase 4: the diagonal Fisher of a fine-tuned model on its own task's training
/// examples, over target-token outputs.
fn fisher(opts: &Options, model_dir: &Path, data_dir: &Path, task: &str, out: &Path) -> Result<()> {
    job::with_model_source(model_dir, |source| {
        job::run_fisher(
            source,
            &FisherJob {
                data: data_dir.join(task).join("train.jsonl"),
                out: out.to_path_buf(),
                outputs: OutputsSpec::Tokens,
                top_k_classes: opts.top_k_classes,
                mode: opts.mode()?,
                examples: Some(opts.fisher_examples),
                batch_size: 8,
                seed: opts.seed,
                gradients: Default::default(),
            },
        )
    })?;
    Ok(())
}

/// One task's held-out test examples, as text (for generation) and as token ids
/// (for log-probabilities).
struct HeldOut {
    task: String,
    examples: Vec<fisherkit_tasks::Example>,
    items: Vec<Item>,
}

impl HeldOut {
    fn load(data_dir: &Path, task: &str, tk: &Tokenizer, limit: usize) -> Result<Self> {
        let mut examples = stage::load_split(data_dir, task, "test")?;
        examples.truncate(limit);
        let items = quickstart::encode(tk, &examples)?
            .into_iter()
            .map(|example| Item {
                example,
                label: None,
            })
            .collect();
        Ok(Self {
            task: task.to_string(),
            examples,
            items,
        })
    }
}

/// The model of `dir` (no autodiff) ready to score token log-probabilities.
fn scorer(dir: &Path, held_out: &[HeldOut]) -> Result<ModelEvaluator<Box<dyn Model>>> {
    let (model, _) = job::load_model(dir, false)?;
    ModelEvaluator::new(
        model,
        Outputs::Tokens,
        held_out[0].items.clone(),
        Metric::LogProb,
        50,
    )
}

/// Exact match and log-probability of the scorer's current model on every task.
fn score_tasks(
    scorer: &ModelEvaluator<Box<dyn Model>>,
    tk: &Tokenizer,
    held_out: &[HeldOut],
) -> Result<Vec<TaskScore>> {
    held_out
        .iter()
        .map(|h| {
            let predictions = quickstart::greedy_predictions(&**scorer.model(), tk, &h.examples)?;
            let refs: Vec<String> = h.examples.iter().map(|e| e.target.clone()).collect();
            Ok(TaskScore {
                task: h.task.clone(),
                exact_match: metrics::exact_match(&predictions, &refs) / 100.0,
                logprob: scorer.score(&h.items)?,
            })
        })
        .collect()
}

/// Scores every candidate merge on both tasks and keeps the rows; the search itself
/// ranks by the mean exact match.
struct GridScorer<'a> {
    scorer: ModelEvaluator<Box<dyn Model>>,
    tk: &'a Tokenizer,
    held_out: &'a [HeldOut],
    method: &'static str,
    rows: Vec<ResultRow>,
}

impl Evaluator for GridScorer<'_> {
    fn evaluate(&mut self, weights: &[f64], merged: &MergedTensors) -> Result<f64> {
        self.scorer.load_merged(merged)?;
        let scores = score_tasks(&self.scorer, self.tk, self.held_out)?;
        let mean = mean_exact_match(&scores);
        self.rows.push(ResultRow {
            method: self.method.to_string(),
            lambda: weights[0],
            scores,
            mean_exact_match: mean,
        });
        Ok(mean)
    }
}

fn mean_exact_match(scores: &[TaskScore]) -> f64 {
    scores.iter().map(|s| s.exact_match).sum::<f64>() / scores.len() as f64
}

/// Phase 5: both methods over the grid, merged in memory by the merge engine.
fn score_grid(
    opts: &Options,
    dir_a: &Path,
    dir_b: &Path,
    fisher_path: &dyn Fn(&str) -> PathBuf,
    held_out: &[HeldOut],
    tk: &Tokenizer,
) -> Result<Vec<ResultRow>> {
    let [a, b] = &opts.tasks;
    let models = [
        (dir_a.join("model"), fisher_path(a)),
        (dir_b.join("model"), fisher_path(b)),
    ];
    let mut rows = Vec::new();
    for (method, engine_method) in METHODS {
        let yaml = recipe_yaml(engine_method, &models, opts.normalize_fishers)?;
        let recipe_path = opts.out.join(format!("recipe-{method}.yml"));
        write_bytes(&recipe_path, yaml.as_bytes())?;
        let plan = engine::Plan::new(
            Recipe::from_yaml(&yaml, &recipe_path)?,
            &engine::PlanOptions::default(),
        )?;
        // Model A is the target: candidates are [λ, 1 − λ].
        let candidates = search::candidates(&opts.grid, 2, 0, 0, opts.seed)?;
        let mut grid = GridScorer {
            scorer: scorer(&models[0].0, held_out)?,
            tk,
            held_out,
            method,
            rows: Vec::new(),
        };
        search::search(&plan, &candidates, &mut grid)?;
        rows.append(&mut grid.rows);
    }
    Ok(rows)
}

/// The mergekit-style recipe of one method over the two fine-tuned models. Fisher
/// merging floors every Fisher (not only the target's) at the engine's ε, so each
/// end of the grid is exactly one model: with only the target floored, λ = 0 leaves
/// 0/0 wherever B's Fisher vanishes and the engine keeps A's value there.
fn recipe_yaml(method: &str, models: &[(PathBuf, PathBuf)], normalize: bool) -> Result<String> {
    let quote = |p: &Path| -> Result<String> {
        let abs = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
        Ok(serde_json::to_string(&abs.display().to_string())?)
    };
    let mut yaml = format!("merge_method: {method}\nmodels:\n");
    for (model, fisher) in models {
        yaml.push_str(&format!(
            "  - model: {}\n    parameters:\n      weight: 1.0\n",
            quote(model)?
        ));
        if method == "fisher" {
            yaml.push_str(&format!("      fisher: {}\n", quote(fisher)?));
        }
    }
    if method == "fisher" {
        yaml.push_str(&format!(
            "parameters:\n  floor_all: true\n  normalize_fishers: {normalize}\n"
        ));
    }
    Ok(yaml)
}

fn summarise(method: &str, rows: &[ResultRow]) -> Result<MethodSummary> {
    let mine: Vec<&ResultRow> = rows.iter().filter(|r| r.method == method).collect();
    let best = mine
        .iter()
        .fold(None, |best: Option<&&ResultRow>, r| match best {
            Some(b) if b.mean_exact_match >= r.mean_exact_match => Some(b),
            _ => Some(r),
        })
        .with_context(|| format!("no results for method {method}"))?;
    Ok(MethodSummary {
        method: method.to_string(),
        best_lambda: best.lambda,
        best_mean_exact_match: best.mean_exact_match,
        best_scores: best.scores.clone(),
        mean_over_grid: mine.iter().map(|r| r.mean_exact_match).sum::<f64>() / mine.len() as f64,
    })
}

/// Exact match against λ: one line per method × task (colour: task, dash: isotropic).
fn chart(opts: &Options, rows: &[ResultRow]) -> Chart {
    const COLORS: [&str; 2] = ["#1f77b4", "#d62728"];
    let mut series = Vec::new();
    for (method, _) in METHODS {
        for (k, task) in opts.tasks.iter().enumerate() {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.method == method)
                .filter_map(|r| {
                    let s = r.scores.iter().find(|s| &s.task == task)?;
                    Some((r.lambda, s.exact_match))
                })
                .collect();
            points.sort_by(|p, q| p.0.total_cmp(&q.0));
            series.push(Series {
                label: format!("{method}: {task}"),
                color: COLORS[k].into(),
                dashed: method == "isotropic",
                points,
            });
        }
    }
    Chart {
        title: format!(
            "Merging a {} fine-tune (weight λ) with a {} fine-tune",
            opts.tasks[0], opts.tasks[1]
        ),
        x_label: format!("λ (weight of the {} model)", opts.tasks[0]),
        y_label: "exact match on held-out examples".into(),
        x_range: (0.0, 1.0),
        y_range: (0.0, 1.0),
        series,
    }
}

/// The results as a plain-text table: one line per λ, both methods, both tasks.
pub fn table(opts: &Options, rows: &[ResultRow], summary: &Summary) -> String {
    let [a, b] = &opts.tasks;
    let mut s = format!(
        "{:>6}  {:>14} {:>14}  {:>14} {:>14}\n",
        "λ",
        format!("isotropic:{a}"),
        format!("isotropic:{b}"),
        format!("fisher:{a}"),
        format!("fisher:{b}")
    );
    for &lambda in &opts.grid {
        let cell = |method: &str, task: &str| {
            rows.iter()
                .find(|r| r.method == method && r.lambda == lambda)
                .and_then(|r| r.scores.iter().find(|s| s.task == task))
                .map_or("-".to_string(), |s| {
                    format!("{:.1}%", 100.0 * s.exact_match)
                })
        };
        s.push_str(&format!(
            "{lambda:>6.2}  {:>14} {:>14}  {:>14} {:>14}\n",
            cell("isotropic", a),
            cell("isotropic", b),
            cell("fisher", a),
            cell("fisher", b)
        ));
    }
    let pct = |scores: &[TaskScore]| {
        scores
            .iter()
            .map(|s| format!("{} {:.1}%", s.task, 100.0 * s.exact_match))
            .collect::<Vec<_>>()
            .join(", ")
    };
    s.push_str(&format!(
        "pre-trained: {}; fine-tuned {a}: {}; fine-tuned {b}: {}\n",
        pct(&summary.pretrained),
        pct(&summary.finetuned_a),
        pct(&summary.finetuned_b)
    ));
    for m in &summary.methods {
        s.push_str(&format!(
            "{:<9} best mean exact match {:.1}% at λ = {} ({}); mean over the grid {:.1}%\n",
            m.method,
            100.0 * m.best_mean_exact_match,
            m.best_lambda,
            pct(&m.best_scores),
            100.0 * m.mean_over_grid
        ));
    }
    s
}

/// The rows of a finished experiment directory.
pub fn load_results(out: &Path) -> Result<Vec<ResultRow>> {
    Ok(
        fisherkit_common::jsonl::read_all(&out.join("results.jsonl"))?
            .into_iter()
            .map(|line| line.value)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, lambda: f64, a: f64, b: f64) -> ResultRow {
        let score = |task: &str, em| TaskScore {
            task: task.into(),
            exact_match: em,
            logprob: -1.0,
        };
        ResultRow {
            method: method.into(),
            lambda,
            scores: vec![score("reverse", a), score("sort", b)],
            mean_exact_match: (a + b) / 2.0,
        }
    }

    #[test]
    fn summary_picks_the_first_best_lambda_and_averages_the_grid() {
        let rows = vec![
            row("fisher", 0.0, 0.0, 1.0),
            row("isotropic", 0.0, 0.1, 0.9),
            row("fisher", 0.5, 0.8, 0.8),
            row("fisher", 1.0, 1.0, 0.6),
        ];
        let s = summarise("fisher", &rows).unwrap();
        assert_eq!(s.best_lambda, 0.5);
        assert!((s.best_mean_exact_match - 0.8).abs() < 1e-12);
        assert!((s.mean_over_grid - (0.5 + 0.8 + 0.8) / 3.0).abs() < 1e-12);
        // Ties keep the first grid point.
        let iso = summarise("isotropic", &rows).unwrap();
        assert_eq!(iso.best_lambda, 0.0);
        assert!(summarise("ties", &rows).is_err());
    }

    #[test]
    fn chart_has_one_sorted_line_per_method_and_task() {
        let opts = Options {
            tasks: ["reverse".into(), "sort".into()],
            ..Options::default()
        };
        let rows = vec![
            row("fisher", 1.0, 1.0, 0.0),
            row("fisher", 0.0, 0.0, 1.0),
            row("isotropic", 0.0, 0.0, 1.0),
        ];
        let c = chart(&opts, &rows);
        let labels: Vec<&str> = c.series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "isotropic: reverse",
                "isotropic: sort",
                "fisher: reverse",
                "fisher: sort"
            ]
        );
        assert_eq!(c.series[2].points, vec![(0.0, 0.0), (1.0, 1.0)]);
        assert_eq!(c.series[3].points, vec![(0.0, 1.0), (1.0, 0.0)]);
    }

    #[test]
    fn bad_settings_are_refused_before_any_work() {
        let bad = |f: &dyn Fn(&mut Options)| {
            let mut o = Options::default();
            f(&mut o);
            o.validate().unwrap_err().to_string()
        };
        assert!(bad(&|o| o.tasks[1] = "nope".into()).contains("unknown synthetic task"));
        assert!(bad(&|o| o.tasks[1] = o.tasks[0].clone()).contains("two different tasks"));
        assert!(bad(&|o| o.fisher_mode = "empirical".into()).contains("empirical"));
        assert!(bad(&|o| o.grid.clear()).contains("grid"));
        let o = Options::default();
        assert_eq!(o.grid.len(), 21);
        assert_eq!(o.pretrain_tasks().len(), synthetic::all_names().len() - 2);
        assert!(!o.pretrain_tasks().contains(&"parity"));
    }

    #[test]
    fn recipes_name_both_models_and_floor_every_fisher() {
        let models = [
            (PathBuf::from("/m/a"), PathBuf::from("/m/fa.safetensors")),
            (PathBuf::from("/m/b"), PathBuf::from("/m/fb.safetensors")),
        ];
        let fisher = Recipe::from_yaml(
            &recipe_yaml("fisher", &models, true).unwrap(),
            Path::new("r"),
        )
        .unwrap();
        assert_eq!(fisher.merge_method, "fisher");
        assert_eq!(fisher.models.len(), 2);
        assert_eq!(fisher.models[1].model, "/m/b");
        assert!(fisher.parameters.contains_key("floor_all"));
        assert!(fisher.parameters.contains_key("normalize_fishers"));
        let linear = recipe_yaml("linear", &models, true).unwrap();
        assert!(!linear.contains("fisher") && !linear.contains("floor_all"));
    }
}
