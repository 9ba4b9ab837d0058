//! `fisherkit experiment npeff-synthetic`: does NPEFF recover mechanisms that are known?
//! The paper checks this on a TRACR-compiled model; here the ground truth is the
//! synthetic suite, whose tasks are known (and share known skills, `suite.json`). One
//! tiny T5 is trained on every task (the quickstart's model), per-example Fishers are
//! computed on held-out examples of all tasks, D-NPEFF and LRM-NPEFF are fitted, and we
//! measure (a) how well components align with tasks and skills, (b) perturbation
//! ratios, and (c) the same for controls that should fail: components fitted to PEFs
//! whose parameter indices were shuffled per example, and random directions of equal
//! norm.
//!
//! Output directory (each phase's output appears atomically; a rerun resumes):
//! - `experiment.json` — the settings;
//! - `data/` — the suite and its tokenizer; `pef-data.jsonl` — the held-out examples
//!   the PEFs are computed on (`task` field added);
//! - `train/model/` — the multi-task model;
//! - `pefs-{diagonal,low-rank}[-shuffled]/` — PEFs and their shuffled controls;
//! - `{d,lrm}-npeff[-shuffled].safetensors` — the fits;
//! - `perturb-{d,lrm}[-shuffled].json` — perturbation reports;
//! - `report-{d,lrm}.html`, `summary.json`.

use crate::stage::{self, Phases, Training};
use anyhow::{ensure, Result};
use fisherkit_common::atomic::{write_bytes, write_file, write_json};
use fisherkit_fisher::job::OutputsSpec;
use fisherkit_fisher::perturb::{run_perturb, PerturbSources};
use fisherkit_fisher::ClassSelection;
use fisherkit_npeff::analysis::{Analysed, TopOptions};
use fisherkit_npeff::fit::FitSettings;
use fisherkit_npeff::pef::{PefDir, PefKind};
use fisherkit_npeff::perturb::{
    DirectionSettings, Epsilon, PerturbReport, PerturbSettings, Rejection,
};
use fisherkit_tasks::synthetic;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
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
    pub train_per_task: usize,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub d_model: usize,
    pub layers: usize,
    /// Held-out examples per task the PEFs are computed on.
    pub pef_examples_per_task: usize,
    /// Entries kept per PEF.
    pub pef_top_k: usize,
    /// Most probable tokens per target position in each exact per-example Fisher.
    pub top_k_classes: usize,
    /// LRM: class columns kept per example (most probable first).
    pub max_classes: usize,
    pub components: usize,
    pub d_iters: usize,
    pub lrm_g_only_iters: usize,
    pub lrm_iters: usize,
    /// Top examples per component for purity and the perturbation test.
    pub top: usize,
    /// Baseline examples per component in the perturbation test.
    pub baseline: usize,
    /// The perturbation size is found per component so the baseline KL is this.
    pub target_kl: f64,
}

impl Default for Options {
    /// The full run (≈ 10–15 min on 2 cores, release build).
    fn default() -> Self {
        Self {
            out: PathBuf::from("npeff-synthetic-out"),
            force: false,
            seed: 0,
            train_per_task: 1000,
            steps: 1500,
            batch_size: 64,
            lr: 2e-3,
            d_model: 64,
            layers: 2,
            pef_examples_per_task: 40,
            pef_top_k: 4096,
            top_k_classes: 3,
            max_classes: 8,
            components: 16,
            d_iters: 300,
            lrm_g_only_iters: 50,
            lrm_iters: 200,
            top: 16,
            baseline: 64,
            target_kl: 0.01,
        }
    }
}

