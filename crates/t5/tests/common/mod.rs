//! The micro T5 the model and backprop tests share.
// Each test binary that includes this module uses a subset of it.
#![allow(dead_code)]

use fisherkit_model::burn::tensor::Device;
use fisherkit_model::{Example, ParamAccess};
use fisherkit_t5::{checkpoint, T5Config, T5};

/// A micro T5 with every special case: inner dim != d_model, two stacks of different
/// depth, few buckets so long offsets hit the logarithmic buckets.
pub fn micro_config(gated: bool) -> T5Config {
    let mut config = T5Config::preset("t5-small").unwrap();
    config.vocab_size = 23;
    config.d_model = 8;
    config.d_kv = 3;
    config.num_heads = 2;
    config.d_ff = 10;
    config.num_layers = 2;
    config.num_decoder_layers = Some(1);
    config.relative_attention_num_buckets = 8;
    config.relative_attention_max_distance = 12;
    config.dropout_rate = 0.0;
    if gated {
        config.feed_forward_proj = "gated-gelu".into();
        config.tie_word_embeddings = false;
        config.scale_decoder_outputs = Some(false);
    }
    config
}

pub fn micro_batch() -> Vec<Example> {
    vec![
        Example {
            input_ids: vec![5, 9, 3, 17, 2, 11, 7, 1],
            target_ids: vec![4, 8, 15, 16, 1],
        },
        Example {
            input_ids: vec![22, 6, 1],
            target_ids: vec![12, 1],
        },
    ]
}

/// Every transformer-modification switch as `init --set` settings on the micro config
/// (README "Model switches"): each activation plain and gated, each normalisation, each
/// position encoding, factorised embeddings, layer sharing, grouped-query attention.
pub fn switches() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    let mut all: Vec<(&'static str, Vec<(&'static str, &'static str)>)> = [
        "relu", "gelu", "gelu_new", "silu", "elu", "selu", "sigmoid", "softplus",
        "gated-relu", "gated-gelu", "gated-gelu_new", "gated-silu", "gated-elu", "gated-selu",
        "gated-sigmoid", "gated-softplus", "gated-linear",
    ]
    .into_iter()
    .map(|act| (act, vec![("feed_forward_proj", act)]))
    .collect();
    for norm in ["layer", "rezero", "rezero_layer", "rezero_rms", "fixup"] {
        all.push((norm, vec![("norm_type", norm)]));
    }
    all.push(("absolute", vec![("position_embedding_type", "absolute"), ("max_position_embeddings", "48")]));
    all.push(("sinusoidal", vec![("position_embedding_type", "sinusoidal")]));
    all.push(("rotary", vec![("position_embedding_type", "rotary"), ("d_kv", "4")]));
    all.push(("factorised", vec![("embedding_dim", "5"), ("tie_word_embeddings", "false"), ("scale_decoder_outputs", "false")]));
    for share in ["encoder", "decoder", "all"] {
        all.push((share, vec![("share_layers", share), ("num_decoder_layers", "2")]));
    }
    all.push(("grouped-query", vec![("num_heads", "4"), ("num_key_value_heads", "2")]));
    all
}

/// The micro model with `settings`, randomly initialised; then every residual scalar
/// (ReZero's α, Fixup's multiplier and biases) is set to 0.6 and every weight that
/// starts at zero (Fixup's last projections) is redrawn, because zeros would hide the
/// gradients inside the residual branches.
pub fn switch_model(settings: &[(&str, &str)], seed: u64, device: &Device) -> T5 {
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = micro_config(false).with_settings(&settings).unwrap();
    let mut model = checkpoint::init(&config, !config.tie_word_embeddings, seed, device).unwrap();
    let replaced: Vec<(String, Vec<f32>)> = model
        .read_params()
        .unwrap()
        .into_iter()
        .filter_map(|(name, values)| {
            if name.contains(".residual_") {
                Some((name, vec![0.6]))
            } else if values.len() > 1 && values.iter().all(|&v| v == 0.0) && !name.ends_with("bias") {
                let redrawn = (0..values.len()).map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.05).collect();
                Some((name, redrawn))
            } else {
                None
            }
        })
        .collect();
    model.write_params(&replaced).unwrap();
    model
}
