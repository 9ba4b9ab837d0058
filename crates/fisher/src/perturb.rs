//! The NPEFF perturbation test on a real model: [`fisherkit_npeff::perturb`] with the
//! checkpoint the PEFs were computed from (any architecture of the loader registry) as
//! its [`Predictor`], re-reading the examples from the PEFs' data file.

use crate::data::Dataset;
use crate::job::{load_data, outputs_spec, with_model_source_on};
use crate::model::{output_log_probs, Item, Outputs};
use anyhow::{bail, ensure, Context, Result};
use fisherkit_model::{Model, ParamAccess};
use fisherkit_npeff::analysis::Analysed;
use fisherkit_npeff::perturb::{perturb, PerturbReport, PerturbSettings, Predictor, Shift};
use std::path::{Path, PathBuf};

/// A model scoring a fixed list of items with its parameters shifted from θ on request:
/// the [`Predictor`] of the perturbation test, and of anything else that moves a model
/// along a direction and watches its outputs.
pub struct ShiftableModel {
    model: Box<dyn Model>,
    theta: Vec<f32>,
    /// Whether the model currently holds θ + a shift.
    shifted: bool,
    outputs: Outputs,
    items: Vec<Item>,
    batch_size: usize,
}

impl ShiftableModel {
    /// `model` (in eval mode, without autodiff) scoring `items` over `outputs`,
    /// `batch_size` items per forward pass.
    pub fn new(
        model: &dyn Model,
        outputs: Outputs,
        items: Vec<Item>,
        batch_size: usize,
    ) -> Result<Self> {
        ensure!(batch_size > 0, "--batch-size must be positive");
        let mut model = model.without_autodiff();
        model.set_training(false);
        let theta = model.read_flat()?;
        Ok(Self {
            model,
            theta,
            shifted: false,
            outputs,
            items,
            batch_size,
        })
    }

    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// The unperturbed parameters, flat.
    pub fn theta(&self) -> &[f32] {
        &self.theta
    }
}

impl Predictor for ShiftableModel {
    fn log_probs(
        &mut self,
        shift: Option<&Shift<'_>>,
        examples: &[usize],
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        match shift {
            Some(shift) => {
                let mut theta = self.theta.clone();
                for (&k, &d) in shift.indices.iter().zip(shift.values) {
                    theta[k as usize] += d;
                }
                self.model.write_flat(&theta)?;
                self.shifted = true;
            }
            None if self.shifted => {
                self.model.write_flat(&self.theta)?;
                self.shifted = false;
            }
            None => {}
        }
        let mut out = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(self.batch_size) {
            let items: Vec<Item> = chunk.iter().map(|&i| self.items[i].clone()).collect();
            out.extend(output_log_probs(
                self.model.as_ref(),
                &self.outputs,
                &items,
            )?);
        }
        Ok(out)
    }

    fn answers(&self, example: usize) -> Vec<usize> {
        let item = &self.items[example];
        match (&self.outputs, item.label) {
            (Outputs::Labels { .. }, Some(label)) => vec![label],
            _ => item
                .example
                .target_ids
                .iter()
                .map(|&t| t as usize)
                .collect(),
        }
    }
}

/// Where the perturbation test gets its model and data.
pub struct PerturbSources {
    /// The checkpoint (default: the one the PEFs record).
    pub model: Option<PathBuf>,
    /// The data file (default: the one the PEFs record; it must hash the same).
    pub data: Option<PathBuf>,
    pub batch_size: usize,
}

/// Run the perturbation test of the decomposition in `an` on its model.
pub fn run_perturb(
    an: &Analysed,
    sources: &PerturbSources,
    settings: &PerturbSettings,
    progress: impl FnMut(usize),
) -> Result<PerturbReport> {
    let provenance = &an.provenance;
    let model_dir = sources
        .model
        .clone()
        .or_else(|| provenance.model.as_ref().map(PathBuf::from))
        .context("the PEFs do not record their model (synthetic PEFs?): give --model")?;
    let data = sources
        .data
        .clone()
        .or_else(|| provenance.data.as_ref().map(PathBuf::from))
        .context("the PEFs do not record their data file: give --data")?;
    let Some(spec) = provenance.outputs.as_deref().and_then(outputs_spec) else {
        bail!(
            "the PEFs record outputs {:?}: expected \"tokens\" or \"labels:…\" (PEFs written by `fisherkit pefs`)",
            provenance.outputs
        );
    };
    with_model_source_on(&model_dir, false, |source| {
        check_parameter_table(an, source.model.as_ref(), &model_dir)?;
        let (outputs, dataset) = load_data(source, &data, &spec, Some(an.n_examples()))?;
        check_examples(an, &dataset, &data)?;
        let mut predictor = ShiftableModel::new(
            source.model.as_ref(),
            outputs,
            dataset.items,
            sources.batch_size,
        )?;
        perturb(an, &mut predictor, settings, progress)
    })
}

/// The model's parameter table must be the one the PEFs' indices refer to.
fn check_parameter_table(an: &Analysed, model: &dyn Model, dir: &Path) -> Result<()> {
    let table = &an.pefs.meta.parameters;
    ensure!(
        !table.is_empty(),
        "{}: the PEFs carry no parameter table, so their indices cannot be mapped onto a model",
        an.pefs.dir.display()
    );
    let specs = model.param_specs();
    for (i, entry) in table.iter().enumerate() {
        let Some(spec) = specs.get(i) else {
            bail!(
                "{}: the model has {} parameter tensors but the PEFs' table has {} (from another model?)",
                dir.display(),
                specs.len(),
                table.len()
            );
        };
        ensure!(
            spec.name == entry.name && spec.shape == entry.shape,
            "{}: parameter {i} is {} {:?} but the PEFs' table has {} {:?} (the PEFs were computed with another model)",
            dir.display(),
            spec.name,
            spec.shape,
            entry.name,
            entry.shape
        );
    }
    ensure!(
        specs.len() == table.len(),
        "{}: the model has {} parameter tensors but the PEFs' table has {} (from another model?)",
        dir.display(),
        specs.len(),
        table.len()
    );
    Ok(())
}

/// The data must be the PEFs' (same bytes, and each PEF example on its recorded line).
fn check_examples(an: &Analysed, dataset: &Dataset, data: &Path) -> Result<()> {
    if let Some(hash) = &an.provenance.data_hash {
        ensure!(
            *hash == dataset.hash,
            "{}: changed since the PEFs were computed ({} now, {hash} recorded)",
            data.display(),
            dataset.hash
        );
    }
    ensure!(
        dataset.items.len() == an.n_examples(),
        "{}: {} examples, but the PEFs hold {}",
        data.display(),
        dataset.items.len(),
        an.n_examples()
    );
    for (i, extras) in an.extras.iter().enumerate() {
        if let Some(line) = extras.source_line {
            ensure!(
                dataset.lines[i] as u64 == line,
                "{}: PEF example {i} came from line {line}, the data's example {i} is on line {}",
                data.display(),
                dataset.lines[i]
            );
        }
    }
    Ok(())
}
