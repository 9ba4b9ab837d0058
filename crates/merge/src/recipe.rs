//! mergekit-compatible YAML recipes (the `models:` form) and parameter resolution.
//!
//! A parameter setting is, as in mergekit's `ParameterSetting`: a scalar; a list of
//! numbers — a layer gradient, interpolated at t = layer/(layers−1); or a list of
//! `{filter, value}` conditions, the first whose filter matches the tensor name winning
//! (`{value: …}` without a filter is the default). mergekit matches a filter as a
//! substring of the tensor name; fisherkit does too and, in addition, accepts a filter
//! that matches as a regular expression (`mlp\.(up|gate)_proj`).

use anyhow::{anyhow, bail, Context, Result};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Merge methods fisherkit implements (mergekit names, plus `fisher`).
pub const METHODS: [&str; 8] = [
    "fisher",
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "slerp",
    "passthrough",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScalarOrGradient {
    Scalar(Scalar),
    Gradient(Vec<Scalar>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conditional {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    pub value: ScalarOrGradient,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Setting {
    Plain(ScalarOrGradient),
    Conditions(Vec<Conditional>),
    Condition(Conditional),
}

pub type Parameters = BTreeMap<String, Setting>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub model: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: Parameters,
}

/// A merge recipe. Unknown keys are refused so a typo never silently changes a merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub merge_method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: Parameters,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_dtype: Option<String>,
    /// mergekit's tokenizer choice; fisherkit copies the base model's tokenizer, so only
    /// `base` (or absence) is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_source: Option<String>,
    /// fisherkit extension: regexes of tensors kept from the target, never merged
    /// (e.g. a classification head).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// fisherkit extension: seed of the random drops of `dare_*` (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// mergekit layouts fisherkit does not implement; present only to name them in errors.
    #[serde(default, skip_serializing)]
    pub slices: Option<serde_norway::Value>,
    #[serde(default, skip_serializing)]
    pub modules: Option<serde_norway::Value>,
}

impl Recipe {
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Self> {
        let recipe: Recipe =
            serde_norway::from_str(text).map_err(|e| anyhow!("{}: {e}", origin.display()))?;
        recipe
            .validate()
            .with_context(|| format!("recipe {}", origin.display()))?;
        Ok(recipe)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading recipe {}", path.display()))?;
        Self::from_yaml(&text, path)
    }

    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_norway::to_string(self)?)
    }

    pub fn validate(&self) -> Result<()> {
        if self.slices.is_some() || self.modules.is_some() {
            bail!(
                "mergekit `slices:`/`modules:` recipes are not supported; use the `models:` form"
            );
        }
        if !METHODS.contains(&self.merge_method.as_str()) {
            bail!(
                "merge_method {:?} is not supported (supported: {})",
                self.merge_method,
                METHODS.join(", ")
            );
        }
        if self.models.is_empty() {
            bail!("`models:` is empty");
        }
        if let Some(src) = &self.tokenizer_source {
            if src != "base" {
                bail!("tokenizer_source {src:?} is not supported (fisherkit copies the base model's tokenizer; use `base`)");
            }
        }
        for pattern in &self.exclude {
            Regex::new(pattern).with_context(|| format!("exclude pattern {pattern:?}"))?;
        }
        for d in [&self.dtype, &self.out_dtype].into_iter().flatten() {
            crate::checkpoint::parse_dtype(d)?;
        }
        Ok(())
    }

    /// Every filter string used anywhere, so they can be compiled once.
    fn filters(&self) -> Vec<String> {
        let mut out = Vec::new();
        let all = self
            .parameters
            .values()
            .chain(self.models.iter().flat_map(|m| m.parameters.values()));
        for setting in all {
            let conds: &[Conditional] = match setting {
                Setting::Conditions(c) => c,
                Setting::Condition(c) => std::slice::from_ref(c),
                Setting::Plain(_) => &[],
            };
            out.extend(conds.iter().filter_map(|c| c.filter.clone()));
        }
        out
    }
}

/// Compiled filters plus the layer count, to evaluate parameters for any tensor.
pub struct Resolver<'a> {
    recipe: &'a Recipe,
    regexes: HashMap<String, Option<Regex>>,
    num_layers: usize,
}

