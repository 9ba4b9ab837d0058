//! Memory-mapped checkpoints: a single `.safetensors` file, a directory holding
//! `model.safetensors`, a sharded directory with `model.safetensors.index.json`, or a
//! directory of `*.safetensors` files. Tensors are located once (name → file, dtype,
//! shape, byte range) and read chunk by chunk, converted to f32 on the fly.
//!
//! This maps files itself rather than through `common::st::MappedFile` because the
//! merge loop needs the raw mapping: to prefetch the next tensor (`MADV_WILLNEED`) and
//! to drop the pages of a finished tensor from the process (`MADV_DONTNEED`), which is
//! what keeps peak RSS near one tensor per input instead of the whole checkpoint.

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Where one tensor lives inside a checkpoint.
#[derive(Debug, Clone)]
pub struct TensorRef {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    file: usize,
    /// Byte range inside the mapped file (header included in the offset).
    start: usize,
    end: usize,
}

impl TensorRef {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Shard {
    path: PathBuf,
    mmap: memmap2::Mmap,
    metadata: HashMap<String, String>,
}

/// A set of memory-mapped safetensors files seen as one name-keyed checkpoint.
pub struct Checkpoint {
    root: PathBuf,
    shards: Vec<Shard>,
    tensors: HashMap<String, TensorRef>,
    /// Names in storage order (file order, then offset), which is also the output order.
    order: Vec<String>,
}

impl Checkpoint {
    /// Open a checkpoint file or directory.
    pub fn open(path: &Path) -> Result<Self> {
        let files = checkpoint_files(path)?;
        let mut ckpt = Checkpoint {
            root: path.to_path_buf(),
            shards: Vec::new(),
            tensors: HashMap::new(),
            order: Vec::new(),
        };
        for file in files {
            ckpt.add_file(&file)?;
        }
        if ckpt.tensors.is_empty() {
            bail!("{}: checkpoint holds no tensors", path.display());
        }
        Ok(ckpt)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the file is opened read-only and fisherkit never writes to a file it is
        // reading (outputs are written to a staging directory, then renamed).
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("memory-mapping {}", path.display()))?;
        let (header_len, meta) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
        let data_start = 8 + header_len;
        let file_idx = self.shards.len();
        let mut named: Vec<TensorRef> = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| TensorRef {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                file: file_idx,
                start: data_start + info.data_offsets.0,
                end: data_start + info.data_offsets.1,
            })
            .collect();
        named.sort_by_key(|t| t.start);
        for t in named {
            if t.end > mmap.len() {
                bail!(
                    "{}: tensor {} extends past the end of the file (truncated download?)",
                    path.display(),
                    t.name
                );
            }
            if let Some(prev) = self.tensors.get(&t.name) {
                bail!(
                    "tensor {} appears in both {} and {}",
                    t.name,
                    self.shards[prev.file].path.display(),
                    path.display()
                );
            }
            self.order.push(t.name.clone());
            self.tensors.insert(t.name.clone(), t);
        }
        self.shards.push(Shard {
            path: path.to_path_buf(),
            metadata: meta.metadata().clone().unwrap_or_default(),
            mmap,
        });
        Ok(())
    }

    /// The path this checkpoint was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding config and tokenizer files (the path itself, or its parent
    /// for a single file).
    pub fn dir(&self) -> PathBuf {
        if self.root.is_dir() {
            self.root.clone()
        } else {
            match self.root.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            }
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorRef> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor names in storage order.
    pub fn names(&self) -> &[String] {
        &self.order
    }

    /// `__metadata__` of the first file (shards of one checkpoint share it).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.shards[0].metadata
    }

    /// Path of the file that holds `t`.
    pub fn file_of(&self, t: &TensorRef) -> &Path {
        &self.shards[t.file].path
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, t: &TensorRef) -> &[u8] {
        &self.shards[t.file].mmap[t.start..t.end]
    }

    /// Ask the kernel to start reading a tensor we will need soon.
    pub fn prefetch(&self, t: &TensorRef) {
        let shard = &self.shards[t.file];
        // Advice is a hint: a failure only costs speed.
        let _ = shard.mmap.advise_range(
            memmap2::Advice::WillNeed,
            t.start,
            t.end.saturating_sub(t.start),
        );
    }

    /// Drop a finished tensor's pages from this process (they stay in the page cache).
    pub fn release(&self, t: &TensorRef) {
        let shard = &self.shards[t.file];
        // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED only discards
        // page-table entries; a later read re-faults identical bytes from the file.
        let _ = unsafe {
            shard.mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                t.start,
                t.end.saturating_sub(t.start),
            )
        };
    }

    /// Convert elements `range` of a float tensor to f32 into `out`.
    pub fn read_f32_range(&self, t: &TensorRef, offset: usize, out: &mut [f32]) {
        let width = dtype_width(t.dtype);
        let bytes = &self.bytes(t)[offset * width..(offset + out.len()) * width];
        decode_f32(t.dtype, bytes, out);
    }

    /// A whole tensor as f32 (for small tensors, tests and statistics).
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self
            .tensor(name)
            .ok_or_else(|| anyhow!("{}: no tensor named {name:?}", self.root.display()))?;
        ensure_float(t.dtype).with_context(|| format!("{}: tensor {name}", self.root.display()))?;
        let mut out = vec![0f32; t.numel()];
        self.read_f32_range(t, 0, &mut out);
        Ok((t.shape.clone(), out))
    }
}

