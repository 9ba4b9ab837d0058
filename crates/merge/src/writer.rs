//! Streaming safetensors output. All shapes and dtypes are known before any value is
//! computed, so each file's header is written first and tensors follow one at a time:
//! memory stays at one tensor, never a whole shard or model.

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint::dtype_width;
use crate::direct::OutputFile;

/// One tensor the output will hold.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * dtype_width(self.dtype)
    }
}

/// A safetensors file written header-first; tensors must arrive in `specs` order.
pub struct StreamWriter {
    path: PathBuf,
    out: OutputFile,
    specs: Vec<TensorSpec>,
    next: usize,
    sync: bool,
}

impl StreamWriter {
    /// `sync`: fsync on `finish` (durability across power loss, at disk speed).
    pub fn create(
        path: &Path,
        specs: Vec<TensorSpec>,
        metadata: &HashMap<String, String>,
        sync: bool,
    ) -> Result<Self> {
        let header = header_bytes(&specs, metadata)?;
        let mut out =
            OutputFile::create(path).with_context(|| format!("creating {}", path.display()))?;
        out.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|_| out.write_all(&header))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            out,
            specs,
            next: 0,
            sync,
        })
    }

    /// Append the next tensor's raw bytes.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let spec = self
            .specs
            .get(self.next)
            .ok_or_else(|| anyhow!("{}: more tensors written than planned", self.path.display()))?;
        if spec.name != name || spec.byte_len() != bytes.len() {
            bail!(
                "{}: expected tensor {} ({} bytes) next, got {name} ({} bytes)",
                self.path.display(),
                spec.name,
                spec.byte_len(),
                bytes.len()
            );
        }
        self.out
            .write_all(bytes)
            .with_context(|| format!("writing tensor {name} to {}", self.path.display()))?;
        self.next += 1;
        Ok(())
    }

    /// Flush (and fsync if asked); refuses a file with tensors still missing.
    pub fn finish(self) -> Result<()> {
        if self.next != self.specs.len() {
            bail!(
                "{}: only {} of {} tensors written",
                self.path.display(),
                self.next,
                self.specs.len()
            );
        }
        let file = self
            .out
            .finish()
            .with_context(|| format!("writing {}", self.path.display()))?;
        if self.sync {
            file.sync_all()
                .with_context(|| format!("syncing {}", self.path.display()))?;
        }
        Ok(())
    }
}

/// The JSON header, padded with spaces to a multiple of 8 bytes as the format asks.
fn header_bytes(specs: &[TensorSpec], metadata: &HashMap<String, String>) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: BTreeMap<_, _> = metadata.iter().collect();
        header.insert("__metadata__".into(), serde_json::to_value(meta)?);
    }
    let mut offset = 0usize;
    for spec in specs {
        let len = spec.byte_len();
        header.insert(
            spec.name.clone(),
            serde_json::json!({
                "dtype": dtype_tag(spec.dtype),
                "shape": spec.shape,
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut bytes = serde_json::to_vec(&header)?;
    while bytes.len() % 8 != 0 {
        bytes.push(b' ');
    }
    Ok(bytes)
}

fn dtype_tag(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::BF16 => "BF16",
        Dtype::F16 => "F16",
        Dtype::F32 => "F32",
        Dtype::F64 => "F64",
        Dtype::I64 => "I64",
        Dtype::I32 => "I32",
        Dtype::I16 => "I16",
        Dtype::I8 => "I8",
        Dtype::U8 => "U8",
        Dtype::U16 => "U16",
        Dtype::U32 => "U32",
        Dtype::U64 => "U64",
        Dtype::BOOL => "BOOL",
        _ => "F32",
    }
}

/// Split tensors into shards of at most `max_bytes` each (a tensor larger than the
/// budget gets a shard of its own), named the way `transformers` names them.
pub fn plan_shards(specs: &[TensorSpec], max_bytes: u64) -> Vec<(String, Vec<TensorSpec>)> {
    let mut groups: Vec<Vec<TensorSpec>> = Vec::new();
    let mut current: Vec<TensorSpec> = Vec::new();
    let mut current_bytes = 0u64;
    for spec in specs {
        let len = spec.byte_len() as u64;
        if !current.is_empty() && current_bytes + len > max_bytes {
            groups.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += len;
        current.push(spec.clone());
    }
    if !current.is_empty() {
        groups.push(current);
    }
    let n = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let name = if n == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
            };
            (name, g)
        })
        .collect()
}

