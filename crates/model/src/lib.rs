//! The architecture-neutral model interface that Fisher computation, merging, NPEFF and
//! training run on.
//!
//! A model is "log-probability of outputs given inputs" plus a list of named parameters:
//!
//! - [`LogProbModel`] is implemented once per architecture (T5, a BERT-family encoder, ...).
//!   It lists its parameters in checkpoint order ([`LogProbModel::named_params`]), computes
//!   differentiable per-token target log-probabilities for a batch of [`Example`]s and the
//!   full log-softmax over the output vocabulary, switches dropout on and off, and saves
//!   itself in its native checkpoint layout. [`LoadModel`] loads one.
//! - [`Model`] widens it to everything above the model crates needs: teacher-forced
//!   logits, the dropout rate, generation ([`GenerateOptions`]), saving with a tokenizer,
//!   special token ids. The loader registry (`fisherkit-models`) hands out
//!   `Box<dyn Model>`; [`TextTokenizer`] and [`data::read_examples`] turn text into ids.
//! - [`ParamAccess`] is implemented for every `LogProbModel`: parameter shapes and flat
//!   offsets ([`ParamSpec`]), reading/writing parameters as f32 host vectors by name (for
//!   in-memory merges and perturbations), and extracting gradients after `backward()`.
//!
//! burn 0.22 has no backend type parameter: the backend is a run-time property of the
//! [`Device`] a model's tensors live on (`Device::flex()` on CPU, `Device::cuda(0)`, ...),
//! and `device.autodiff()` makes the same model differentiable. A model loaded on an
//! autodiff device records a graph on every forward; call `.backward()` on a scalar built
//! from [`LogProbModel::target_logprobs`] and read gradients with
//! [`ParamAccess::gradients`].

pub mod auxiliary;
pub mod checkpoint;
pub mod config_keys;
pub mod data;
pub mod generate;
pub mod host;
mod linear;
pub mod peak;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
pub use burn;
use burn::module::Param;
use burn::tensor::{DType, Device, Element, Gradients, Int, Tensor, TensorData};
pub use generate::{GenerateOptions, LengthPenalty, Sampling};
pub use linear::{linear, matmul_transposed, FEW_ROWS};
pub use tokenizer::TextTokenizer;

/// One training/scoring example: token ids in, token ids out. For a classifier the target
/// is the single class id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub target_ids: Vec<u32>,
    /// Segment of each input token (BERT's sentence A = 0 / B = 1); empty = all 0.
    /// Architectures without token types refuse a non-zero one.
    pub token_type_ids: Vec<u32>,
}

impl Example {
    pub fn new(input_ids: Vec<u32>, target_ids: Vec<u32>) -> Self {
        Self {
            input_ids,
            target_ids,
            token_type_ids: Vec::new(),
        }
    }
}

/// A borrowed parameter tensor of rank 1 (norm weights) or 2 (projections, embeddings).
pub enum ParamRef<'a> {
    Vector(&'a Param<Tensor<1>>),
    Matrix(&'a Param<Tensor<2>>),
}

/// A mutably borrowed parameter tensor, see [`ParamRef`].
pub enum ParamMut<'a> {
    Vector(&'a mut Param<Tensor<1>>),
    Matrix(&'a mut Param<Tensor<2>>),
}

impl<'a, const D: usize> From<&'a Param<Tensor<D>>> for ParamRef<'a> {
    /// Rank 1 or 2 only: every fisherkit model stores vectors and matrices.
    fn from(param: &'a Param<Tensor<D>>) -> Self {
        let any: &dyn std::any::Any = param;
        if let Some(vector) = any.downcast_ref::<Param<Tensor<1>>>() {
            ParamRef::Vector(vector)
        } else if let Some(matrix) = any.downcast_ref::<Param<Tensor<2>>>() {
            ParamRef::Matrix(matrix)
        } else {
            panic!("parameters of rank {D} are not supported (only 1 and 2)")
        }
    }
}

impl<'a, const D: usize> From<&'a mut Param<Tensor<D>>> for ParamMut<'a> {
    /// Rank 1 or 2 only, see [`ParamRef`].
    fn from(param: &'a mut Param<Tensor<D>>) -> Self {
        let any: &mut dyn std::any::Any = param;
        if any.is::<Param<Tensor<1>>>() {
            ParamMut::Vector(any.downcast_mut().expect("checked"))
        } else if any.is::<Param<Tensor<2>>>() {
            ParamMut::Matrix(any.downcast_mut().expect("checked"))
        } else {
            panic!("parameters of rank {D} are not supported (only 1 and 2)")
        }
    }
}