/// The safetensors files that make up the checkpoint at `path`.
fn checkpoint_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        bail!("{}: no such checkpoint file or directory", path.display());
    }
    let index = path.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("reading {}", index.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| anyhow!("{}: missing \"weight_map\" object", index.display()))?;
        let mut files: Vec<String> = map
            .values()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    anyhow!("{}: weight_map values must be file names", index.display())
                })
            })
            .collect::<Result<_>>()?;
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| path.join(f)).collect());
    }
    let single = path.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("listing {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "{}: no .safetensors files in this directory",
            path.display()
        );
    }
    Ok(files)
}

/// Bytes per element of the dtypes fisherkit reads and writes.
pub fn dtype_width(dtype: Dtype) -> usize {
    dtype.bitsize() / 8
}

pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

pub fn ensure_float(dtype: Dtype) -> Result<()> {
    if !is_float(dtype) {
        bail!("dtype {dtype:?} is not a floating-point type");
    }
    Ok(())
}

/// Decode little-endian float bytes into f32.
pub fn decode_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        Dtype::BF16 => {
            // Fixed-size groups let the compiler turn the byte shuffling into vector code.
            let (groups, rest) = (bytes.chunks_exact(16), bytes.len() / 16 * 8);
            for (o, b) in out.chunks_exact_mut(8).zip(groups) {
                for j in 0..8 {
                    o[j] = bf16_bits_to_f32(u16::from_le_bytes([b[2 * j], b[2 * j + 1]]));
                }
            }
            for (o, b) in out[rest..]
                .iter_mut()
                .zip(bytes[rest * 2..].chunks_exact(2))
            {
                *o = bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        Dtype::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::F64 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32;
            }
        }
        other => unreachable!("decode_f32 called on {other:?}; callers check is_float"),
    }
}

fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// f32 → bf16 with round-to-nearest-even, NaN kept a (quiet) NaN; the same results as
/// `half::bf16::from_f32`, written without branches so it vectorises.
fn f32_to_bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let rounded = x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16;
    let nan = (x >> 16) | 0x40;
    (if v.is_nan() { nan } else { rounded }) as u16
}

/// Encode f32 values as little-endian bytes of `dtype` (round to nearest even).
pub fn encode_f32(dtype: Dtype, values: &[f32], out: &mut [u8]) {
    match dtype {
        Dtype::BF16 => {
            let rest = values.len() / 8 * 8;
            for (v, o) in values.chunks_exact(8).zip(out.chunks_exact_mut(16)) {
                for j in 0..8 {
                    let [lo, hi] = f32_to_bf16_bits(v[j]).to_le_bytes();
                    o[2 * j] = lo;
                    o[2 * j + 1] = hi;
                }
            }
            for (v, o) in values[rest..]
                .iter()
                .zip(out[rest * 2..].chunks_exact_mut(2))
            {
                o.copy_from_slice(&f32_to_bf16_bits(*v).to_le_bytes());
            }
        }
        Dtype::F16 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        Dtype::F32 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::F64 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(8)) {
                o.copy_from_slice(&(*v as f64).to_le_bytes());
            }
        }
        other => unreachable!("encode_f32 called on {other:?}; output dtypes are floats"),
    }
}

/// Parse a dtype name as mergekit and HF write it (`bfloat16`, `float16`, `float32`)
/// or in short form (`bf16`, `f16`/`fp16`, `f32`/`fp32`).
pub fn parse_dtype(name: &str) -> Result<Dtype> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "bfloat16" | "bf16" => Dtype::BF16,
        "float16" | "f16" | "fp16" | "half" => Dtype::F16,
        "float32" | "f32" | "fp32" | "float" => Dtype::F32,
        other => bail!("unknown dtype {other:?} (expected bfloat16, float16 or float32)"),
    })
}

/// The HF `torch_dtype` spelling of a dtype.
pub fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::BF16 => "bfloat16",
        Dtype::F16 => "float16",
        Dtype::F32 => "float32",
        Dtype::F64 => "float64",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorisable bf16 conversions against the `half` crate's, on every bf16 value
    /// and on f32 patterns around each rounding boundary (ties, NaN payloads, overflow).
    #[test]
    fn bf16_conversions_match_half() {
        let mut patterns: Vec<u32> = Vec::new();
        for hi in 0..=u16::MAX as u32 {
            for lo in [0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF] {
                patterns.push(hi << 16 | lo);
            }
        }
        // Odd lengths exercise the tails after the groups of eight.
        for len in [patterns.len(), patterns.len() - 5] {
            let values: Vec<f32> = patterns[..len].iter().map(|&b| f32::from_bits(b)).collect();
            let mut bytes = vec![0u8; 2 * len];
            encode_f32(Dtype::BF16, &values, &mut bytes);
            for (v, b) in values.iter().zip(bytes.chunks_exact(2)) {
                let expected = half::bf16::from_f32(*v).to_bits();
                assert_eq!(u16::from_le_bytes([b[0], b[1]]), expected, "{v:e}");
            }
            let mut back = vec![0f32; len];
            decode_f32(Dtype::BF16, &bytes, &mut back);
            for (x, b) in back.iter().zip(bytes.chunks_exact(2)) {
                let expected = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                assert_eq!(x.to_bits(), expected.to_bits());
            }
        }
    }
}
