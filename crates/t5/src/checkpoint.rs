//! Hugging Face checkpoint directories: `config.json` + `model.safetensors` or sharded
//! `model.safetensors.index.json`, loading with the tied/untied name fallbacks and saving
//! in exactly the layout `transformers` reads. Also the reference random initialisation.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fisherkit_common::atomic::{write_json, StagedDir};
use fisherkit_common::st::{self, MappedFile, OwnedTensor};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::ParamAccess;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::config::{ResidualKind, T5Config};
use crate::model::T5;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub use fisherkit_model::tokenizer::TOKENIZER_FILE;

/// Unused tensor some checkpoints carry (cross-attention has no position bias).
const IGNORED: &str = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight";

/// The safetensors files of a checkpoint and which file holds each tensor.
struct Weights {
    files: Vec<MappedFile>,
    location: HashMap<String, usize>,
}

impl Weights {
    fn open(dir: &Path) -> Result<Self> {
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

    fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// The tensor stored under the first of `names` that exists: the name it was found
    /// under, its shape and its values as f32.
    fn read(&self, names: &[String]) -> Result<Option<NamedTensor>> {
        for name in names {
            if let Some(&file) = self.location.get(name) {
                let (shape, values) = self.files[file].read_f32(name)?;
                return Ok(Some((name.clone(), shape, values)));
            }
        }
        Ok(None)
    }
}

type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Names under which a parameter may be stored, preferred first (the one list the
/// loader and, through [`fisherkit_model::LogProbModel::checkpoint_names`], the merge
/// evaluator use).
pub fn candidate_names(name: &str) -> Vec<String> {
    let mut names = vec![name.to_string()];
    match name {
        "shared.weight" => {
            names.push("encoder.embed_tokens.weight".into());
            names.push("decoder.embed_tokens.weight".into());
        }
        // Some exports name the untied head after the decoder embedding.
        "lm_head.weight" => names.push("decoder.lm_head.weight".into()),
        _ => {}
    }
    names
}

/// Load a checkpoint directory onto `device` (weights upcast to f32).
pub fn load(dir: &Path, device: &Device) -> Result<T5> {
    let config = T5Config::load(&dir.join(CONFIG_FILE))?;
    let weights = Weights::open(dir)?;
    // An untied head is what the checkpoint has; transformers ≥ 5 writes
    // `tie_word_embeddings: true` even for v1.1 and omits lm_head when it equals shared.
    let untied = weights.contains("lm_head.weight") || weights.contains("decoder.lm_head.weight");
    let mut model = T5::skeleton(&config, untied, device)?;
    let mut used = std::collections::HashSet::new();
    for (name, mut param) in model.named_params_mut() {
        let expected = param_shape(&param);
        let (found, shape, values) = weights
            .read(&candidate_names(&name))?
            .with_context(|| format!("{}: checkpoint has no tensor {name}", dir.display()))?;
        if shape != expected {
            bail!(
                "{}: tensor {found} has shape {shape:?}, but the config needs {expected:?}",
                dir.display()
            );
        }
        param
            .set_f32(&values)
            .with_context(|| format!("tensor {found}"))?;
        used.insert(found);
    }
    let unused: Vec<&String> = weights
        .location
        .keys()
        .filter(|n| {
            !used.contains(*n) && n.as_str() != IGNORED && !n.ends_with("embed_tokens.weight")
        })
        .collect();
    if !unused.is_empty() {
        let mut unused = unused;
        unused.sort();
        bail!(
            "{}: checkpoint tensors the config does not account for (wrong config?): {}",
            dir.display(),
            unused
                .iter()
                .take(5)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(model)
}

fn param_shape(param: &fisherkit_model::ParamMut<'_>) -> Vec<usize> {
    match param {
        fisherkit_model::ParamMut::Vector(p) => p.val().dims().to_vec(),
        fisherkit_model::ParamMut::Matrix(p) => p.val().dims().to_vec(),
    }
}

/// Save `model` into `dir` in the Hugging Face layout: `config.json` and one
/// `model.safetensors` (f32, `format: pt`), plus `tokenizer.json` when given. The
/// directory is staged and renamed into place; an existing `dir` is replaced only when
/// `overwrite`.
pub fn save(model: &T5, dir: &Path, tokenizer: Option<&Path>, overwrite: bool) -> Result<PathBuf> {
    let staged = StagedDir::new(dir, overwrite)?;
    let mut config = model.config().clone();
    config.tie_word_embeddings = model.lm_head.is_none();
    config.scale_decoder_outputs = Some(model.config().scales_decoder_output());
    write_json(&staged.path().join(CONFIG_FILE), &config.to_hf_json())?;
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
enum Init {
    Normal(f64),
    Ones,
    Zeros,
}

/// The reference initialisation of each parameter (HF / mesh TF: normal with a per-kind
/// standard deviation, norm weights 1), and for the switches' parameters: biases and
/// ReZero's α 0, absolute positions like token embeddings, a factorised embedding's
/// projection `width^-½`; with Fixup, each residual branch's last projection (`o`, `wo`)
/// 0, its other projections scaled by `L^-½` (L residual branches, two layers each) and
/// its multiplier 1.
fn init_of(name: &str, config: &T5Config) -> Result<Init> {
    let factor = config.initializer_factor;
    let d_model = config.d_model as f64;
    let fixup = config.norm_type()?.residual == ResidualKind::Fixup;
    let mut parts = name.rsplit('.');
    let (last, leaf) = (parts.next().unwrap_or(name), parts.next().unwrap_or(name));
    match last {
        "residual_scale" if fixup => return Ok(Init::Ones),
        "bias" | "residual_scale" | "residual_bias_in" | "residual_bias_out" => {
            return Ok(Init::Zeros)
        }
        _ => {}
    }
    let branches = 2 * config.num_layers + 3 * config.decoder_layers();
    let branch_scale = match leaf {
        "o" | "wo" if fixup => return Ok(Init::Zeros),
        "q" | "k" | "v" | "wi" | "wi_0" | "wi_1" if fixup => (branches as f64).powf(-0.5),
        _ => 1.0,
    };
    let std = match leaf {
        "shared" | "lm_head" | "embed_positions" => 1.0,
        "projection" => (config.embedding_width() as f64).powf(-0.5),
        "q" => (d_model * config.d_kv as f64).powf(-0.5),
        "k" | "v" | "relative_attention_bias" | "wi" | "wi_0" | "wi_1" => d_model.powf(-0.5),
        "o" => (config.inner_dim() as f64).powf(-0.5),
        "wo" => (config.d_ff as f64).powf(-0.5),
        _ => return Ok(Init::Ones),
    };
    Ok(Init::Normal(factor * std * branch_scale))
}

/// A randomly initialised model with the reference initialisation, reproducible from
/// `seed` (each parameter draws from its own stream, so the draw of one tensor does not
/// depend on the sizes of the others).
pub fn init(config: &T5Config, untied_lm_head: bool, seed: u64, device: &Device) -> Result<T5> {
    let mut model = T5::skeleton(config, untied_lm_head, device)?;
    for (index, (name, mut param)) in model.named_params_mut().into_iter().enumerate() {
        let numel: usize = param_shape(&param).iter().product();
        let values = match init_of(&name, config)? {
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
    Ok(model)
}