/// Writes a model directory's weights as shards plus `model.safetensors.index.json`
/// (the index only when there is more than one shard, as `transformers` does).
pub struct ShardedWriter {
    dir: PathBuf,
    shards: Vec<(String, Vec<TensorSpec>)>,
    metadata: HashMap<String, String>,
    current: Option<(usize, StreamWriter)>,
    /// tensor name → shard index
    shard_of: HashMap<String, usize>,
    total_bytes: u64,
    sync: bool,
}

impl ShardedWriter {
    pub fn new(
        dir: &Path,
        specs: &[TensorSpec],
        max_shard_bytes: u64,
        metadata: HashMap<String, String>,
        sync: bool,
    ) -> Self {
        let shards = plan_shards(specs, max_shard_bytes);
        let shard_of = shards
            .iter()
            .enumerate()
            .flat_map(|(i, (_, g))| g.iter().map(move |s| (s.name.clone(), i)))
            .collect();
        Self {
            dir: dir.to_path_buf(),
            shards,
            metadata,
            current: None,
            shard_of,
            total_bytes: specs.iter().map(|s| s.byte_len() as u64).sum(),
            sync,
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Append a tensor; tensors must arrive in the order of the specs given to `new`.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let shard = *self
            .shard_of
            .get(name)
            .ok_or_else(|| anyhow!("tensor {name} was not planned for output"))?;
        let switch = match &self.current {
            Some((i, _)) => *i != shard,
            None => true,
        };
        if switch {
            if let Some((_, w)) = self.current.take() {
                w.finish()?;
            }
            let (file, specs) = &self.shards[shard];
            let w = StreamWriter::create(
                &self.dir.join(file),
                specs.clone(),
                &self.metadata,
                self.sync,
            )?;
            self.current = Some((shard, w));
        }
        self.current
            .as_mut()
            .expect("writer opened above")
            .1
            .write_tensor(name, bytes)
    }

    /// Close the last shard and write the index when sharded.
    pub fn finish(mut self) -> Result<Vec<String>> {
        if let Some((_, w)) = self.current.take() {
            w.finish()?;
        }
        let files: Vec<String> = self.shards.iter().map(|(f, _)| f.clone()).collect();
        if self.shards.len() > 1 {
            let weight_map: BTreeMap<&str, &str> = self
                .shards
                .iter()
                .flat_map(|(f, g)| g.iter().map(move |s| (s.name.as_str(), f.as_str())))
                .collect();
            let index = serde_json::json!({
                "metadata": {"total_size": self.total_bytes},
                "weight_map": weight_map,
            });
            fisherkit_common::atomic::write_json(
                &self.dir.join("model.safetensors.index.json"),
                &index,
            )?;
        }
        Ok(files)
    }
}

/// Parse a byte budget: `5GB`, `500MB`, `2GiB`, `1.5G`, or a plain byte count.
/// Decimal units follow `transformers` (`5GB` = 5·10⁹ bytes).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| anyhow!("invalid size {text:?} (expected e.g. 5GB, 500MB, 2GiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => bail!("invalid size unit in {text:?} (expected B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    let bytes = value * scale;
    if bytes < 1.0 {
        bail!("size {text:?} must be at least one byte");
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5M").unwrap(), 1_500_000);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("GB").is_err());
    }

    #[test]
    fn shards_respect_the_budget() {
        let spec = |n: &str, len: usize| TensorSpec {
            name: n.into(),
            dtype: Dtype::F32,
            shape: vec![len],
        };
        let specs = vec![spec("a", 10), spec("b", 10), spec("c", 30), spec("d", 5)];
        let shards = plan_shards(&specs, 80);
        let names: Vec<Vec<&str>> = shards
            .iter()
            .map(|(_, g)| g.iter().map(|s| s.name.as_str()).collect())
            .collect();
        // a+b = 80 bytes fit; c (120 bytes) exceeds the budget and gets a shard alone.
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
        assert_eq!(shards[0].0, "model-00001-of-00003.safetensors");
        assert_eq!(plan_shards(&specs, 1 << 20)[0].0, "model.safetensors");
    }
}