impl ParamMut<'_> {
    /// The same parameter, read-only.
    pub fn as_ref(&self) -> ParamRef<'_> {
        match self {
            ParamMut::Vector(p) => ParamRef::Vector(p),
            ParamMut::Matrix(p) => ParamRef::Matrix(p),
        }
    }

    pub fn shape(&self) -> Vec<usize> {
        match self {
            ParamMut::Vector(p) => p.val().dims().to_vec(),
            ParamMut::Matrix(p) => p.val().dims().to_vec(),
        }
    }
}

impl ParamRef<'_> {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            ParamRef::Vector(p) => p.val().dims().to_vec(),
            ParamRef::Matrix(p) => p.val().dims().to_vec(),
        }
    }

    /// The values as f32 host data, row-major.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.to_vec()
    }

    /// The values converted to element type `E` (f64 for finite differences), row-major.
    pub fn to_vec<E: Element>(&self) -> Result<Vec<E>> {
        let values = match self {
            ParamRef::Vector(p) => p.val().try_into_vec_as::<E>(),
            ParamRef::Matrix(p) => p.val().try_into_vec_as::<E>(),
        };
        values.map_err(|e| anyhow::anyhow!("reading parameter values: {e:?}"))
    }

    /// The values on the host, without a copy on the CPU backend.
    pub fn host_values(&self) -> Result<host::HostValues> {
        match self {
            ParamRef::Vector(p) => host::HostValues::of(p.val()),
            ParamRef::Matrix(p) => host::HostValues::of(p.val()),
        }
    }

    /// The gradient recorded in `grads` on the host, without a copy on the CPU backend.
    pub fn grad_host(&self, grads: &Gradients) -> Result<Option<host::HostValues>> {
        match self {
            ParamRef::Vector(p) => p.val().grad(grads).map(host::HostValues::of),
            ParamRef::Matrix(p) => p.val().grad(grads).map(host::HostValues::of),
        }
        .transpose()
    }

    /// The gradient of this parameter recorded in `grads`, as f32 host data.
    pub fn grad_f32(&self, grads: &Gradients) -> Result<Option<Vec<f32>>> {
        let grad = match self {
            ParamRef::Vector(p) => p.val().grad(grads).map(|g| g.try_into_vec_as::<f32>()),
            ParamRef::Matrix(p) => p.val().grad(grads).map(|g| g.try_into_vec_as::<f32>()),
        };
        grad.transpose()
            .map_err(|e| anyhow::anyhow!("reading a gradient: {e:?}"))
    }
}

impl ParamMut<'_> {
    /// Replace the values (same shape), keeping the parameter id, dtype, device and
    /// gradient requirement.
    pub fn set_f32(&mut self, values: &[f32]) -> Result<()> {
        self.set_values(values.to_vec())
    }

    /// Replace the values from any element type; the parameter keeps its dtype.
    pub fn set_values<E: Element>(&mut self, values: Vec<E>) -> Result<()> {
        self.set_data(values, None)
    }

    /// Convert the values to `dtype` (e.g. `DType::F64` for gradient checks), keeping
    /// the parameter id, device and gradient requirement.
    pub fn cast(&mut self, dtype: DType) -> Result<()> {
        let values = match self {
            ParamMut::Vector(p) => p.val().try_into_vec_as::<f64>(),
            ParamMut::Matrix(p) => p.val().try_into_vec_as::<f64>(),
        }
        .map_err(|e| anyhow::anyhow!("reading parameter values: {e:?}"))?;
        self.set_data(values, Some(dtype))
    }

    fn set_data<E: Element>(&mut self, values: Vec<E>, dtype: Option<DType>) -> Result<()> {
        fn replace<const D: usize, E: Element>(
            param: &mut Param<Tensor<D>>,
            values: Vec<E>,
            dtype: Option<DType>,
        ) -> Result<()> {
            let dims = param.val().dims();
            let numel: usize = dims.iter().product();
            ensure!(
                values.len() == numel,
                "expected {numel} values for shape {dims:?}, got {}",
                values.len()
            );
            let data = TensorData::new(values, dims);
            *param = param.clone().map(|old| {
                let requires_grad = old.is_require_grad();
                let dtype = dtype.unwrap_or(old.dtype());
                let new = Tensor::from_data(data, (&old.device(), dtype));
                if requires_grad {
                    new.require_grad()
                } else {
                    new
                }
            });
            Ok(())
        }
        match self {
            ParamMut::Vector(p) => replace(p, values, dtype),
            ParamMut::Matrix(p) => replace(p, values, dtype),
        }
    }
}

