//! safetensors helpers shared by the model, merge, Fisher and NPEFF crates:
//! memory-mapped reading, dtype conversion to f32, and atomic f32 writing.

use crate::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A memory-mapped safetensors file. Tensors are borrowed views into the mapping.
pub struct MappedFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the file is opened read-only; fisherkit never writes to a file it is
        // reading (all outputs go through atomic temp-and-rename).
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("memory-mapping {}", path.display()))?;
        let mapped = Self {
            path: path.to_path_buf(),
            mmap,
        };
        mapped.tensors()?; // validate the header once, with a clear error
        Ok(mapped)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed file (cheap: the header is re-parsed, the data is not copied).
    pub fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.mmap).map_err(|e| {
            crate::anyhow!("{}: not a valid safetensors file: {e}", self.path.display())
        })
    }

    /// The `__metadata__` map of the header.
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, meta) = SafeTensors::read_metadata(&self.mmap).map_err(|e| {
            crate::anyhow!("{}: not a valid safetensors file: {e}", self.path.display())
        })?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    /// Tensor names in file (offset) order.
    pub fn names_in_order(&self) -> Result<Vec<String>> {
        let st = self.tensors()?;
        let mut named: Vec<(usize, String)> = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (view.data().as_ptr() as usize, name))
            .collect();
        named.sort();
        Ok(named.into_iter().map(|(_, n)| n).collect())
    }

    /// One tensor converted to f32, with its shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let st = self.tensors()?;
        let view = st
            .tensor(name)
            .map_err(|_| crate::anyhow!("{}: no tensor named {name:?}", self.path.display()))?;
        let values =
            to_f32(&view).with_context(|| format!("{}: tensor {name}", self.path.display()))?;
        Ok((view.shape().to_vec(), values))
    }
}

/// Convert a tensor view of a floating dtype (f32, f16, bf16, f64) to f32.
pub fn to_f32(view: &TensorView<'_>) -> Result<Vec<f32>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => crate::bail!("unsupported dtype {other:?} (expected a floating-point tensor)"),
    })
}

/// Convert a tensor view of a signed integer dtype (i64, i32) to i64.
pub fn to_i64(view: &TensorView<'_>) -> Result<Vec<i64>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|b| i64::from(i32::from_le_bytes(b.try_into().unwrap())))
            .collect(),
        other => crate::bail!("unsupported dtype {other:?} (expected a signed integer tensor)"),
    })
}

/// Convert a tensor view of an integer dtype (i64, i32, u32, u64) to u64, refusing negatives.
pub fn to_indices(view: &TensorView<'_>) -> Result<Vec<u64>> {
    let data = view.data();
    let neg = || crate::anyhow!("negative index");
    Ok(match view.dtype() {
        Dtype::U32 => data
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as u64)
            .collect(),
        Dtype::U64 => data
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|b| u64::try_from(i32::from_le_bytes(b.try_into().unwrap())).map_err(|_| neg()))
            .collect::<Result<_>>()?,
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|b| u64::try_from(i64::from_le_bytes(b.try_into().unwrap())).map_err(|_| neg()))
            .collect::<Result<_>>()?,
        other => crate::bail!("unsupported dtype {other:?} (expected an integer tensor)"),
    })
}

/// An owned tensor ready to be written: raw little-endian bytes plus dtype and shape.
#[derive(Debug, Clone)]
pub struct OwnedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl OwnedTensor {
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape and data disagree"
        );
        Self {
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn i64(shape: Vec<usize>, values: &[i64]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape and data disagree"
        );
        Self {
            dtype: Dtype::I64,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn u32(shape: Vec<usize>, values: &[u32]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape and data disagree"
        );
        Self {
            dtype: Dtype::U32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn i32(shape: Vec<usize>, values: &[i32]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape and data disagree"
        );
        Self {
            dtype: Dtype::I32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

impl safetensors::View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Write named tensors (in the given order) and header metadata to `path`, atomically.
pub fn write(
    path: &Path,
    tensors: &[(String, OwnedTensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata)
    };
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), meta)
        .map_err(|e| crate::anyhow!("serialising {}: {e}", path.display()))?;
    crate::atomic::write_bytes(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_half_conversion() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let bf: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let tensors = vec![
            (
                "b".to_string(),
                OwnedTensor::f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]),
            ),
            (
                "a".to_string(),
                OwnedTensor {
                    dtype: Dtype::BF16,
                    shape: vec![2],
                    data: bf,
                },
            ),
            ("i".to_string(), OwnedTensor::i64(vec![2], &[7, -1])),
        ];
        let meta = HashMap::from([("n".to_string(), "3".to_string())]);
        write(&path, &tensors, meta).unwrap();
        let f = MappedFile::open(&path).unwrap();
        assert_eq!(
            f.read_f32("b").unwrap(),
            (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])
        );
        assert_eq!(f.read_f32("a").unwrap().1, vec![1.5, -2.0]);
        assert_eq!(f.metadata().unwrap()["n"], "3");
        let st = f.tensors().unwrap();
        assert!(
            to_indices(&st.tensor("i").unwrap()).is_err(),
            "negative index refused"
        );
        assert!(f
            .read_f32("missing")
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }
}