impl<'a> Resolver<'a> {
    /// `tensor_names` (of the target) give the number of layers for gradients.
    pub fn new(recipe: &'a Recipe, tensor_names: &[String]) -> Self {
        let regexes = recipe
            .filters()
            .into_iter()
            .map(|f| {
                let re = Regex::new(&f).ok();
                (f, re)
            })
            .collect();
        let num_layers = tensor_names
            .iter()
            .filter_map(|n| layer_index(n))
            .max()
            .map_or(0, |m| m + 1);
        Self {
            recipe,
            regexes,
            num_layers,
        }
    }

    pub fn for_tensor(&'a self, name: &'a str) -> TensorParams<'a> {
        TensorParams {
            resolver: self,
            name,
            t: layer_t(name, self.num_layers),
        }
    }

    fn matches(&self, filter: &str, name: &str) -> bool {
        filter == "*"
            || name.contains(filter)
            || self
                .regexes
                .get(filter)
                .and_then(Option::as_ref)
                .is_some_and(|re| re.is_match(name))
    }

    fn evaluate(&self, setting: &Setting, name: &str, t: f64) -> Option<Scalar> {
        match setting {
            Setting::Plain(v) => Some(evaluate_gradient(v, t)),
            Setting::Condition(c) => self.evaluate_conditions(std::slice::from_ref(c), name, t),
            Setting::Conditions(cs) => self.evaluate_conditions(cs, name, t),
        }
    }

    fn evaluate_conditions(&self, conds: &[Conditional], name: &str, t: f64) -> Option<Scalar> {
        conds
            .iter()
            .find(|c| c.filter.as_deref().is_none_or(|f| self.matches(f, name)))
            .map(|c| evaluate_gradient(&c.value, t))
    }
}

/// mergekit's interpolation: a list of numbers is a piecewise-linear gradient over
/// t ∈ [0, 1]; a list of other scalars picks the element at ⌊t·(n−1)⌋.
fn evaluate_gradient(v: &ScalarOrGradient, t: f64) -> Scalar {
    match v {
        ScalarOrGradient::Scalar(s) => s.clone(),
        ScalarOrGradient::Gradient(list) if list.is_empty() => Scalar::Text(String::new()),
        ScalarOrGradient::Gradient(list) => {
            let numbers: Option<Vec<f64>> = list
                .iter()
                .map(|s| match s {
                    Scalar::Number(x) => Some(*x),
                    _ => None,
                })
                .collect();
            let scaled = t * (list.len() - 1) as f64;
            let i0 = scaled.floor() as usize;
            match numbers {
                Some(xs) => {
                    let i1 = (i0 + 1).min(xs.len() - 1);
                    let frac = scaled - i0 as f64;
                    Scalar::Number((1.0 - frac) * xs[i0] + frac * xs[i1])
                }
                None => list[i0.min(list.len() - 1)].clone(),
            }
        }
    }
}

/// The decoder-layer index in a tensor name (`model.layers.12.mlp…`, `h.3.`, `block.7.`).
pub fn layer_index(name: &str) -> Option<usize> {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.").expect("valid regex")
    });
    re.captures(name).and_then(|c| c[1].parse().ok())
}

/// Position of a tensor along the depth of the model, as mergekit's planner evaluates
/// gradients: layer i of n sits at i/(n−1) (a single layer at 1); tensors outside the
/// layers (embeddings, final norm, LM head) are planned with t = 0.
pub fn layer_t(name: &str, num_layers: usize) -> f64 {
    match layer_index(name) {
        Some(i) if num_layers > 1 => i as f64 / (num_layers - 1) as f64,
        Some(_) => 1.0,
        None => 0.0,
    }
}

/// Parameters as seen by one tensor.
pub struct TensorParams<'a> {
    resolver: &'a Resolver<'a>,
    pub name: &'a str,
    pub t: f64,
}

