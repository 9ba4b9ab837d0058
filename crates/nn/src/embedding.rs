//! Token embeddings: a `[vocab, width]` table, optionally factorised (ALBERT-style: a
//! narrower table followed by a `[d_model, width]` projection). The same table can serve
//! as a tied output head ([`Embedding::tied_head`]).

use fisherkit_model::burn;
use fisherkit_model::burn::module::{Module, Param};
use fisherkit_model::burn::tensor::{Device, Int, Tensor};

use crate::cpu::{Binder, Gradient};
use crate::linear::{CpuLinear, Linear};
use crate::zeros;

#[derive(Module, Debug)]
pub struct Embedding {
    pub table: Param<Tensor<2>>,
    /// Present when the table is narrower than `d_model`.
    pub projection: Option<Linear>,
}

crate::param_list!(Embedding {
    param "weight" => table,
    optional_child "projection." => projection,
});

impl Embedding {
    /// `width`: the table's width; a projection to `d_model` follows when it differs.
    pub fn new(vocab: usize, width: usize, d_model: usize, device: &Device) -> Self {
        Self {
            table: zeros([vocab, width], device),
            projection: (width != d_model).then(|| Linear::new(width, d_model, false, device)),
        }
    }

    pub fn vocab(&self) -> usize {
        self.table.val().dims()[0]
    }

    /// `ids` `[batch, len]` → `[batch, len, d_model]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, len] = ids.dims();
        let width = self.table.val().dims()[1];
        let rows = self
            .table
            .val()
            .select(0, ids.reshape([batch * len]))
            .reshape([batch, len, width]);
        match &self.projection {
            Some(projection) => projection.forward(rows),
            None => rows,
        }
    }

    /// `hidden · tableᵀ`: the table as the output projection (unfactorised only).
    pub fn tied_head(&self, hidden: Tensor<3>) -> Tensor<3> {
        debug_assert!(self.projection.is_none(), "validated by the config");
        let [batch, len, d] = hidden.dims();
        fisherkit_model::linear(hidden.reshape([batch * len, d]), self.table.val()).reshape([
            batch,
            len,
            self.vocab(),
        ])
    }

    pub fn bind(&self, binder: &Binder) -> CpuEmbedding {
        CpuEmbedding {
            table: CpuLinear::from_weight(binder.weight(&self.table), false),
            projection: self.projection.as_ref().map(|p| p.bind(binder, true)),
        }
    }
}

pub struct CpuEmbedding {
    /// The table, as the linear map a tied head applies.
    pub table: CpuLinear,
    projection: Option<CpuLinear>,
}

/// What the backward pass needs: the ids, and the narrow rows a projection read.
pub struct EmbeddingState {
    ids: Vec<u32>,
    rows: Option<Vec<f32>>,
}

impl CpuEmbedding {
    /// `[ids.len(), d_model]`.
    pub fn forward(&self, ids: &[u32]) -> (EmbeddingState, Vec<f32>) {
        let width = self.table.d_in();
        let values = self.table.weight.values();
        let rows: Vec<f32> = ids
            .iter()
            .flat_map(|&id| &values[id as usize * width..(id as usize + 1) * width])
            .copied()
            .collect();
        match &self.projection {
            Some(projection) => {
                let out = projection.forward(&rows, ids.len());
                (
                    EmbeddingState {
                        ids: ids.to_vec(),
                        rows: Some(rows),
                    },
                    out,
                )
            }
            None => (
                EmbeddingState {
                    ids: ids.to_vec(),
                    rows: None,
                },
                rows,
            ),
        }
    }

    /// Adds the table (and projection) gradients given the output gradient `dy`.
    pub fn backward(&self, state: &EmbeddingState, dy: &[f32], grad: &mut Gradient) {
        let n = state.ids.len();
        let width = self.table.d_in();
        let drows = match (&self.projection, &state.rows) {
            (Some(projection), Some(rows)) => {
                let mut drows = vec![0.0; n * width];
                projection.backward(rows, dy, n, grad, &mut drows, false);
                drows
            }
            _ => dy.to_vec(),
        };
        let dtable = grad.add(&self.table.weight);
        for (&id, row) in state.ids.iter().zip(drows.chunks(width)) {
            crate::cpu::add_into(
                &mut dtable[id as usize * width..(id as usize + 1) * width],
                row,
            );
        }
    }
}
