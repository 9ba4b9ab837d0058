//! The fisherkit Fisher file: a safetensors file with the model's tensor names, every
//! tensor f32 (Fisher values near 1e-8 underflow in f16/bf16), and `__metadata__`
//! recording how it was computed so it can be published next to a model.
//!
//! Metadata keys (all values are strings, as safetensors requires):
//! - `format` = `fisherkit.fisher`, `format_version` = `1`
//! - `examples`: number of examples N averaged over (integer ≥ 1)
//! - `mode`: `exact` | `sampled` | `empirical`
//! - `data_hash`: hash of the data the Fisher was computed on (free-form hex)
//! - `seed`: RNG seed (integer) used for sampling / example selection
//! - optional `model` (path or id of the model), `created_by`, and any extra `key=value`.

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use crate::checkpoint::Checkpoint;
use crate::writer::{StreamWriter, TensorSpec};

pub const FORMAT: &str = "fisherkit.fisher";
pub const FORMAT_VERSION: &str = "1";

/// How the diagonal Fisher was estimated (see the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FisherMode {
    /// Σ_c p(c|x) (∇ log p(c|x))², exact expectation over the model's predictions.
    Exact,
    /// y ~ p(·|x), (∇ log p(y|x))².
    Sampled,
    /// True labels: (∇ log p(y_true|x))² — the "empirical Fisher", labelled as such.
    Empirical,
}

impl FisherMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FisherMode::Exact => "exact",
            FisherMode::Sampled => "sampled",
            FisherMode::Empirical => "empirical",
        }
    }
}

impl std::str::FromStr for FisherMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "exact" => FisherMode::Exact,
            "sampled" => FisherMode::Sampled,
            "empirical" => FisherMode::Empirical,
            other => bail!("unknown Fisher mode {other:?} (expected exact, sampled or empirical)"),
        })
    }
}

/// What a Fisher file records about its computation.
#[derive(Debug, Clone, PartialEq)]
pub struct FisherMeta {
    pub examples: u64,
    pub mode: FisherMode,
    pub data_hash: String,
    pub seed: u64,
    pub model: Option<String>,
    /// Further settings (e.g. `max_length`, `dtype`), stored verbatim.
    pub extra: BTreeMap<String, String>,
}

const RESERVED: [&str; 8] = [
    "format",
    "format_version",
    "examples",
    "mode",
    "data_hash",
    "seed",
    "model",
    "created_by",
];

impl FisherMeta {
    fn to_header(&self) -> Result<HashMap<String, String>> {
        if self.examples == 0 {
            bail!("a Fisher must average over at least one example");
        }
        let mut m: HashMap<String, String> = HashMap::new();
        for (k, v) in &self.extra {
            if RESERVED.contains(&k.as_str()) {
                bail!("extra Fisher metadata key {k:?} is reserved");
            }
            m.insert(k.clone(), v.clone());
        }
        m.insert("format".into(), FORMAT.into());
        m.insert("format_version".into(), FORMAT_VERSION.into());
        m.insert("examples".into(), self.examples.to_string());
        m.insert("mode".into(), self.mode.as_str().into());
        m.insert("data_hash".into(), self.data_hash.clone());
        m.insert("seed".into(), self.seed.to_string());
        m.insert(
            "created_by".into(),
            format!("fisherkit {}", env!("CARGO_PKG_VERSION")),
        );
        if let Some(model) = &self.model {
            m.insert("model".into(), model.clone());
        }
        Ok(m)
    }