/// Name, shape and position of one parameter in the flat concatenation of all parameters
/// (checkpoint order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Index of the first element in the flat vector of all parameters.
    pub offset: usize,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// "Log-probability of outputs given inputs" with named parameters: what one architecture
/// implements so that every fisherkit capability runs on it.
pub trait LogProbModel {
    /// Every trainable parameter once, in checkpoint order, under its checkpoint name
    /// (e.g. the Hugging Face name). Tied parameters appear once.
    fn named_params(&self) -> Vec<(String, ParamRef<'_>)>;

    /// The same list as [`named_params`](Self::named_params), mutably.
    fn named_params_mut(&mut self) -> Vec<(String, ParamMut<'_>)>;

    /// The device the parameters live on (autodiff or not).
    fn device(&self) -> Device;

    /// Dropout on (`true`) or off. Off by default after loading; independent of whether
    /// the device records gradients (Fishers need gradients without dropout).
    fn set_training(&mut self, training: bool);

    fn is_training(&self) -> bool;

    /// Size of the output distribution (vocabulary or number of classes).
    fn output_size(&self) -> usize;

    /// Log-softmax over the outputs for every target position, teacher-forced:
    /// `[batch, max_target_len, output_size]`. Rows at padded target positions are
    /// finite but meaningless.
    fn log_softmax(&self, batch: &[Example]) -> Result<Tensor<3>>;

    /// Differentiable `log p(target_t | input, target_<t)`: `[batch, max_target_len]`,
    /// exactly 0 at padded positions.
    fn target_logprobs(&self, batch: &[Example]) -> Result<Tensor<2>> {
        let log_probs = self.log_softmax(batch)?;
        gather_targets(log_probs, batch)
    }

    /// Write the model in its native checkpoint layout (atomically) into `dir`.
    fn save(&self, dir: &Path) -> Result<()>;

    /// Names under which parameter `name` may be stored in a checkpoint or a merge,
    /// preferred first (aliases of tied or renamed tensors). Loaders and the merge
    /// evaluator look parameters up through this one list.
    fn checkpoint_names(&self, name: &str) -> Vec<String> {
        vec![name.to_string()]
    }

    /// The architecture's own per-example backward pass, when it has one for the device
    /// and dtype the model is on; `None` means gradients come from burn's autodiff.
    fn example_backprop(&self) -> Option<Box<dyn ExampleBackprop>> {
        None
    }
}

/// The [`LogProbModel`] methods every architecture built as a burn module writes alike,
/// for a type with inherent `named_params`/`named_params_mut` (from `param_list!(root
/// …)`) and `device`, a `training: bool` field, and [`Model::logits`]: expands inside
/// `impl LogProbModel for …`.
#[macro_export]
macro_rules! burn_module_log_prob_basics {
    () => {
        fn named_params(&self) -> Vec<(String, $crate::ParamRef<'_>)> {
            Self::named_params(self)
        }

        fn named_params_mut(&mut self) -> Vec<(String, $crate::ParamMut<'_>)> {
            Self::named_params_mut(self)
        }

        fn device(&self) -> $crate::burn::tensor::Device {
            Self::device(self)
        }

        fn set_training(&mut self, training: bool) {
            self.training = training;
        }

        fn is_training(&self) -> bool {
            self.training
        }

        fn log_softmax(
            &self,
            batch: &[$crate::Example],
        ) -> anyhow::Result<$crate::burn::tensor::Tensor<3>> {
            Ok($crate::burn::tensor::activation::log_softmax(
                $crate::Model::logits(self, batch)?,
                2,
            ))
        }
    };
}

/// [`Model::without_autodiff`] for a burn module whose `config` and `training` fields are
/// skipped by the module derive: expands inside `impl Model for …`.
#[macro_export]
macro_rules! burn_module_without_autodiff {
    () => {
        fn without_autodiff(&self) -> Box<dyn $crate::Model> {
            use $crate::burn::module::Module as _;
            let mut model = self.valid();
            model.config = self.config.clone();
            model.training = self.training;
            Box::new(model)
        }
    };
}

/// `(position, class, weight)` terms of an objective `Σ weight · log p_position(class)`.
pub type WeightedClasses = Vec<(usize, usize, f32)>;

/// Chooses, from each target's log-softmax rows, one or more objectives, each given as
/// its terms per target.
pub type ChooseObjectives<'a> = dyn FnMut(&[&[f32]]) -> Result<Vec<Vec<WeightedClasses>>> + 'a;

/// Receives the gradient of objective `index` (called once per objective, in order).
pub type EachGradient<'a> = dyn FnMut(usize, Vec<f32>) -> Result<()> + 'a;

/// A hand-written backward pass for ONE example, used instead of the autodiff graph where
/// it is faster (per-example gradients build, walk and free a whole graph per example).
pub trait ExampleBackprop: Send + Sync {
    /// Runs `example`'s input (its ids and token types; its own targets are ignored)
    /// teacher-forced against each of `targets` once and hands each target's
    /// log-softmax rows (`[target_len * output_size]`, row-major) to `objectives`, which
    /// returns the objectives to differentiate: each is, per target, the
    /// `(position, class, weight)` terms of `Σ weight · log p_position(class)`. Every
    /// objective's gradient (one flat vector in [`ParamAccess::param_specs`] order) goes
    /// to `each` as soon as it is computed, so one gradient is held at a time; the forward
    /// pass is shared by all of them.
    fn gradients(
        &self,
        example: &Example,
        targets: &[Vec<u32>],
        objectives: &mut ChooseObjectives<'_>,
        each: &mut EachGradient<'_>,
    ) -> Result<()>;
}

/// Loading a model of one architecture from its native checkpoint directory.
pub trait LoadModel: Sized {
    fn load(dir: &Path, device: &Device) -> Result<Self>;
}

/// The token ids data readers and decoders need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    pub pad: u32,
    pub eos: u32,
    /// The first decoder input of an encoder–decoder (`None` for other architectures).
    pub decoder_start: Option<u32>,
}

/// Everything above the model crates (training, Fishers, merge search, scoring,
/// generation, evaluation) reaches a model through this trait, as `Box<dyn Model>` from
/// the loader registry (`fisherkit-models`). One implementation per architecture.
pub trait Model: LogProbModel + std::fmt::Debug + Send {
    /// `config.json`'s `model_type` (e.g. `t5`).
    fn model_type(&self) -> &str;

