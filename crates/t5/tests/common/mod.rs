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
        Example::new(vec![5, 9, 3, 17, 2, 11, 7, 1], vec![4, 8, 15, 16, 1]),
        Example::new(vec![22, 6, 1], vec![12, 1]),
    ]
}

/// Every transformer-modification switch on the micro config (README "Model
/// switches"), from [`T5Config::switch_settings`]; the shared-layer settings get a second
/// decoder layer so that sharing has something to share.
pub fn switches() -> Vec<(String, Vec<(String, String)>)> {
    let mut all = micro_config(false).switch_settings();
    for (name, settings) in &mut all {
        if name.starts_with("share_layers") {
            settings.push(("num_decoder_layers".into(), "2".into()));
        }
    }
    all
}

/// The micro model with `settings`, randomly initialised; then every residual scalar
/// (ReZero's α, Fixup's multiplier and biases) is set to 0.6 and every weight that
/// starts at zero (Fixup's last projections) is redrawn, because zeros would hide the
/// gradients inside the residual branches.
pub fn switch_model(settings: &[(String, String)], seed: u64, device: &Device) -> T5 {
    let config = micro_config(false).with_settings(settings).unwrap();
    let mut model = checkpoint::init(&config, !config.tie_word_embeddings, seed, device).unwrap();
    let replaced: Vec<(String, Vec<f32>)> = model
        .read_params()
        .unwrap()
        .into_iter()
        .filter_map(|(name, values)| {
            if name.contains(".residual_") {
                Some((name, vec![0.6]))
            } else if values.len() > 1
                && values.iter().all(|&v| v == 0.0)
                && !name.ends_with("bias")
            {
                let redrawn = (0..values.len())
                    .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.05)
                    .collect();
                Some((name, redrawn))
            } else {
                None
            }
        })
        .collect();
    model.write_params(&replaced).unwrap();
    model
}