impl Options {
    /// A run of a couple of minutes (debug build) for tests and a first look: a smaller
    /// model, fewer steps and examples; the numbers are noisier.
    pub fn quick() -> Self {
        Self {
            train_per_task: 200,
            steps: 150,
            batch_size: 32,
            d_model: 32,
            layers: 1,
            pef_examples_per_task: 8,
            pef_top_k: 1024,
            top_k_classes: 2,
            max_classes: 4,
            components: 8,
            d_iters: 60,
            lrm_g_only_iters: 20,
            lrm_iters: 40,
            top: 4,
            baseline: 16,
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.train_per_task > 0 && self.steps > 0 && self.batch_size > 0,
            "--train-per-task, --steps and --batch-size must be positive"
        );
        ensure!(
            self.d_model > 0 && self.layers > 0,
            "--d-model and --layers must be positive"
        );
        ensure!(
            self.pef_examples_per_task > 0 && self.pef_top_k > 0,
            "--pef-examples-per-task and --pef-top-k must be positive"
        );
        ensure!(
            self.top_k_classes > 0 && self.max_classes > 0,
            "--top-k-classes and --max-classes must be positive"
        );
        let examples = self.pef_examples_per_task * synthetic::all_names().len();
        ensure!(
            self.components > 0 && self.components <= examples,
            "--components must be between 1 and the {examples} PEF examples"
        );
        ensure!(
            self.d_iters > 0 && self.lrm_iters > 0,
            "--d-iters and --lrm-iters must be positive"
        );
        ensure!(
            self.top > 0 && self.baseline > 0,
            "--top and --baseline must be positive"
        );
        ensure!(
            self.target_kl > 0.0 && self.target_kl.is_finite(),
            "--target-kl must be positive"
        );
        Ok(())
    }
}

/// Alignment of a decomposition's components with the suite's tasks and skills.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alignment {
    /// Normalised mutual information (arithmetic mean of the entropies) between each
    /// example's task and its top component (largest coefficient; examples with none
    /// positive are left out).
    pub nmi_task: f64,
    /// Mean over components of the largest share of one task among its top examples.
    pub purity: f64,
    /// Mean over components of the largest share of its top examples whose task has one
    /// skill (the component's most common).
    pub skill_purity: f64,
    /// Per component: the task most of its top examples come from, and that share.
    pub components: Vec<(Option<String>, f64)>,
}

/// Perturbation ratios of a decomposition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Perturbation {
    pub median_ratio: f64,
    /// The larger ± ratio per component.
    pub ratios: Vec<f64>,
}

impl Perturbation {
    fn of(report: &PerturbReport) -> Self {
        Self {
            median_ratio: report.median_ratio,
            ratios: report
                .per_component
                .iter()
                .map(|c| c.component_direction.max_ratio)
                .collect(),
        }
    }

