//! Model parts: every architecture fisherkit runs is assembled from these, and each part
//! is written once.
//!
//! A part is a burn [`Module`](fisherkit_model::burn::module::Module) with
//! - its parameters, listed under checkpoint names by one visitor ([`param_list!`]) that
//!   produces both the shared and the mutable view, so they cannot disagree;
//! - its burn forward pass (any device, any float dtype, autodiff or not);
//! - `bind`, which looks its parameters up in a [`cpu::Binder`] and returns its CPU
//!   mirror: an f32 forward pass that keeps exactly what the backward pass needs, and the
//!   backward pass, which writes weight gradients straight into their slots of one flat
//!   gradient ([`cpu::Gradient`]).
//!
//! Parts: [`Linear`], [`Norm`] (RMS or Layer), [`Activation`]s and [`FeedForward`] (dense
//! or gated), [`Attention`] (multi-head and grouped-query, self or cross, key/value cache)
//! with [`position`] encodings (T5 relative buckets, absolute learned, sinusoidal,
//! rotary), [`Embedding`] (optionally factorised), [`Residual`] (plain or ReZero),
//! [`MixtureOfExperts`] (Switch top-1 / GShard top-2 routing with per-sequence capacity),
//! [`Sublayer`], [`Block`] and [`Stack`] (layers optionally shared).

pub mod activation;
pub mod attention;
pub mod cpu;
pub mod embedding;
pub mod feed_forward;
pub mod linear;
pub mod lm;
pub mod moe;
pub mod norm;
pub mod position;
pub mod residual;
pub mod stack;

pub use activation::{Activation, FeedForwardKind};
pub use attention::{Attention, AttentionNames, KeyValue};
pub use embedding::Embedding;
pub use feed_forward::{FeedForward, FeedForwardNames};
pub use linear::Linear;
pub use moe::{MixtureOfExperts, Routing};
pub use norm::{Norm, NormKind};
pub use position::{PositionKind, Positions, RelativeBias};
pub use residual::{Residual, ResidualKind};
pub use stack::{Block, BlockNames, Inner, Stack, StackNames, Sublayer, SublayerNames};

use fisherkit_model::burn::module::Param;
use fisherkit_model::burn::tensor::{Device, Distribution, Tensor, TensorData};
use rayon::prelude::*;

/// Generates `params` / `params_mut`, which push `(name, param)` in checkpoint order,
/// from one list so that the shared and mutable views can never disagree.
///
/// Entries: `param "name" => field`, `optional "name" => field` (an `Option<Param>`),
/// `child "prefix." => field` (a part with its own list), `optional_child "prefix." =>
/// field` (an `Option` of one), `children "prefix." => field` (a `Vec` of parts,
/// numbered), `sequence [names.key] => field` (a `Vec` of parts numbered under the
/// `Option` name, or all under the parent's prefix when it is `None`). A name may also be
/// `[names.key]`: the string in the part's `names` field.
/// `param_list!(root Model { ... })` also gives a whole model `named_params` /
/// `named_params_mut`: the lists from the empty prefix.
#[macro_export]
macro_rules! param_list {
    (root $ty:ty { $($entry:tt)* }) => {
        $crate::param_list!($ty { $($entry)* });
        impl $ty {
            /// Every parameter under its checkpoint name, in checkpoint order.
            pub fn named_params(&self) -> Vec<(String, $crate::ParamRef<'_>)> {
                let mut out = Vec::new();
                self.params("", &mut out);
                out
            }
            pub fn named_params_mut(&mut self) -> Vec<(String, $crate::ParamMut<'_>)> {
                let mut out = Vec::new();
                self.params_mut("", &mut out);
                out
            }
        }
    };
    ($ty:ty { $($entry:tt)* }) => {
        impl $ty {
            pub fn params<'a>(&'a self, prefix: &str, out: &mut Vec<(String, $crate::ParamRef<'a>)>) {
                $crate::param_list!(@walk self, prefix, out, params, ParamRef, [&], $($entry)*);
            }
            pub fn params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, $crate::ParamMut<'a>)>) {
                $crate::param_list!(@walk self, prefix, out, params_mut, ParamMut, [&mut], $($entry)*);
            }
        }
    };
    (@name $s:ident, [names . $key:ident]) => { $s.names.$key };
    (@name $s:ident, $name:literal) => { $name };
    (@walk $s:ident, $p:ident, $o:ident, $f:ident, $K:ident, [$($b:tt)*], param $name:tt => $field:ident, $($rest:tt)*) => {
        $o.push((format!("{}{}", $p, $crate::param_list!(@name $s, $name)), $crate::$K::from($($b)* $s.$field)));
        $crate::param_list!(@walk $s, $p, $o, $f, $K, [$($b)*], $($rest)*);
    };
    (@walk $s:ident, $p:ident, $o:ident, $f:ident, $K:ident, [$($b:tt)*], optional $name:tt => $field:ident, $($rest:tt)*) => {
        if let Some(param) = $($b)* $s.$field {
            $o.push((format!("{}{}", $p, $crate::param_list!(@name $s, $name)), $crate::$K::from(param)));
        }
        $crate::param_list!(@walk $s, $p, $o, $f, $K, [$($b)*], $($rest)*);
    };
    (@walk $s:ident, $p:ident, $o:ident, $f:ident, $K:ident, [$($b:tt)*], child $name:tt => $field:ident, $($rest:tt)*) => {
        $s.$field.$f(&format!("{}{}", $p, $crate::param_list!(@name $s, $name)), $o);
        $crate::param_list!(@walk $s, $p, $o, $f, $K, [$($b)*], $($rest)*);
    };
    (@walk $s:ident, $p:ident, $o:ident, $f:ident, $K:ident, [$($b:tt)*], optional_child $name:tt => $field:ident, $($rest:tt)*) => {
        if let Some(child) = $($b)* $s.$field {
            child.$f(&format!("{}{}", $p, $crate::param_list!(@name $s, $name)), $o);
        }
        $crate::param_list!(@walk $s, $p, $o, $f, $K, [$($b)*], $($rest)*);
    };
    (@walk $s:ident, $p:ident, $o:ident, $f:ident, $K:ident, [$($b:tt)*], children $name:tt => $field:ident, $($rest:tt)*) => {
        for (i, child) in ($($b)* $s.$field).into_iter().enumerate() {
            child.$f(&format!("{}{}{}.", $p, $crate::param_list!(@name $s, $name), i), $o);
        }
        $crate::param_list!(@walk $s, $p, $o, $f, $K, [$($b)*], $($rest)*);
    };
    (@walk $s:ident, $p:ident, $o:ident, $f:ident, $K:ident, [$($b:tt)*], sequence [names . $key:ident] => $field:ident, $($rest:tt)*) => {
        // Numbered under the name when there is one, else all under the parent's prefix.
        let name: Option<&str> = $s.names.$key;
        for (i, child) in ($($b)* $s.$field).into_iter().enumerate() {
            let prefix = match name {
                Some(name) => format!("{}{}{}.", $p, name, i),
                None => $p.to_string(),
            };
            child.$f(&prefix, $o);
        }
        $crate::param_list!(@walk $s, $p, $o, $f, $K, [$($b)*], $($rest)*);
    };
    (@walk $s:ident, $p:ident, $o:ident, $f:ident, $K:ident, [$($b:tt)*],) => {};
}

