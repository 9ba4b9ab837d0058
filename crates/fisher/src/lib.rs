//! Diagonal dataset Fishers and per-example Fishers (diagonal and low-rank) from models.
//!
//! The math here is written against [`GradientModel`], a small trait any model with
//! per-example autodiff satisfies: the output distribution of one example (one or more
//! "positions", each a distribution over classes) and the flat gradient of a sum of
//! chosen class log-probabilities. Label classification has one position whose classes
//! are the label strings; token outputs have one position per target token whose classes
//! are the vocabulary.
//!
//! Every Fisher here squares gradients of ONE example: batches only group examples for
//! scheduling, never for a summed gradient (whose square has cross-example terms).

pub mod bench;
pub mod data;
pub mod dataset;
pub mod evaluate;
pub mod example;
pub mod job;
pub mod model;
pub mod perturb;
pub mod select;
pub mod sparse;

pub use dataset::{
    dataset_fisher, example_diagonal, example_diagonal_given, DatasetFisher, FisherRun, Mode,
};
pub use example::{
    example_classes, example_classes_given, example_diagonal_streamed, predictions, ClassGradient,
    ExampleFisher,
};
pub use select::ClassSelection;
pub use sparse::{top_k_diagonal, top_k_low_rank, SparseDiagonal, SparseLowRank};

/// Values per parallel task in the passes over all parameters (squares, sums, top-k):
/// large enough to amortise scheduling, small enough to balance the cores.
pub(crate) const CHUNK: usize = 1 << 16;

/// One parameter tensor's place in the flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Total number of scalar parameters in a table.
pub fn param_count(params: &[ParamSpec]) -> usize {
    params.iter().map(ParamSpec::numel).sum()
}

/// A class at one output position: `(position, class)`.
pub type Pick = (usize, usize);

/// What the Fisher computations need from a model.
pub trait GradientModel {
    type Example;

    /// The trainable parameters in the flat order gradients use.
    fn params(&self) -> &[ParamSpec];

    /// Log-probabilities of every class at every output position of one example
    /// (each row a normalised distribution), computed without gradients.
    fn log_probs(&self, example: &Self::Example) -> anyhow::Result<Vec<Vec<f32>>>;

    /// [`log_probs`](Self::log_probs) of several examples; a model may compute them in
    /// one batched forward pass (the gradients stay per example).
    fn log_probs_batch(&self, examples: &[Self::Example]) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
        examples.iter().map(|e| self.log_probs(e)).collect()
    }

    /// The flat gradient (parameter-table order) of `Σ_{(t,c) ∈ picks} log p_t(c | x)`
    /// for ONE example.
    fn grad(&self, example: &Self::Example, picks: &[Pick]) -> anyhow::Result<Vec<f32>>;

    /// The gradients of several pick lists of ONE example, handed to `each` one at a time
    /// as `(index, gradient)`, so that only one is held; a model may share work between
    /// them (its forward pass).
    fn grads_each(
        &self,
        example: &Self::Example,
        picks: &[Vec<Pick>],
        each: &mut fisherkit_model::EachGradient<'_>,
    ) -> anyhow::Result<()> {
        grads_one_by_one(self, example, picks, each)
    }

    /// The observed classes of an example (for the empirical Fisher).
    fn observed(&self, example: &Self::Example) -> anyhow::Result<Vec<Pick>>;
}

/// [`GradientModel::grads_each`] as separate [`GradientModel::grad`] calls (nothing shared).
pub(crate) fn grads_one_by_one<M: GradientModel + ?Sized>(
    model: &M,
    example: &M::Example,
    picks: &[Vec<Pick>],
    each: &mut fisherkit_model::EachGradient<'_>,
) -> anyhow::Result<()> {
    for (index, picks) in picks.iter().enumerate() {
        each(index, model.grad(example, picks)?)?;
    }
    Ok(())
}
