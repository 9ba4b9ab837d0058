//! What an NPEFF component means: its top examples (with the text they came from, their
//! labels and the model's predictions) and where in the model its parameter mass lies.
//! Model-free: everything is read from the decomposition, the PEF directory and the data
//! file the PEFs were computed from.

use crate::fit::Decomposition;
use crate::pef::{ExampleExtras, ParameterEntry, PefDir, PefKind, Provenance};
use anyhow::{ensure, Context, Result};
use fisherkit_common::jsonl;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A decomposition with the PEFs it describes, checked against each other.
pub struct Analysed {
    pub decomposition: Decomposition,
    pub pefs: PefDir,
    /// Coefficients of the PEF directory's examples: examples × r.
    pub w: Vec<f32>,
    /// Labels, predictions, logits and source lines of the PEF directory's examples.
    pub extras: Vec<ExampleExtras>,
    pub provenance: Provenance,
}

impl Analysed {
    /// Open `decomposition` and `pefs`; W is the decomposition's own unless `coeffs` (an
    /// output of `npeff coeffs` for these PEFs) is given.
    pub fn open(decomposition: &Path, pefs: &Path, coeffs: Option<&Path>) -> Result<Self> {
        let dec = Decomposition::load(decomposition)?;
        let dir = PefDir::open(pefs)?;
        dec.check_against(&dir.meta, pefs, decomposition)?;
        let r = dec.components();
        let n = dir.meta.n_examples;
        let (w, source) = match coeffs {
            Some(path) => {
                let file = fisherkit_common::st::MappedFile::open(path)?;
                let (shape, w) = file.read_f32("W")?;
                ensure!(
                    shape.len() == 2 && shape[1] == r,
                    "{}: tensor `W` has shape {shape:?}, expected [examples, {r}] (the decomposition has {r} components)",
                    path.display()
                );
                (w, path.to_path_buf())
            }
            None => (dec.w.clone(), decomposition.to_path_buf()),
        };
        ensure!(
            w.len() == n * r,
            "{} holds coefficients of {} examples but {} holds {n}: give --coeffs from `npeff coeffs --pefs {}`",
            source.display(),
            w.len() / r.max(1),
            pefs.display(),
            pefs.display()
        );
        let mut extras = Vec::with_capacity(n);
        for s in 0..dir.n_shards() {
            extras.extend(dir.read_shard(s, extras.len())?.extras);
        }
        let provenance = Provenance::of(&dir.meta);
        Ok(Self {
            decomposition: dec,
            pefs: dir,
            w,
            extras,
            provenance,
        })
    }

    pub fn components(&self) -> usize {
        self.decomposition.components()
    }

    pub fn n_examples(&self) -> usize {
        self.extras.len()
    }

    /// Coefficient of example `i` on component `j`.
    pub fn coefficient(&self, i: usize, j: usize) -> f32 {
        self.w[i * self.components() + j]
    }

    /// The examples with the largest positive coefficients on component `j`, largest
    /// first (ties by example index), at most `top`.
    pub fn top_examples(&self, j: usize, top: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.n_examples())
            .filter(|&i| self.coefficient(i, j) > 0.0)
            .collect();
        order.sort_by(|&a, &b| {
            self.coefficient(b, j)
                .total_cmp(&self.coefficient(a, j))
                .then(a.cmp(&b))
        });
        order.truncate(top);
        order
    }

    /// Component `j`'s dictionary row as parameter mass over the kept columns: h for
    /// D-NPEFF (non-negative), g² for LRM-NPEFF; normalised to sum 1.
    pub fn parameter_mass(&self, j: usize) -> Vec<f64> {
        let dec = &self.decomposition;
        let m = dec.kept.len();
        let row = &dec.dict[j * m..(j + 1) * m];
        let mass: Vec<f64> = match dec.info.kind {
            PefKind::Diagonal => row.iter().map(|&h| f64::from(h.max(0.0))).collect(),
            PefKind::LowRank => row.iter().map(|&g| f64::from(g) * f64::from(g)).collect(),
        };
        let total: f64 = mass.iter().sum();
        if total > 0.0 {
            mass.iter().map(|v| v / total).collect()
        } else {
            mass
        }
    }

    /// The component's parameter mass per tensor, per layer and per sub-layer kind;
    /// `None` when the PEFs carry no parameter table (synthetic PEFs).
    pub fn attribution(&self, j: usize) -> Option<Attribution> {
        let table = &self.pefs.meta.parameters;
        if table.is_empty() {
            return None;
        }
        let mass = self.parameter_mass(j);
        Some(Attribution::of(table, &self.decomposition.kept, &mass))
    }
}