    fn random_of(report: &PerturbReport) -> Self {
        Self {
            median_ratio: report.median_random_ratio.unwrap_or(f64::NAN),
            ratios: report
                .per_component
                .iter()
                .filter_map(|c| c.random_direction.as_ref().map(|r| r.max_ratio))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shuffled {
    pub nmi_task: f64,
    pub purity: f64,
    pub perturbation: Perturbation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Controls {
    /// Components fitted to PEFs with per-example shuffled parameter indices.
    pub shuffled: Shuffled,
    /// Random directions of the same norm on the same parameters, same examples.
    pub random_directions: Perturbation,
}

/// One decomposition kind's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KindSummary {
    pub nmi_task: f64,
    pub purity: f64,
    pub skill_purity: f64,
    pub perturbation: Perturbation,
    pub controls: Controls,
    pub alignment: Alignment,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub examples: usize,
    pub tasks: Vec<String>,
    pub d_npeff: KindSummary,
    pub lrm_npeff: KindSummary,
    /// Seconds per phase run by this invocation (None: skipped, output existed).
    pub seconds: Vec<(String, Option<f64>)>,
}

/// The two decomposition kinds, with their file-name stems.
const KINDS: [(PefKind, &str, &str); 2] = [
    (PefKind::Diagonal, "diagonal", "d"),
    (PefKind::LowRank, "low-rank", "lrm"),
];

/// Run (or resume) the experiment; `log` receives one line per phase.
pub fn run(opts: &Options, log: &mut dyn FnMut(&str)) -> Result<Summary> {
    opts.validate()?;
    let mut settings = serde_json::to_value(opts)?;
    settings["experiment"] = "npeff-synthetic".into();
    stage::prepare_out_dir(&opts.out, opts.force, &settings)?;
    let out = &opts.out;
    let mut phases = Phases::new(log);
    let data_dir = out.join("data");
    phases.run("suite and tokenizer", data_dir.exists(), || {
        stage::write_suite(
            &data_dir,
            opts.train_per_task,
            opts.pef_examples_per_task,
            opts.seed,
            None,
        )
    })?;
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
    let pef_data = out.join("pef-data.jsonl");
    phases.run("held-out examples", pef_data.exists(), || {
        write_pef_data(&data_dir, &pef_data)
    })?;
    let tasks = example_tasks(&pef_data)?;

    let mut kinds = Vec::new();
    for (kind, name, stem) in KINDS {
        let pefs = out.join(format!("pefs-{name}"));
        phases.run(&format!("{name} PEFs"), PefDir::open(&pefs).is_ok(), || {
            compute_pefs(opts, kind, &model_dir, &pef_data, &pefs)
        })?;
        let shuffled = out.join(format!("pefs-{name}-shuffled"));
        phases.run(
            &format!("{name} PEFs, shuffled control"),
            PefDir::open(&shuffled).is_ok(),
            || fisherkit_npeff::synth::shuffled_copy(&pefs, &shuffled, opts.seed),
        )?;
        let mut results = Vec::new();
        for (suffix, dir) in [("", &pefs), ("-shuffled", &shuffled)] {
            let fitted = out.join(format!("{stem}-npeff{suffix}.safetensors"));
            phases.run(
                &format!("{stem}-npeff{suffix} fit"),
                fitted.exists(),
                || fit_npeff(opts, kind, dir, &fitted),
            )?;
            let an = Analysed::open(&fitted, dir, None)?;
            let perturbed = out.join(format!("perturb-{stem}{suffix}.json"));
            phases.run(
                &format!("{stem}-npeff{suffix} perturbation"),
                perturbed.exists(),
                || {
                    let report = perturbation(opts, &an, &model_dir, suffix.is_empty())?;
                    write_json(&perturbed, &report)
                },
            )?;
            let report: PerturbReport =
                serde_json::from_str(&std::fs::read_to_string(&perturbed)?)?;
            if suffix.is_empty() {
                let page = out.join(format!("report-{stem}.html"));
                let top = an.top(&top_options(opts), &fitted, dir)?;
                let html = fisherkit_npeff::report::render(
                    &top,
                    &an.decomposition.info,
                    &an.decomposition.loss_history,
                    Some(&report),
                );
                write_bytes(&page, html.as_bytes())?;
            }
            results.push((alignment(&an, &tasks, opts.top)?, report));
        }
        let (shuffled_alignment, shuffled_report) = results.pop().expect("two fits");
        let (alignment, report) = results.pop().expect("two fits");
        kinds.push(KindSummary {
            nmi_task: alignment.nmi_task,
            purity: alignment.purity,
            skill_purity: alignment.skill_purity,
            perturbation: Perturbation::of(&report),
            controls: Controls {
                shuffled: Shuffled {
                    nmi_task: shuffled_alignment.nmi_task,
                    purity: shuffled_alignment.purity,
                    perturbation: Perturbation::of(&shuffled_report),
                },
                random_directions: Perturbation::random_of(&report),
            },
            alignment,
        });
    }
    let lrm_npeff = kinds.pop().expect("two kinds");
    let d_npeff = kinds.pop().expect("two kinds");
    let summary = Summary {
        examples: tasks.len(),
        tasks: synthetic::all_names()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        d_npeff,
        lrm_npeff,
        seconds: phases.seconds,
    };
    write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

fn top_options(opts: &Options) -> TopOptions {
    TopOptions {
        top: opts.top,
        components: vec![],
        data: None,
    }
}

/// Every task's test split (the held-out examples), with a `task` field.
fn write_pef_data(data_dir: &Path, out: &Path) -> Result<()> {
    write_file(out, |w| {
        for task in synthetic::all_names() {
            for e in stage::load_split(data_dir, task, "test")? {
                let line = serde_json::json!({"input": e.input, "target": e.target, "task": task});
                serde_json::to_writer(&mut *w, &line)?;
                w.write_all(b"\n")?;
            }
        }
        Ok(())
    })
}

/// The task of each line of the PEF data, in order.
fn example_tasks(path: &Path) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Row {
        task: String,
    }
    Ok(fisherkit_common::jsonl::read_all::<Row>(path)?
        .into_iter()
        .map(|l| l.value.task)
        .collect())
}

fn compute_pefs(
    opts: &Options,
    kind: PefKind,
    model: &Path,
    data: &Path,
    out: &Path,
) -> Result<()> {
    let selection = ClassSelection {
        top_k_per_position: Some(opts.top_k_classes),
        min_prob: 0.0,
        max_classes: (kind == PefKind::LowRank).then_some(opts.max_classes),
    };
    stage::compute_pefs(
        model,
        data,
        out,
        OutputsSpec::Tokens,
        kind,
        opts.pef_top_k,
        selection,
    )
}

fn fit_npeff(opts: &Options, kind: PefKind, pefs: &Path, out: &Path) -> Result<()> {
    let settings = FitSettings {
        components: opts.components,
        iters: match kind {
            PefKind::Diagonal => opts.d_iters,
            PefKind::LowRank => opts.lrm_iters,
        },
        g_only_iters: opts.lrm_g_only_iters,
        seed: opts.seed,
        ..FitSettings::default()
    };
    stage::fit_npeff(pefs, &settings, out)
}

fn perturbation(
    opts: &Options,
    an: &Analysed,
    model: &Path,
    random_control: bool,
) -> Result<PerturbReport> {
    let settings = PerturbSettings {
        components: vec![],
        top: opts.top,
        baseline: opts.baseline,
        epsilon: Epsilon::TargetKl(opts.target_kl),
        direction: DirectionSettings {
            max_cos: 0.3,
            rejection: Rejection::Span,
            seed: opts.seed,
        },
        random_control,
    };
    let sources = PerturbSources {
        model: Some(model.to_path_buf()),
        data: None,
        batch_size: 16,
    };
    run_perturb(an, &sources, &settings, |_| {})
}

/// Shannon entropy (nats) of counts.
fn entropy(counts: impl Iterator<Item = usize>, total: usize) -> f64 {
    counts
        .filter(|&c| c > 0)
        .map(|c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum()
}

/// Normalised mutual information of two labelings, I / ((H(a) + H(b)) / 2) (1 when
/// either is constant and they agree; 0 when a constant meets a varied one).
pub fn nmi(a: &[usize], b: &[usize]) -> f64 {
    let n = a.len();
    if n == 0 {
        return 0.0;
    }
    // Ordered maps: the sums run in the same order every time (identical summaries when
    // a run is resumed).
    let mut joint: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut ca: BTreeMap<usize, usize> = BTreeMap::new();
    let mut cb: BTreeMap<usize, usize> = BTreeMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *joint.entry((x, y)).or_default() += 1;
        *ca.entry(x).or_default() += 1;
        *cb.entry(y).or_default() += 1;
    }
    let (ha, hb) = (
        entropy(ca.values().copied(), n),
        entropy(cb.values().copied(), n),
    );
    if ha == 0.0 && hb == 0.0 {
        return 1.0;
    }
    let mi: f64 = joint
        .iter()
        .map(|(&(x, y), &c)| {
            let pxy = c as f64 / n as f64;
            pxy * (pxy * n as f64 * n as f64 / (ca[&x] as f64 * cb[&y] as f64)).ln()
        })
        .sum();
    (mi / ((ha + hb) / 2.0)).clamp(0.0, 1.0)
}

/// How the components of `an` line up with the examples' tasks and their skills.
fn alignment(an: &Analysed, tasks: &[String], top: usize) -> Result<Alignment> {
    ensure!(
        tasks.len() == an.n_examples(),
        "{} tasks for {} PEF examples",
        tasks.len(),
        an.n_examples()
    );
    let names = synthetic::all_names();
    let task_index = |t: &str| names.iter().position(|n| *n == t).unwrap_or(names.len());
    let r = an.components();
    let (mut by_task, mut by_component) = (Vec::new(), Vec::new());
    for (i, task) in tasks.iter().enumerate() {
        let row: Vec<f32> = (0..r).map(|j| an.coefficient(i, j)).collect();
        let best = (0..r)
            .max_by(|&x, &y| row[x].total_cmp(&row[y]))
            .unwrap_or(0);
        if row[best] > 0.0 {
            by_task.push(task_index(task));
            by_component.push(best);
        }
    }
    let mut components = Vec::new();
    let (mut purity, mut skill_purity, mut counted) = (0.0, 0.0, 0);
    for j in 0..r {
        let examples = an.top_examples(j, top);
        if examples.is_empty() {
            components.push((None, 0.0));
            continue;
        }
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut skills: HashMap<&str, usize> = HashMap::new();
        for &i in &examples {
            *counts.entry(tasks[i].as_str()).or_default() += 1;
            for skill in synthetic::find(&tasks[i])?.skills {
                *skills.entry(skill).or_default() += 1;
            }
        }
        let (task, most) = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(t, c)| (t.to_string(), *c))
            .expect("non-empty");
        let skill_most = skills.values().copied().max().unwrap_or(0);
        let share = most as f64 / examples.len() as f64;
        purity += share;
        skill_purity += skill_most as f64 / examples.len() as f64;
        counted += 1;
        components.push((Some(task), share));
    }
    let counted = counted.max(1) as f64;
    Ok(Alignment {
        nmi_task: nmi(&by_task, &by_component),
        purity: purity / counted,
        skill_purity: skill_purity / counted,
        components,
    })
}

/// The summary as a plain-text table.
pub fn table(summary: &Summary, out: &Path) -> String {
    let mut s = format!(
        "NPEFF on the synthetic suite: {} held-out examples of {} tasks\n\n\
         {:<10} {:>8} {:>8} {:>8} {:>12} | {:>13} {:>14} {:>13} {:>13}\n",
        summary.examples,
        summary.tasks.len(),
        "",
        "NMI",
        "purity",
        "skills",
        "pert. ratio",
        "shuffled NMI",
        "shuffled pur.",
        "shuffled ratio",
        "random ratio"
    );
    for (name, k) in [
        ("D-NPEFF", &summary.d_npeff),
        ("LRM-NPEFF", &summary.lrm_npeff),
    ] {
        s.push_str(&format!(
            "{:<10} {:>8.3} {:>8.3} {:>8.3} {:>12.2} | {:>13.3} {:>14.3} {:>13.2} {:>13.2}\n",
            name,
            k.nmi_task,
            k.purity,
            k.skill_purity,
            k.perturbation.median_ratio,
            k.controls.shuffled.nmi_task,
            k.controls.shuffled.purity,
            k.controls.shuffled.perturbation.median_ratio,
            k.controls.random_directions.median_ratio
        ));
    }
    s.push_str(&format!(
        "\nperturbation ratio: median over components of KL on the top examples / KL on random \
         other examples.\noutputs in {} (summary.json, report-d.html, report-lrm.html)\n",
        out.display()
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::nmi;

    #[test]
    fn nmi_of_identical_independent_and_relabelled_labelings() {
        let a = [0, 0, 1, 1, 2, 2];
        assert!((nmi(&a, &a) - 1.0).abs() < 1e-12);
        // A relabelling carries the same information.
        assert!((nmi(&a, &[5, 5, 3, 3, 9, 9]) - 1.0).abs() < 1e-12);
        // Independent by construction: each a-value meets each b-value equally often.
        let (x, y) = ([0, 0, 1, 1], [0, 1, 0, 1]);
        assert!(nmi(&x, &y).abs() < 1e-12);
        // Hand value: a = [0,0,1,1], b = [0,0,0,1]: I = H(b) − H(b|a) with H(b|a) =
        // ½·H(½) = ½ ln 2, H(a) = ln 2, H(b) = H(¼).
        let hq = -(0.25f64 * 0.25f64.ln() + 0.75 * 0.75f64.ln());
        let want = (hq - 0.5 * 2f64.ln()) / ((2f64.ln() + hq) / 2.0);
        assert!((nmi(&[0, 0, 1, 1], &[0, 0, 0, 1]) - want).abs() < 1e-12);
    }
}