    /// Size of the token vocabulary (input ids must be below it).
    fn vocab_size(&self) -> usize;

    fn special_tokens(&self) -> SpecialTokens;

    /// An input or target id sequence must be non-empty and inside the vocabulary; the
    /// error names `what` and the offending id.
    fn check_ids(&self, ids: &[u32], what: &str) -> Result<()>;

    /// Teacher-forced logits `[batch, max_target_len, output_size]` (differentiable on an
    /// autodiff device; dropout applies in training mode). The trainer's z-loss needs
    /// them; [`LogProbModel::log_softmax`] is their log-softmax.
    fn logits(&self, batch: &[Example]) -> Result<Tensor<3>>;

    /// The dropout rate used in training mode.
    fn dropout(&self) -> f64;

    /// Change the dropout rate used in training mode (the weights stay); a rate outside
    /// `[0, 1)` is an error.
    fn set_dropout(&mut self, rate: f64) -> Result<()>;

    /// Decode a batch of inputs (greedy or beam search); the generated ids per input,
    /// EOS included when produced. Architectures without a decoder return an error.
    fn generate(&self, inputs: &[Vec<u32>], options: &GenerateOptions) -> Result<Vec<Vec<u32>>>;

    /// Write the model in its native checkpoint layout into `dir` (staged, renamed into
    /// place; an existing `dir` is replaced only when `overwrite`), with a copy of
    /// `tokenizer` when given. Returns the final directory.
    fn save_checkpoint(
        &self,
        dir: &Path,
        tokenizer: Option<&Path>,
        overwrite: bool,
    ) -> Result<PathBuf>;

    /// The same weights and settings off the autodiff graph (the device's inner
    /// backend): evaluation during training records no graph.
    fn without_autodiff(&self) -> Box<dyn Model>;

    /// Floating-point operations (matrix products' multiply-adds × 2) of one
    /// teacher-forced forward pass over `batch` examples of `input_len` input and
    /// `target_len` target tokens, counted from the configuration: the numerator of a
    /// bench's share of the matmul peak.
    fn forward_flops(&self, batch: usize, input_len: usize, target_len: usize) -> f64;