/// Parameter mass of a component, grouped three ways. Each grouping sums to 1.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Attribution {
    /// Tensors with non-zero mass, largest first.
    pub by_tensor: Vec<Share>,
    /// Layers in model order (`encoder.3`, `decoder.0`, `layer.5`; `outside layers`
    /// for embeddings, final norms and heads).
    pub by_layer: Vec<Share>,
    /// Sub-layer kinds in model order ([`sublayer_kind`]).
    pub by_kind: Vec<Share>,
}

/// A named share of a whole.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Share {
    pub name: String,
    pub share: f64,
}

impl Attribution {
    /// Group `mass` (one value per column of `kept`, flat parameter indices into
    /// `table`) by tensor, layer and sub-layer kind.
    pub fn of(table: &[ParameterEntry], kept: &[u64], mass: &[f64]) -> Self {
        let mut per_tensor = vec![0f64; table.len()];
        for (&column, &m) in kept.iter().zip(mass) {
            if let Some(t) = tensor_of(table, column) {
                per_tensor[t] += m;
            }
        }
        let grouped = |key: &dyn Fn(&str) -> String| {
            let mut groups: Vec<Share> = Vec::new();
            for (entry, &m) in table.iter().zip(&per_tensor) {
                let name = key(&entry.name);
                match groups.iter_mut().find(|g| g.name == name) {
                    Some(g) => g.share += m,
                    None => groups.push(Share { name, share: m }),
                }
            }
            groups
        };
        let mut by_tensor: Vec<Share> = table
            .iter()
            .zip(&per_tensor)
            .filter(|(_, &m)| m > 0.0)
            .map(|(e, &m)| Share {
                name: e.name.clone(),
                share: m,
            })
            .collect();
        by_tensor.sort_by(|a, b| b.share.total_cmp(&a.share));
        Self {
            by_tensor,
            by_layer: grouped(&|name| layer_of(name).unwrap_or_else(|| OUTSIDE_LAYERS.into())),
            by_kind: grouped(&|name| sublayer_kind(name).to_string()),
        }
    }
}

const OUTSIDE_LAYERS: &str = "outside layers";

/// The table entry holding flat parameter index `flat` (entries are contiguous and in
/// offset order, as the PEF reader validates).
pub fn tensor_of(table: &[ParameterEntry], flat: u64) -> Option<usize> {
    let t = table.partition_point(|e| e.offset <= flat).checked_sub(1)?;
    let size: u64 = table[t].shape.iter().product::<usize>() as u64;
    (flat < table[t].offset + size).then_some(t)
}

/// The layer a parameter belongs to, from its checkpoint name: the first
/// `block|blocks|layer|layers|h.<n>` component, prefixed by the stack (`encoder`,
/// `decoder`) when the name has one. T5 `encoder.block.3.layer.1.…` → `encoder.3`,
/// BERT `bert.encoder.layer.5.…` → `encoder.5`, Llama `model.layers.2.…` → `layer.2`.
pub fn layer_of(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let at = parts.windows(2).position(|w| {
        matches!(w[0], "block" | "blocks" | "layer" | "layers" | "h")
            && w[1].parse::<usize>().is_ok()
    })?;
    let stack = parts[..at]
        .iter()
        .rev()
        .find(|p| matches!(**p, "encoder" | "decoder"));
    Some(match stack {
        Some(stack) => format!("{stack}.{}", parts[at + 1]),
        None => format!("layer.{}", parts[at + 1]),
    })
}

/// The kind of sub-layer a parameter belongs to, from its checkpoint name (T5, BERT,
/// RoBERTa and Llama names): `norm`, `cross_attention`, `self_attention`,
/// `feed_forward` (mixture-of-experts routers and experts included), `embedding`,
/// `head` (LM head, classifier, pooler) or `other`.
pub fn sublayer_kind(name: &str) -> &'static str {
    let n = name.to_ascii_lowercase();
    let has = |keys: &[&str]| keys.iter().any(|k| n.contains(k));
    if has(&["norm"]) {
        "norm"
    } else if has(&[
        "encdecattention",
        "crossattention",
        "encoder_attn",
        "cross_attn",
    ]) {
        "cross_attention"
    } else if has(&["attention", "self_attn", "attn"]) {
        "self_attention"
    } else if has(&[
        "densereludense",
        "mlp",
        "intermediate",
        ".output.dense",
        "feed_forward",
        "ffn",
    ]) {
        "feed_forward"
    } else if has(&["embed", "shared", "wte", "wpe"]) {
        "embedding"
    } else if has(&["lm_head", "classifier", "pooler", "score", "head"]) {
        "head"
    } else {
        "other"
    }
}