    fn from_header(path: &Path, m: &HashMap<String, String>) -> Result<Self> {
        let get = |k: &str| {
            m.get(k).ok_or_else(|| {
                anyhow!(
                    "{}: not a fisherkit Fisher file: metadata key {k:?} missing",
                    path.display()
                )
            })
        };
        if get("format")? != FORMAT {
            bail!(
                "{}: metadata format is {:?}, expected {FORMAT:?}",
                path.display(),
                m["format"]
            );
        }
        if get("format_version")? != FORMAT_VERSION {
            bail!(
                "{}: Fisher format version {:?} is not supported (this build reads {FORMAT_VERSION})",
                path.display(),
                m["format_version"]
            );
        }
        let int = |k: &str| -> Result<u64> {
            get(k)?.parse().map_err(|_| {
                anyhow!(
                    "{}: metadata {k}={:?} is not an integer",
                    path.display(),
                    m[k]
                )
            })
        };
        let examples = int("examples")?;
        if examples == 0 {
            bail!("{}: metadata examples=0", path.display());
        }
        Ok(Self {
            examples,
            mode: get("mode")?
                .parse()
                .with_context(|| format!("{}: metadata mode", path.display()))?,
            data_hash: get("data_hash")?.clone(),
            seed: int("seed")?,
            model: m.get("model").cloned(),
            extra: m
                .iter()
                .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

/// A diagonal Fisher is a mean of squares: finite and non-negative.
pub fn valid_fisher_value(v: f32) -> bool {
    v.is_finite() && v >= 0.0
}

/// The safetensors `__metadata__` map for `meta`, for writers that stream a Fisher
/// too large to hold in memory (all tensors must be f32, values finite and ≥ 0).
pub fn header_for(meta: &FisherMeta) -> Result<HashMap<String, String>> {
    meta.to_header()
}

/// Write a Fisher file atomically: tensors in the given order, all f32.
/// Values must be finite and non-negative (a diagonal Fisher is a mean of squares).
pub fn write_fisher(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    meta: &FisherMeta,
) -> Result<()> {
    let header = meta.to_header()?;
    let mut seen = std::collections::HashSet::new();
    for (name, shape, values) in tensors {
        if !seen.insert(name) {
            bail!("Fisher tensor {name} given twice");
        }
        if shape.iter().product::<usize>() != values.len() {
            bail!(
                "Fisher tensor {name}: shape {shape:?} does not match {} values",
                values.len()
            );
        }
        if let Some(v) = values.iter().find(|v| !valid_fisher_value(**v)) {
            bail!("Fisher tensor {name} holds {v}; Fisher values must be finite and ≥ 0");
        }
    }
    let specs = tensors
        .iter()
        .map(|(name, shape, _)| TensorSpec {
            name: name.clone(),
            dtype: Dtype::F32,
            shape: shape.clone(),
        })
        .collect();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".fisher.")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut w = StreamWriter::create(tmp.path(), specs, &header, true)?;
    for (name, _, values) in tensors {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_tensor(name, &bytes)?;
    }
    w.finish()?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the temporary file to {}", path.display()))?;
    Ok(())
}

/// A validated Fisher file (or sharded Fisher directory): every tensor f32 and the
/// metadata complete. Values are checked lazily by the merge (and fully by `inspect`).
pub struct FisherFile {
    pub checkpoint: Checkpoint,
    pub meta: FisherMeta,
}

impl FisherFile {
    pub fn open(path: &Path) -> Result<Self> {
        let checkpoint = Checkpoint::open(path)?;
        let meta = FisherMeta::from_header(path, checkpoint.metadata())?;
        for name in checkpoint.names() {
            let t = checkpoint.tensor(name).expect("listed name");
            if t.dtype != Dtype::F32 {
                bail!(
                    "{}: Fisher tensor {name} is {:?}; Fisher files store f32",
                    path.display(),
                    t.dtype
                );
            }
        }
        Ok(Self { checkpoint, meta })
    }
}

/// Statistics of one Fisher tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorStats {
    pub name: String,
    pub shape: Vec<usize>,
    pub numel: usize,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub l2: f64,
    pub zeros: usize,
    pub negative: usize,
    pub non_finite: usize,
}

/// What `fisherkit fisher inspect` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FisherSummary {
    pub path: String,
    pub examples: u64,
    pub mode: String,
    pub data_hash: String,
    pub seed: u64,
    pub model: Option<String>,
    pub extra: BTreeMap<String, String>,
    pub tensors: Vec<TensorStats>,
    pub total: TensorStats,
}

/// Read every value of a Fisher file and summarise it per tensor and globally.
pub fn inspect(path: &Path) -> Result<FisherSummary> {
    let fisher = FisherFile::open(path)?;
    let ck = &fisher.checkpoint;
    let mut tensors = Vec::new();
    let mut total = TensorStats::empty("(all tensors)".into(), vec![]);
    let mut sum_sq = 0f64;
    for name in ck.names() {
        let (shape, values) = ck.read_f32(name)?;
        let stats = TensorStats::of(name.clone(), shape, &values);
        total.numel += stats.numel;
        total.zeros += stats.zeros;
        total.negative += stats.negative;
        total.non_finite += stats.non_finite;
        total.min = total.min.min(stats.min);
        total.max = total.max.max(stats.max);
        total.mean += stats.mean * stats.numel as f64;
        sum_sq += stats.l2 * stats.l2;
        tensors.push(stats);
        ck.release(ck.tensor(name).expect("listed name"));
    }
    total.mean /= total.numel.max(1) as f64;
    total.l2 = sum_sq.sqrt();
    total.shape = vec![total.numel];
    let m = fisher.meta;
    Ok(FisherSummary {
        path: path.display().to_string(),
        examples: m.examples,
        mode: m.mode.as_str().into(),
        data_hash: m.data_hash,
        seed: m.seed,
        model: m.model,
        extra: m.extra,
        tensors,
        total,
    })
}

impl TensorStats {
    fn empty(name: String, shape: Vec<usize>) -> Self {
        Self {
            name,
            shape,
            numel: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            l2: 0.0,
            zeros: 0,
            negative: 0,
            non_finite: 0,
        }
    }

