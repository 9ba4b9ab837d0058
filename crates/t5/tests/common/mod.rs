//! The micro T5 the model and backprop tests share.
// Each test binary that includes this module uses a subset of it.
#![allow(dead_code)]

use fisherkit_model::Example;
use fisherkit_t5::T5Config;

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