/// The data rows the PEFs were computed from, by line (text shown next to examples).
pub struct SourceRows {
    pub path: PathBuf,
    rows: HashMap<u64, Value>,
}

impl SourceRows {
    /// Read `lines` of the producer's data file (`data` overrides the recorded path). The
    /// file must still hash to what the PEFs recorded: otherwise the lines may point at
    /// other examples, and the texts are left out with a note.
    pub fn read(
        provenance: &Provenance,
        data: Option<&Path>,
        lines: &[u64],
        notes: &mut Vec<String>,
    ) -> Result<Option<Self>> {
        let Some(path) = data
            .map(Path::to_path_buf)
            .or_else(|| provenance.data.as_ref().map(PathBuf::from))
        else {
            return Ok(None);
        };
        let Ok(bytes) = std::fs::read(&path) else {
            notes.push(format!(
                "{}: cannot be read; example texts are left out (give --data)",
                path.display()
            ));
            return Ok(None);
        };
        let hash = fisherkit_common::data_hash(&bytes);
        if provenance.data_hash.as_ref().is_some_and(|h| *h != hash) {
            notes.push(format!(
                "{}: changed since the PEFs were computed ({hash}, recorded {}); example texts are left out",
                path.display(),
                provenance.data_hash.as_deref().unwrap_or("")
            ));
            return Ok(None);
        }
        let wanted: std::collections::HashSet<u64> = lines.iter().copied().collect();
        let mut rows = HashMap::new();
        for line in jsonl::iter::<Value>(&path)? {
            let line = line?;
            if wanted.contains(&(line.line_no as u64)) {
                rows.insert(line.line_no as u64, line.value);
            }
        }
        Ok(Some(Self { path, rows }))
    }

    /// The shown fields of the row at `line`: input (`input`, `text` or `input_ids`),
    /// `text_pair` and target (`target` or `label`).
    pub fn texts(&self, line: u64) -> ExampleText {
        let Some(row) = self.rows.get(&line) else {
            return ExampleText::default();
        };
        let field = |keys: &[&str]| {
            keys.iter().find_map(|k| match row.get(*k) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => None,
                Some(other) => Some(other.to_string()),
            })
        };
        ExampleText {
            input: field(&["input", "text", "input_ids"]),
            text_pair: field(&["text_pair"]),
            target: field(&["target", "label", "target_ids"]),
        }
    }
}

/// What the data file says about an example.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct ExampleText {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_pair: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// One of a component's top examples.
#[derive(Serialize, Clone, Debug)]
pub struct TopExample {
    /// Index of the example in the PEF directory.
    pub example: usize,
    pub coefficient: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(flatten)]
    pub text: ExampleText,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
}

/// What `npeff top` reports about one component.
#[derive(Serialize, Clone, Debug)]
pub struct ComponentTop {
    pub component: usize,
    /// Examples with a positive coefficient on this component.
    pub active_examples: usize,
    pub top_examples: Vec<TopExample>,
    /// Fraction of the top examples with each label (labels in class order).
    pub label_fractions: Vec<Share>,
    /// Fraction of the top examples the model predicts correctly (when the PEFs carry
    /// labels and predictions).
    pub correct_fraction: Option<f64>,
    pub attribution: Option<Attribution>,
}

/// The `npeff top` report.
#[derive(Serialize, Clone, Debug)]
pub struct TopReport {
    pub decomposition: PathBuf,
    pub pefs: PathBuf,
    pub kind: PefKind,
    pub examples: usize,
    pub components: usize,
    pub label_names: Option<Vec<String>>,
    /// The data file the texts were read from.
    pub data: Option<PathBuf>,
    /// What could not be shown, and why.
    pub notes: Vec<String>,
    pub per_component: Vec<ComponentTop>,
}

/// Settings of `npeff top`.
pub struct TopOptions {
    /// Top examples per component.
    pub top: usize,
    /// Components to report (all when empty).
    pub components: Vec<usize>,
    /// The data file to read texts from instead of the one the PEFs recorded.
    pub data: Option<PathBuf>,
}

