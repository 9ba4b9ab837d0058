//! Hugging Face checkpoint directories, for every architecture: `model.safetensors` or a
//! sharded `model.safetensors.index.json`, filling a model's named parameters from them
//! (with the architecture's name aliases), and writing the layout `transformers` reads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fisherkit_common::atomic::{write_json, StagedDir};
use fisherkit_common::st::{self, MappedFile, OwnedTensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::tokenizer::TOKENIZER_FILE;
use crate::{ParamAccess, ParamMut};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The safetensors files of a checkpoint and which file holds each tensor.
pub struct HfWeights {
    files: Vec<MappedFile>,
    location: HashMap<String, usize>,
}

type NamedTensor = (String, Vec<usize>, Vec<f32>);

impl HfWeights {
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(INDEX_FILE);
        if single.exists() {
            let file = MappedFile::open(&single)?;
            let location = file
                .tensors()?
                .names()
                .into_iter()
                .map(|n| (n.to_string(), 0))
                .collect();
            return Ok(Self {
                files: vec![file],
                location,
            });
        }
        if !index.exists() {
            bail!(
                "{}: no {WEIGHTS_FILE} or {INDEX_FILE} (not a Hugging Face checkpoint directory)",
                dir.display()
            );
        }
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("reading {}", index.display()))?;
        let parsed: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = parsed["weight_map"]
            .as_object()
            .with_context(|| format!("{}: no \"weight_map\" object", index.display()))?;
        let mut shard_ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut location = HashMap::new();
        for (name, shard) in map {
            let shard = shard
                .as_str()
                .with_context(|| format!("{}: shard of {name} is not a string", index.display()))?;
            let id = match shard_ids.get(shard) {
                Some(&id) => id,
                None => {
                    files.push(MappedFile::open(&dir.join(shard))?);
                    shard_ids.insert(shard.to_string(), files.len() - 1);
                    files.len() - 1
                }
            };
            location.insert(name.clone(), id);
        }
        Ok(Self { files, location })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Every tensor name in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    /// Refuse a checkpoint whose tensor `name` is missing or not of shape `expected`,
    /// reading only the header. Loaders call it before allocating the model a config
    /// describes, so that a mismatched config (e.g. one falling back to 7B-scale defaults)
    /// is an error instead of a multi-gigabyte allocation.
    pub fn expect_shape(&self, dir: &Path, name: &str, expected: &[usize]) -> Result<()> {
        let file = self
            .location
            .get(name)
            .with_context(|| format!("{}: checkpoint has no tensor {name}", dir.display()))?;
        let tensors = self.files[*file].tensors()?;
        let shape = tensors
            .tensor(name)
            .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", dir.display()))?
            .shape()
            .to_vec();
        if shape != expected {
            bail!(
                "{}: tensor {name} has shape {shape:?}, but the config needs {expected:?} (wrong config?)",
                dir.display()
            );
        }
        Ok(())
    }

    /// The tensor stored under the first of `names` that exists: the name it was found
    /// under, its shape and its values as f32.
    pub fn read(&self, names: &[String]) -> Result<Option<NamedTensor>> {
        for name in names {
            if let Some(&file) = self.location.get(name) {
                let (shape, values) = self.files[file].read_f32(name)?;
                return Ok(Some((name.clone(), shape, values)));
            }
        }
        Ok(None)
    }

    /// Fill every parameter of `params` from the tensor stored under the first of its
    /// `candidates` names, checking shapes and that every value is finite; then refuse checkpoint tensors that nothing
    /// read, except those `ignored` accepts (buffers, unused aliases). `dir` names the
    /// checkpoint in errors.
    pub fn fill(
        &self,
        dir: &Path,
        params: Vec<(String, ParamMut<'_>)>,
        candidates: impl Fn(&str) -> Vec<String>,
        ignored: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let mut used = HashSet::new();
        for (name, mut param) in params {
            let expected = param.shape();
            let (found, shape, values) = self
                .read(&candidates(&name))?
                .with_context(|| format!("{}: checkpoint has no tensor {name}", dir.display()))?;
            if shape != expected {
                bail!(
                    "{}: tensor {found} has shape {shape:?}, but the config needs {expected:?}",
                    dir.display()
                );
            }
            // A NaN or infinite weight would score and train to NaN without a word.
            if let Some(at) = values.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{}: tensor {found} holds {} at flat index {at} (a damaged or diverged checkpoint)",
                    dir.display(),
                    values[at]
                );
            }
            param
                .set_f32(&values)
                .with_context(|| format!("tensor {found}"))?;
            used.insert(found);
        }
        let mut unused: Vec<&str> = self
            .names()
            .filter(|n| !used.contains(*n) && !ignored(n))
            .collect();
        if !unused.is_empty() {
            unused.sort();
            bail!(
                "{}: checkpoint tensors the config does not account for (wrong config?): {}",
                dir.display(),
                unused
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }
}

/// Save `model` into `dir` in the Hugging Face layout: `config` as `config.json` and one
/// `model.safetensors` (f32, `format: pt`), plus `tokenizer.json` when given. The
/// directory is staged and renamed into place; an existing `dir` is replaced only when
/// `overwrite`.
pub fn save_hf<M: ParamAccess + ?Sized>(
    model: &M,
    config: &serde_json::Value,
    dir: &Path,
    tokenizer: Option<&Path>,
    overwrite: bool,
) -> Result<PathBuf> {
    let staged = StagedDir::new(dir, overwrite)?;
    write_json(&staged.path().join(CONFIG_FILE), config)?;
    let tensors = model
        .read_params()?
        .into_iter()
        .zip(model.param_specs())
        .map(|((name, values), spec)| (name, OwnedTensor::f32(spec.shape, &values)))
        .collect::<Vec<_>>();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    st::write(&staged.path().join(WEIGHTS_FILE), &tensors, metadata)?;
    if let Some(tokenizer) = tokenizer {
        std::fs::copy(tokenizer, staged.path().join(TOKENIZER_FILE))
            .with_context(|| format!("copying {}", tokenizer.display()))?;
    }
    staged.commit()
}

/// How one parameter starts.
pub enum Init {
    Normal(f64),
    Ones,
    Zeros,
}

/// Set every parameter of `params` as `init_of` its name says, reproducibly from `seed`:
/// each parameter draws from its own stream (seeded by the seed and its index), so the
/// draw of one tensor does not depend on the sizes of the others.
pub fn initialise(
    params: Vec<(String, ParamMut<'_>)>,
    seed: u64,
    init_of: impl Fn(&str) -> Result<Init>,
) -> Result<()> {
    for (index, (name, mut param)) in params.into_iter().enumerate() {
        let numel: usize = param.shape().iter().product();
        let values = match init_of(&name)? {
            Init::Normal(std) => {
                let mut rng = StdRng::seed_from_u64(
                    seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                let normal = Normal::new(0.0f32, std as f32).expect("positive std");
                (0..numel).map(|_| normal.sample(&mut rng)).collect()
            }
            Init::Ones => vec![1.0f32; numel],
            Init::Zeros => vec![0.0f32; numel],
        };
        param
            .set_f32(&values)
            .with_context(|| format!("parameter {name}"))?;
    }
    Ok(())
}