pub use fisherkit_model::{ParamMut, ParamRef};

/// A parameter of the given shape filled with zeros (skeletons are filled from a
/// checkpoint or an initialiser afterwards).
pub fn zeros<const D: usize>(shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::zeros(shape, device))
}

pub fn ones<const D: usize>(shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::ones(shape, device))
}

/// Dropout that is active only when the model is in training mode (independent of
/// whether the device records gradients).
#[derive(Clone, Copy, Debug, Default)]
pub struct Dropout {
    pub rate: f64,
}

impl Dropout {
    /// `x` with each element zeroed with probability `rate` and the rest scaled by
    /// `1/(1 − rate)`.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        if self.rate <= 0.0 {
            return x;
        }
        let keep = 1.0 - self.rate;
        let device = x.device();
        if device.clone().inner() != Device::flex() {
            let mask = x.random_like(Distribution::Bernoulli(keep));
            return x * mask / keep;
        }
        // On the CPU backend burn draws Bernoulli masks one element at a time from one
        // locked ChaCha generator: ≈ 20 % of a BERT fine-tuning step. Here one seed is
        // drawn from the device's generator (so `Device::seed` still makes dropout
        // reproducible) and the mask is a counter-based hash of it, filled in parallel.
        let seed: Vec<f32> = Tensor::<1>::random([2], Distribution::Default, &device)
            .try_into_vec_as()
            .expect("two uniform draws");
        let seed = (u64::from(seed[0].to_bits()) << 32) | u64::from(seed[1].to_bits());
        let shape = x.dims();
        let mask = dropout_mask(seed, shape.iter().product(), keep);
        let mask = Tensor::<D>::from_data(TensorData::new(mask, shape), (&device, x.dtype()));
        x * mask
    }
}

/// `n` values: `1/keep` with probability `keep`, else 0, each from a SplitMix64 hash of
/// `seed` and its index (independent of the thread layout).
fn dropout_mask(seed: u64, n: usize, keep: f64) -> Vec<f32> {
    // Compare 53 uniform bits against keep·2⁵³.
    let threshold = (keep * (1u64 << 53) as f64) as u64;
    let scale = (1.0 / keep) as f32;
    (0..n as u64)
        .into_par_iter()
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if z >> 11 < threshold {
                scale
            } else {
                0.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask keeps `keep` of the elements (binomial bounds), scales them by
    /// `1/keep`, is reproducible under `Device::seed` and differs between calls.
    #[test]
    fn dropout_keeps_the_right_share_reproducibly() {
        let device = Device::flex();
        let n = 1 << 20;
        let x = Tensor::<2>::ones([1024, 1024], &device);
        let dropout = Dropout { rate: 0.1 };
        let draw = |seed| {
            device.seed(seed);
            dropout.apply(x.clone()).try_into_vec_as::<f32>().unwrap()
        };
        let (a, b, c) = (draw(7), draw(7), draw(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let kept = a.iter().filter(|&&v| v != 0.0).count() as f64;
        // Binomial(n, 0.9): standard deviation ≈ 307; allow 6 of them.
        assert!(
            (kept - 0.9 * n as f64).abs() < 6.0 * (n as f64 * 0.09).sqrt(),
            "{kept}"
        );
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // Neighbouring elements are independent: kept pairs ≈ 0.81 of all pairs.
        let pairs = a.windows(2).filter(|w| w[0] != 0.0 && w[1] != 0.0).count() as f64;
        assert!((pairs / (n - 1) as f64 - 0.81).abs() < 0.005, "{pairs}");
        assert_eq!(
            Dropout { rate: 0.0 }
                .apply(x.clone())
                .try_into_vec_as::<f32>()
                .unwrap(),
            vec![1.0; n]
        );
    }
}