    /// The shape `[rows, inner, columns]` of the model's dominant weight product over
    /// `rows` token rows (the feed-forward input projection): where benches measure the
    /// matmul peak their workloads are compared with.
    fn dominant_matmul(&self, rows: usize) -> [usize; 3];

    /// The model's tokenizer from `tokenizer.json` in `dir`, if present, with this
    /// model's EOS.
    fn tokenizer_in(&self, dir: &Path) -> Result<Option<TextTokenizer>> {
        TextTokenizer::from_dir(dir, self.special_tokens().eos)
    }

    /// A decoder-only or prefix LM: input and target form one sequence, so an input
    /// alone can be scored token by token (`fisherkit score` on `{"input_ids": [...]}`).
    fn is_decoder_only(&self) -> bool {
        false
    }

    /// Class names of a classification head, by class index (the output distribution of
    /// [`LogProbModel::log_softmax`] at its one target position); empty for models
    /// whose outputs are tokens.
    fn class_labels(&self) -> &[String] {
        &[]
    }

    /// The encoder's last hidden states over a padded batch of inputs `[batch, len, d]`
    /// and the token mask `[batch, len]` (1 for tokens, 0 for padding): what sentence
    /// embeddings pool.
    fn encoder_states(&self, batch: &[Example]) -> Result<(Tensor<3>, Tensor<2>)>;
}

/// A boxed model is a model: generic code over `M: LogProbModel` (Fisher computation,
/// the merge evaluator) runs on `Box<dyn Model>` from the registry.
impl<M: LogProbModel + ?Sized> LogProbModel for Box<M> {
    fn named_params(&self) -> Vec<(String, ParamRef<'_>)> {
        (**self).named_params()
    }

    fn named_params_mut(&mut self) -> Vec<(String, ParamMut<'_>)> {
        (**self).named_params_mut()
    }

    fn device(&self) -> Device {
        (**self).device()
    }

    fn set_training(&mut self, training: bool) {
        (**self).set_training(training)
    }

    fn is_training(&self) -> bool {
        (**self).is_training()
    }

    fn output_size(&self) -> usize {
        (**self).output_size()
    }

    fn log_softmax(&self, batch: &[Example]) -> Result<Tensor<3>> {
        (**self).log_softmax(batch)
    }

    fn target_logprobs(&self, batch: &[Example]) -> Result<Tensor<2>> {
        (**self).target_logprobs(batch)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        (**self).save(dir)
    }

    fn checkpoint_names(&self, name: &str) -> Vec<String> {
        (**self).checkpoint_names(name)
    }

    fn example_backprop(&self) -> Option<Box<dyn ExampleBackprop>> {
        (**self).example_backprop()
    }
}

pub use fisherkit_common::argmax;

/// Teacher-forced per-token log-probabilities of each example's target, in order.
pub fn score<M: LogProbModel + ?Sized>(model: &M, batch: &[Example]) -> Result<Vec<Vec<f32>>> {
    let log_probs = model.target_logprobs(batch)?;
    let [rows, len] = log_probs.dims();
    let values = log_probs
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading log-probabilities: {e:?}"))?;
    Ok((0..rows)
        .map(|r| values[r * len..r * len + batch[r].target_ids.len()].to_vec())
        .collect())
}

/// Pick `log_probs[b, t, target[b][t]]` and zero the padded positions.
pub fn gather_targets(log_probs: Tensor<3>, batch: &[Example]) -> Result<Tensor<2>> {
    let [batch_size, len, vocab] = log_probs.dims();
    ensure!(
        batch_size == batch.len(),
        "log-softmax batch {batch_size} != {} examples",
        batch.len()
    );
    let device = log_probs.device();
    let mut ids = Vec::with_capacity(batch_size * len);
    let mut mask = Vec::with_capacity(batch_size * len);
    for example in batch {
        ensure!(
            example.target_ids.len() <= len,
            "a target of {} tokens, but the model scores {len} output position(s) (a classifier's target is one class)",
            example.target_ids.len()
        );
        for t in 0..len {
            let id = example.target_ids.get(t).copied();
            if let Some(id) = id {
                ensure!(
                    (id as usize) < vocab,
                    "target id {id} outside the output size {vocab}"
                );
            }
            ids.push(id.unwrap_or(0) as i64);
            mask.push(if id.is_some() { 1.0f32 } else { 0.0 });
        }
    }
    let index = Tensor::<3, Int>::from_data(TensorData::new(ids, [batch_size, len, 1]), &device);
    let picked: Tensor<2> = log_probs.gather(2, index).squeeze_dim(2);
    let mask = Tensor::<2>::from_data(
        TensorData::new(mask, [batch_size, len]),
        (&device, picked.dtype()),
    );
    Ok(picked * mask)
}

/// Parameter bookkeeping every [`LogProbModel`] gets for free.
pub trait ParamAccess: LogProbModel {
    /// Names, shapes and flat offsets in checkpoint order.
    fn param_specs(&self) -> Vec<ParamSpec> {
        let mut offset = 0;
        self.named_params()
            .into_iter()
            .map(|(name, param)| {
                let shape = param.shape();
                let spec = ParamSpec {
                    name,
                    shape,
                    offset,
                };
                offset += spec.numel();
                spec
            })
            .collect()
    }

