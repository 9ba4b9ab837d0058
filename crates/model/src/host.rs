//! Reading tensor values on the host without a copy where the CPU backend allows it.

use anyhow::Result;
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{DType, Tensor};

/// The CPU backend's tensor behind a contiguous f32 tensor, shared (not copied); `None`
/// for other devices, dtypes and layouts.
pub fn cpu_f32<const D: usize>(t: Tensor<D>) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let tensor = t.inner().try_into_primitive::<Flex>().ok()?;
    tensor.layout().is_contiguous().then_some(tensor)
}

/// The row-major values of a contiguous f32 CPU tensor holding `len` elements.
pub fn flex_values(tensor: &FlexTensor, len: usize) -> &[f32] {
    let start = tensor.layout().start_offset();
    &tensor.storage::<f32>()[start..start + len]
}

/// A tensor's f32 values on the host: the CPU backend's own storage when the tensor is a
/// contiguous f32 tensor there, else a copy read back from the device.
pub enum HostValues {
    Shared(FlexTensor, usize),
    Read(Vec<f32>),
}

impl HostValues {
    pub fn of<const D: usize>(t: Tensor<D>) -> Result<Self> {
        let len = t.dims().iter().product();
        if let Some(tensor) = cpu_f32(t.clone()) {
            return Ok(Self::Shared(tensor, len));
        }
        t.try_into_vec_as::<f32>()
            .map(Self::Read)
            .map_err(|e| anyhow::anyhow!("reading tensor values: {e:?}"))
    }

    /// The values as an owned vector (copied when shared).
    pub fn into_vec(self) -> Vec<f32> {
        match self {
            Self::Shared(..) => self.values().to_vec(),
            Self::Read(values) => values,
        }
    }

    pub fn values(&self) -> &[f32] {
        match self {
            Self::Shared(tensor, len) => flex_values(tensor, *len),
            Self::Read(values) => values,
        }
    }
}