impl TensorParams<'_> {
    /// A parameter of model `model` (index into `recipe.models`), falling back to the
    /// global `parameters`, as mergekit's `ConfigReader.parameter` does.
    pub fn model(&self, model: usize, key: &str) -> Option<Scalar> {
        let r = self.resolver;
        r.recipe
            .models
            .get(model)
            .and_then(|m| m.parameters.get(key))
            .and_then(|s| r.evaluate(s, self.name, self.t))
            .or_else(|| self.global(key))
    }

    pub fn global(&self, key: &str) -> Option<Scalar> {
        let r = self.resolver;
        r.recipe
            .parameters
            .get(key)
            .and_then(|s| r.evaluate(s, self.name, self.t))
    }

    pub fn model_f64(&self, model: usize, key: &str, default: Option<f64>) -> Result<f64> {
        let who = || {
            let path = &self.resolver.recipe.models[model].model;
            format!("parameter {key} of model {path} for tensor {}", self.name)
        };
        match self.model(model, key) {
            Some(s) => number(&s).with_context(who),
            None => default.ok_or_else(|| anyhow!("missing required {}", who())),
        }
    }

    pub fn global_f64(&self, key: &str, default: Option<f64>) -> Result<f64> {
        match self.global(key) {
            Some(s) => {
                number(&s).with_context(|| format!("parameter {key} for tensor {}", self.name))
            }
            None => default.ok_or_else(|| {
                anyhow!("missing required parameter {key} for tensor {}", self.name)
            }),
        }
    }

    pub fn global_bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.global(key) {
            None => Ok(default),
            Some(Scalar::Bool(b)) => Ok(b),
            Some(Scalar::Number(x)) if x == 0.0 || x == 1.0 => Ok(x == 1.0),
            Some(other) => bail!(
                "parameter {key} for tensor {} must be true or false, got {other:?}",
                self.name
            ),
        }
    }
}

fn number(s: &Scalar) -> Result<f64> {
    match s {
        Scalar::Number(x) if x.is_finite() => Ok(*x),
        Scalar::Number(x) => bail!("value {x} is not finite"),
        Scalar::Bool(b) => Ok(f64::from(u8::from(*b))),
        Scalar::Text(t) => t
            .parse()
            .map_err(|_| anyhow!("expected a number, got {t:?}")),
    }
}

/// A `key=value` global parameter given on the command line (`--param density=0.5`).
pub fn parse_param(text: &str) -> Result<(String, Setting)> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| anyhow!("--param {text:?}: expected key=value"))?;
    let scalar: Scalar =
        serde_norway::from_str(value).map_err(|e| anyhow!("--param {text:?}: {e}"))?;
    Ok((
        key.trim().to_string(),
        Setting::Plain(ScalarOrGradient::Scalar(scalar)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(x: f64) -> Scalar {
        Scalar::Number(x)
    }

    #[test]
    fn gradients_interpolate_like_mergekit() {
        let g = ScalarOrGradient::Gradient(vec![num(0.0), num(0.5), num(1.0)]);
        for (t, want) in [(0.0, 0.0), (0.25, 0.25), (0.5, 0.5), (0.9, 0.9), (1.0, 1.0)] {
            assert_eq!(evaluate_gradient(&g, t), num(want), "t={t}");
        }
        let g = ScalarOrGradient::Gradient(vec![num(1.0), num(0.0)]);
        assert_eq!(evaluate_gradient(&g, 0.75), num(0.25));
    }

    #[test]
    fn layer_positions() {
        let n = 22;
        assert_eq!(layer_t("model.layers.0.mlp.up_proj.weight", n), 0.0);
        assert_eq!(layer_t("model.layers.21.mlp.up_proj.weight", n), 1.0);
        assert_eq!(
            layer_t("model.layers.7.self_attn.q_proj.weight", n),
            7.0 / 21.0
        );
        assert_eq!(layer_t("model.embed_tokens.weight", n), 0.0);
        assert_eq!(layer_t("lm_head.weight", n), 0.0);
        assert_eq!(layer_t("model.layers.0.mlp.up_proj.weight", 1), 1.0);
        assert_eq!(layer_index("transformer.h.3.attn.c_attn.weight"), Some(3));
        assert_eq!(layer_index("model.norm.weight"), None);
    }
}