impl Analysed {
    /// Components named in `wanted` (all when empty), refusing indices out of range.
    pub fn select_components(&self, wanted: &[usize]) -> Result<Vec<usize>> {
        let r = self.components();
        if wanted.is_empty() {
            return Ok((0..r).collect());
        }
        for &j in wanted {
            ensure!(
                j < r,
                "component {j} is out of range: the decomposition has {r} components (0..{})",
                r - 1
            );
        }
        Ok(wanted.to_vec())
    }

    /// A label index as its name (the index itself when the PEFs name no labels).
    fn label_name(&self, label: i64) -> String {
        self.provenance
            .label_names
            .as_ref()
            .and_then(|names| usize::try_from(label).ok().and_then(|l| names.get(l)))
            .cloned()
            .unwrap_or_else(|| label.to_string())
    }

    /// The `npeff top` report.
    pub fn top(
        &self,
        options: &TopOptions,
        decomposition: &Path,
        pefs: &Path,
    ) -> Result<TopReport> {
        ensure!(options.top > 0, "--top must be positive");
        let components = self.select_components(&options.components)?;
        let tops: Vec<Vec<usize>> = components
            .iter()
            .map(|&j| self.top_examples(j, options.top))
            .collect();
        let lines: Vec<u64> = tops
            .iter()
            .flatten()
            .filter_map(|&i| self.extras[i].source_line)
            .collect();
        let mut notes = Vec::new();
        let source = if lines.is_empty() {
            None
        } else {
            SourceRows::read(
                &self.provenance,
                options.data.as_deref(),
                &lines,
                &mut notes,
            )?
        };
        if self.pefs.meta.parameters.is_empty() {
            notes.push("the PEFs carry no parameter table: no attribution".into());
        }
        let per_component = components
            .iter()
            .zip(&tops)
            .map(|(&j, top)| self.component_top(j, top, source.as_ref()))
            .collect();
        Ok(TopReport {
            decomposition: decomposition.to_path_buf(),
            pefs: pefs.to_path_buf(),
            kind: self.decomposition.info.kind,
            examples: self.n_examples(),
            components: self.components(),
            label_names: self.provenance.label_names.clone(),
            data: source.map(|s| s.path),
            notes,
            per_component,
        })
    }

    fn component_top(&self, j: usize, top: &[usize], source: Option<&SourceRows>) -> ComponentTop {
        let top_examples: Vec<TopExample> = top
            .iter()
            .map(|&i| {
                let x = &self.extras[i];
                TopExample {
                    example: i,
                    coefficient: self.coefficient(i, j),
                    line: x.source_line,
                    text: match (source, x.source_line) {
                        (Some(s), Some(line)) => s.texts(line),
                        _ => ExampleText::default(),
                    },
                    label: x.label.map(|l| self.label_name(l)),
                    prediction: x.prediction.map(|p| self.label_name(p)),
                    correct: x.label.zip(x.prediction).map(|(l, p)| l == p),
                }
            })
            .collect();
        let n = top.len().max(1) as f64;
        let mut label_fractions: Vec<(i64, f64)> = Vec::new();
        for &i in top {
            if let Some(l) = self.extras[i].label {
                match label_fractions.iter_mut().find(|(k, _)| *k == l) {
                    Some((_, f)) => *f += 1.0 / n,
                    None => label_fractions.push((l, 1.0 / n)),
                }
            }
        }
        label_fractions.sort_by_key(|(l, _)| *l);
        let judged: Vec<bool> = top_examples.iter().filter_map(|e| e.correct).collect();
        ComponentTop {
            component: j,
            active_examples: (0..self.n_examples())
                .filter(|&i| self.coefficient(i, j) > 0.0)
                .count(),
            top_examples,
            label_fractions: label_fractions
                .into_iter()
                .map(|(l, f)| Share {
                    name: self.label_name(l),
                    share: f,
                })
                .collect(),
            correct_fraction: (!judged.is_empty())
                .then(|| judged.iter().filter(|&&c| c).count() as f64 / judged.len() as f64),
            attribution: self.attribution(j),
        }
    }
}