    fn of(name: String, shape: Vec<usize>, values: &[f32]) -> Self {
        let mut s = Self::empty(name, shape);
        s.numel = values.len();
        let (mut sum, mut sq) = (0f64, 0f64);
        for &v in values {
            if !v.is_finite() {
                s.non_finite += 1;
                continue;
            }
            let x = v as f64;
            s.min = s.min.min(x);
            s.max = s.max.max(x);
            sum += x;
            sq += x * x;
            s.zeros += usize::from(v == 0.0);
            s.negative += usize::from(v < 0.0);
        }
        s.mean = sum / values.len().max(1) as f64;
        s.l2 = sq.sqrt();
        s
    }
}

impl fmt::Display for FisherSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Fisher file {}", self.path)?;
        writeln!(
            f,
            "  examples {}  mode {}  seed {}  data_hash {}",
            self.examples, self.mode, self.seed, self.data_hash
        )?;
        if let Some(m) = &self.model {
            writeln!(f, "  model {m}")?;
        }
        for (k, v) in &self.extra {
            writeln!(f, "  {k} = {v}")?;
        }
        writeln!(
            f,
            "{:<48} {:>14} {:>11} {:>11} {:>11} {:>11} {:>7}",
            "tensor", "shape", "min", "max", "mean", "l2", "zeros%"
        )?;
        for t in self.tensors.iter().chain(std::iter::once(&self.total)) {
            let shape = format!("{:?}", t.shape);
            writeln!(
                f,
                "{:<48} {:>14} {:>11.4e} {:>11.4e} {:>11.4e} {:>11.4e} {:>7.2}",
                t.name,
                shape,
                t.min,
                t.max,
                t.mean,
                t.l2,
                100.0 * t.zeros as f64 / t.numel.max(1) as f64
            )?;
        }
        let bad = self.total.negative + self.total.non_finite;
        if bad > 0 {
            writeln!(
                f,
                "WARNING: {} negative and {} non-finite values (a valid Fisher has neither)",
                self.total.negative, self.total.non_finite
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> FisherMeta {
        FisherMeta {
            examples: 4096,
            mode: FisherMode::Exact,
            data_hash: "abc123".into(),
            seed: 7,
            model: Some("t5-small".into()),
            extra: BTreeMap::from([("max_length".into(), "128".into())]),
        }
    }

    #[test]
    fn write_then_read_round_trips_values_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.safetensors");
        let tensors = vec![
            ("w".to_string(), vec![2, 2], vec![0.0, 1e-8, 2.0, 3.0]),
            ("b".to_string(), vec![2], vec![0.5, 0.25]),
        ];
        write_fisher(&path, &tensors, &meta()).unwrap();
        let f = FisherFile::open(&path).unwrap();
        assert_eq!(f.meta, meta());
        assert_eq!(
            f.checkpoint.read_f32("w").unwrap().1,
            vec![0.0, 1e-8, 2.0, 3.0]
        );
        let s = inspect(&path).unwrap();
        assert_eq!(s.total.numel, 6);
        assert_eq!(s.total.zeros, 1);
        assert_eq!(s.total.max, 3.0);
        let l2 = (1e-16f64 + 4.0 + 9.0 + 0.25 + 0.0625).sqrt();
        assert!((s.total.l2 - l2).abs() < 1e-6);
        assert!((s.tensors[1].mean - 0.375).abs() < 1e-12);
        let text = s.to_string();
        assert!(text.contains("examples 4096") && text.contains("max_length = 128"));
    }

    #[test]
    fn invalid_fishers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.safetensors");
        let neg = vec![("w".to_string(), vec![1], vec![-1.0])];
        assert!(write_fisher(&path, &neg, &meta())
            .unwrap_err()
            .to_string()
            .contains("≥ 0"));
        assert!(!path.exists());
        // A plain model file (no Fisher metadata) is not a Fisher file.
        fisherkit_common::st::write(
            &path,
            &[(
                "w".into(),
                fisherkit_common::st::OwnedTensor::f32(vec![1], &[1.0]),
            )],
            HashMap::new(),
        )
        .unwrap();
        let err = FisherFile::open(&path).err().unwrap().to_string();
        assert!(err.contains("not a fisherkit Fisher file"), "{err}");
    }
}
