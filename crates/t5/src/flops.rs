//! Floating-point operations of T5's passes counted from the configuration: the
//! multiply-adds of every matrix product × 2 (projections, attention scores and values,
//! the output head). Element-wise work (norms, softmax, activations) is left out: it is
//! not what the matmul peak measures. The numerator of the benches' share of the peak.

use crate::config::T5Config;

/// One teacher-forced forward pass over `batch` examples of `input_len` input and
/// `target_len` target tokens (every position of the padded lengths, masked ones too).
/// A single-stack LM runs its stack over `input_len + target_len − 1` positions and the
/// head over the target positions.
pub fn forward(config: &T5Config, batch: usize, input_len: usize, target_len: usize) -> f64 {
    let (d, ff) = (config.d_model as f64, config.d_ff as f64);
    let inner = config.inner_dim() as f64;
    let kv_inner = (config.kv_heads() * config.d_kv) as f64;
    let (inputs, targets) = ((batch * input_len) as f64, (batch * target_len) as f64);
    let feed_forward = if config.feed_forward().gated {
        3.0
    } else {
        2.0
    } * d
        * ff;
    // q and o are d × inner, k and v d × (key/value heads × d_kv), per token.
    let projections = 2.0 * d * inner + 2.0 * d * kv_inner;
    // Scores q·k and the weighted values: heads × d_kv multiply-adds each per query-key pair.
    let attention = |queries: usize, keys: usize| 2.0 * (batch * queries * keys) as f64 * inner;
    let width = config.embedding_width() as f64;
    let factorise = |tokens: f64| {
        if config.embedding_width() != config.d_model {
            tokens * width * d
        } else {
            0.0
        }
    };
    let head = targets * d * config.vocab_size as f64;
    // A sparse layer runs the router (d × E) and each token's top-k experts in place of
    // one feed-forward (dropped tokens counted: the nominal cost).
    let (encoder_sparse, decoder_sparse) = config.sparse_layers();
    let sparse_extra = config.routing().map_or(0.0, |r| {
        (r.top_k as f64 - 1.0) * feed_forward + d * r.experts as f64
    });
    let experts = |layers: usize, tokens: f64| layers as f64 * tokens * sparse_extra;
    if config.is_single_stack() {
        let len = (input_len + target_len).saturating_sub(1);
        let tokens = (batch * len) as f64;
        let layer = tokens * (projections + feed_forward) + attention(len, len);
        return 2.0
            * (config.decoder_layers() as f64 * layer
                + experts(decoder_sparse, tokens)
                + factorise(tokens)
                + head);
    }
    let encoder_layer = inputs * (projections + feed_forward) + attention(input_len, input_len);
    let decoder_layer = targets * (projections + feed_forward)
        + attention(target_len, target_len)
        + targets * 2.0 * d * inner
        + inputs * 2.0 * d * kv_inner
        + attention(target_len, input_len);
    2.0 * (config.num_layers as f64 * encoder_layer
        + config.decoder_layers() as f64 * decoder_layer
        + experts(encoder_sparse, inputs)
        + experts(decoder_sparse, targets)
        + factorise(inputs + targets)
        + head)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// t5-small at batch 8, 128 → 32, counted by hand (multiply-adds). Encoder layer:
    /// 1024 tokens × (4·512² + 2·512·2048) + 2·8·128²·512 scores/values. Decoder layer:
    /// 256 × (4·512² + 2·512·2048) + 2·8·32²·512, cross q and o 256 × 2·512², cross k and
    /// v 1024 × 2·512², 2·8·32·128·512. Head: 256 × 512 × 32128. ≈ 66.9 GFLOP, the
    /// figure the speed issue quotes.
    #[test]
    fn t5_small_forward_matches_a_hand_count() {
        let config = T5Config::preset("t5-small").unwrap();
        let per_token: u64 = 4 * 512 * 512 + 2 * 512 * 2048;
        let encoder = 6 * (1024 * per_token + 2 * 8 * 128 * 128 * 512);
        let decoder = 6
            * (256 * per_token
                + 2 * 8 * 32 * 32 * 512
                + 256 * 2 * 512 * 512
                + 1024 * 2 * 512 * 512
                + 2 * 8 * 32 * 128 * 512);
        let head: u64 = 256 * 512 * 32128;
        let hand = 2.0 * (encoder + decoder + head) as f64;
        assert_eq!(forward(&config, 8, 128, 32), hand);
        assert!((hand / 1e9 - 66.9).abs() < 0.05, "{hand}");
    }

    /// A decoder-only t5-small over 128 + 32 tokens: one 6-layer stack over 159 positions
    /// without cross-attention, the head over the 32 target positions.
    #[test]
    fn decoder_only_forward_matches_a_hand_count() {
        let mut config = T5Config::preset("t5-small").unwrap();
        config.architecture = Some("decoder-only".into());
        let per_token: u64 = 4 * 512 * 512 + 2 * 512 * 2048;
        let layer = 8 * 159 * per_token + 2 * 8 * 159 * 159 * 512;
        let head: u64 = 8 * 32 * 512 * 32128;
        assert_eq!(
            forward(&config, 8, 128, 32),
            2.0 * (6 * layer + head) as f64
        );
    }

    /// Grouped-query heads shrink k and v; a gated feed-forward has three matrices.
    #[test]
    fn switches_change_the_count_by_their_matrices() {
        let config = T5Config::preset("t5-small").unwrap();
        let base = forward(&config, 1, 10, 4);
        let mut gated = config.clone();
        gated.feed_forward_proj = "gated-gelu".into();
        // One more d × d_ff matrix per layer over every token of both stacks.
        let extra = 2.0 * 512.0 * 2048.0 * (6.0 * 10.0 + 6.0 * 4.0);
        assert_eq!(forward(&gated, 1, 10, 4) - base, extra);
        let grouped = config
            .with_settings(&[("num_key_value_heads".into(), "2".into())])
            .unwrap();
        // k and v: 512 → 128 columns, for self-attention tokens and cross-attention keys.
        let saved = 2.0 * 2.0 * 512.0 * 384.0 * (6.0 * 10.0 + 6.0 * 4.0 + 6.0 * 10.0);
        assert_eq!(base - forward(&grouped, 1, 10, 4), saved);
    }

    /// Experts every other layer (HF's sparse step 2: layers 1, 3, 5 of 6 per stack),
    /// top-2 of 8: each sparse layer adds a router (512 × 8) and a second expert's
    /// feed-forward per token; top-1 only the router.
    #[test]
    fn sparse_layers_add_a_router_and_the_extra_experts() {
        let config = T5Config::preset("t5-small").unwrap();
        let base = forward(&config, 1, 10, 4);
        let settings = |top_k: &str| {
            [
                ("num_experts", "8"),
                ("num_experts_per_tok", top_k),
                ("encoder_sparse_step", "2"),
                ("decoder_sparse_step", "2"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        };
        let top1 = config.with_settings(&settings("1")).unwrap();
        let top2 = config.with_settings(&settings("2")).unwrap();
        let tokens = 3.0 * 10.0 + 3.0 * 4.0;
        let router = 2.0 * 512.0 * 8.0 * tokens;
        assert_eq!(forward(&top1, 1, 10, 4) - base, router);
        let expert = 2.0 * 2.0 * 512.0 * 2048.0 * tokens;
        assert_eq!(forward(&top2, 1, 10, 4) - base, router + expert);
    }
}