/// Parse a component list `0,3,5` (as `--components` takes it).
pub fn parse_components(list: &str) -> Result<Vec<usize>> {
    list.split(',')
        .map(|c| {
            c.trim()
                .parse::<usize>()
                .with_context(|| format!("--components: {c:?} is not a component index"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, shape: &[usize], offset: u64) -> ParameterEntry {
        ParameterEntry {
            name: name.into(),
            shape: shape.to_vec(),
            offset,
        }
    }

    #[test]
    fn layers_and_kinds_of_real_checkpoint_names() {
        let cases = [
            ("shared.weight", None, "embedding"),
            (
                "encoder.block.3.layer.1.DenseReluDense.wi.weight",
                Some("encoder.3"),
                "feed_forward",
            ),
            (
                "decoder.block.0.layer.1.EncDecAttention.q.weight",
                Some("decoder.0"),
                "cross_attention",
            ),
            (
                "decoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
                Some("decoder.1"),
                "self_attention",
            ),
            (
                "encoder.block.2.layer.0.layer_norm.weight",
                Some("encoder.2"),
                "norm",
            ),
            ("encoder.final_layer_norm.weight", None, "norm"),
            (
                "bert.encoder.layer.5.attention.output.dense.weight",
                Some("encoder.5"),
                "self_attention",
            ),
            (
                "bert.encoder.layer.5.output.dense.weight",
                Some("encoder.5"),
                "feed_forward",
            ),
            (
                "bert.encoder.layer.5.intermediate.dense.bias",
                Some("encoder.5"),
                "feed_forward",
            ),
            ("bert.embeddings.LayerNorm.weight", None, "norm"),
            ("bert.pooler.dense.weight", None, "head"),
            ("classifier.out_proj.weight", None, "head"),
            (
                "model.layers.2.self_attn.q_proj.weight",
                Some("layer.2"),
                "self_attention",
            ),
            (
                "model.layers.2.mlp.gate_proj.weight",
                Some("layer.2"),
                "feed_forward",
            ),
            ("model.embed_tokens.weight", None, "embedding"),
            ("lm_head.weight", None, "head"),
            (
                "encoder.block.1.layer.1.mlp.router.classifier.weight",
                Some("encoder.1"),
                "feed_forward",
            ),
        ];
        for (name, layer, kind) in cases {
            assert_eq!(layer_of(name).as_deref(), layer, "{name}");
            assert_eq!(sublayer_kind(name), kind, "{name}");
        }
    }

    #[test]
    fn attribution_sums_to_one_and_matches_the_table_by_hand() {
        // Three tensors: [0, 4), [4, 10), [10, 12).
        let table = [
            entry("shared.weight", &[2, 2], 0),
            entry("encoder.block.0.layer.0.SelfAttention.q.weight", &[2, 3], 4),
            entry("encoder.block.0.layer.1.DenseReluDense.wi.weight", &[2], 10),
        ];
        for (flat, want) in [
            (0, Some(0)),
            (3, Some(0)),
            (4, Some(1)),
            (9, Some(1)),
            (11, Some(2)),
            (12, None),
        ] {
            assert_eq!(tensor_of(&table, flat), want, "index {flat}");
        }
        let kept = [1, 5, 6, 11];
        let mass = [0.1, 0.2, 0.3, 0.4];
        let a = Attribution::of(&table, &kept, &mass);
        let names: Vec<(&str, f64)> = a
            .by_tensor
            .iter()
            .map(|s| (s.name.as_str(), s.share))
            .collect();
        assert_eq!(names.len(), 3);
        assert_eq!(names[0].0, "encoder.block.0.layer.0.SelfAttention.q.weight");
        assert!((names[0].1 - 0.5).abs() < 1e-12);
        assert!((names[1].1 - 0.4).abs() < 1e-12 && (names[2].1 - 0.1).abs() < 1e-12);
        let layers: Vec<(&str, f64)> = a
            .by_layer
            .iter()
            .map(|s| (s.name.as_str(), s.share))
            .collect();
        assert_eq!(layers[0].0, OUTSIDE_LAYERS);
        assert!((layers[0].1 - 0.1).abs() < 1e-12);
        assert_eq!(layers[1].0, "encoder.0");
        assert!((layers[1].1 - 0.9).abs() < 1e-12);
        let kinds: Vec<&str> = a.by_kind.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(kinds, ["embedding", "self_attention", "feed_forward"]);
        for grouping in [&a.by_tensor, &a.by_layer, &a.by_kind] {
            let total: f64 = grouping.iter().map(|s| s.share).sum();
            assert!((total - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn component_lists_parse_and_refuse_junk() {
        assert_eq!(parse_components("0, 3,5").unwrap(), vec![0, 3, 5]);
        assert!(parse_components("1,x")
            .unwrap_err()
            .to_string()
            .contains("\"x\""));
    }
}