    fn num_params(&self) -> usize {
        self.param_specs().iter().map(ParamSpec::numel).sum()
    }

    /// All parameters as f32 host vectors, in checkpoint order.
    fn read_params(&self) -> Result<Vec<(String, Vec<f32>)>> {
        self.named_params()
            .into_iter()
            .map(|(name, param)| {
                let values = param
                    .to_f32()
                    .with_context(|| format!("parameter {name}"))?;
                Ok((name, values))
            })
            .collect()
    }

    /// One parameter by name.
    fn read_param(&self, name: &str) -> Result<Vec<f32>> {
        let (_, param) = self
            .named_params()
            .into_iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("no parameter named {name}"))?;
        param.to_f32().with_context(|| format!("parameter {name}"))
    }

    /// Overwrite the named parameters; every name must exist and every length match.
    /// Names not listed keep their values.
    fn write_params(&mut self, values: &[(String, Vec<f32>)]) -> Result<()> {
        let mut params = self.named_params_mut();
        for (name, data) in values {
            let (_, param) = params
                .iter_mut()
                .find(|(n, _)| n == name)
                .with_context(|| format!("no parameter named {name}"))?;
            param
                .set_f32(data)
                .with_context(|| format!("parameter {name}"))?;
        }
        Ok(())
    }

    /// Convert every parameter to `dtype` (f64 for finite-difference checks). Forward
    /// passes then run in that precision.
    fn cast_params(&mut self, dtype: DType) -> Result<()> {
        for (name, mut param) in self.named_params_mut() {
            param
                .cast(dtype)
                .with_context(|| format!("parameter {name}"))?;
        }
        Ok(())
    }

    /// All parameters concatenated in checkpoint order (see [`ParamSpec::offset`]).
    fn read_flat(&self) -> Result<Vec<f32>> {
        Ok(self
            .read_params()?
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect())
    }

    /// Inverse of [`read_flat`](Self::read_flat).
    fn write_flat(&mut self, flat: &[f32]) -> Result<()> {
        let specs = self.param_specs();
        let total: usize = specs.iter().map(ParamSpec::numel).sum();
        if flat.len() != total {
            bail!(
                "flat parameter vector has {} values, the model has {total}",
                flat.len()
            );
        }
        for ((name, mut param), spec) in self.named_params_mut().into_iter().zip(&specs) {
            param
                .set_f32(&flat[spec.offset..spec.offset + spec.numel()])
                .with_context(|| format!("parameter {name}"))?;
        }
        Ok(())
    }

    /// Each parameter's gradient after `backward()`, in checkpoint order (zeros for a
    /// parameter the loss does not depend on). The model must live on an autodiff device.
    fn gradients(&self, grads: &Gradients) -> Result<Vec<(String, Vec<f32>)>> {
        ensure!(
            self.device().is_autodiff(),
            "gradients need a model on an autodiff device (device.autodiff())"
        );
        self.named_params()
            .into_iter()
            .map(|(name, param)| {
                let grad = param
                    .grad_f32(grads)
                    .with_context(|| format!("parameter {name}"))?;
                let grad = match grad {
                    Some(grad) => grad,
                    None => vec![0.0; param.shape().iter().product()],
                };
                Ok((name, grad))
            })
            .collect()
    }
}

impl<M: LogProbModel + ?Sized> ParamAccess for M {}

/// The compute device named on the command line: `cpu` (burn's flex backend, always
/// available), `cuda` / `wgpu` when fisherkit is built with those features.
pub fn device_by_name(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(Default::default())),
        "cuda" | "wgpu" => bail!("device {name:?} needs fisherkit built with `--features {name}`"),
        other => bail!("unknown device {other:?}: expected cpu, cuda or wgpu"),
    }
}
