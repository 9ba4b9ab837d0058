//! T5 span corruption (the pre-training objective), as in the reference
//! `random_spans_noise_mask` / `random_spans_helper`.

use rand::seq::SliceRandom;
use rand::Rng;

/// Noise density and mean noise-span length of the paper.
pub const NOISE_DENSITY: f64 = 0.15;
pub const MEAN_NOISE_SPAN_LENGTH: f64 = 3.0;

/// Round half to even, as Python's `round` and `tf.round`.
fn round_even(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

/// Number of noise tokens and noise spans for a sequence of `length` tokens.
pub fn noise_counts(length: usize, noise_density: f64, mean_span: f64) -> (usize, usize) {
    let length = length.max(2);
    let num_noise = round_even(length as f64 * noise_density).clamp(1, length - 1);
    let num_spans = round_even(num_noise as f64 / mean_span).max(1);
    (num_noise, num_spans)
}

/// Split `items` into `segments` random positive parts (uniform over compositions).
fn random_segmentation<R: Rng>(items: usize, segments: usize, rng: &mut R) -> Vec<usize> {
    // Choose segments-1 distinct cut points among the items-1 gaps.
    let mut first_in_segment: Vec<bool> = (0..items - 1).map(|i| i < segments - 1).collect();
    first_in_segment.shuffle(rng);
    let mut lengths = vec![0usize; segments];
    let mut segment = 0;
    lengths[0] = 1;
    for first in first_in_segment {
        segment += usize::from(first);
        lengths[segment] += 1;
    }
    lengths
}

/// The noise mask for a sequence of `length` tokens: starts with non-noise, ends with
/// noise, `num_spans` noise spans in between.
pub fn noise_mask<R: Rng>(
    length: usize,
    noise_density: f64,
    mean_span: f64,
    rng: &mut R,
) -> Vec<bool> {
    let orig_length = length;
    let length = length.max(2);
    let (num_noise, num_spans) = noise_counts(length, noise_density, mean_span);
    let num_nonnoise = length - num_noise;
    // Degenerate short sequences cannot hold more spans than non-noise tokens.
    let num_spans = num_spans.min(num_nonnoise).min(num_noise);
    let noise_lengths = random_segmentation(num_noise, num_spans, rng);
    let nonnoise_lengths = random_segmentation(num_nonnoise, num_spans, rng);
    let mut mask = Vec::with_capacity(length);
    for (keep, noise) in nonnoise_lengths.into_iter().zip(noise_lengths) {
        mask.extend(std::iter::repeat_n(false, keep));
        mask.extend(std::iter::repeat_n(true, noise));
    }
    mask.truncate(orig_length);
    mask
}

/// Apply span corruption to `tokens` (without EOS). `sentinel(i)` is the id of
/// `<extra_id_i>`. Returns `(inputs, targets)`, both ending with `eos`.
pub fn span_corrupt<R: Rng>(
    tokens: &[u32],
    sentinel: impl Fn(usize) -> u32,
    eos: u32,
    rng: &mut R,
) -> (Vec<u32>, Vec<u32>) {
    let mask = noise_mask(tokens.len(), NOISE_DENSITY, MEAN_NOISE_SPAN_LENGTH, rng);
    let mut inputs = Vec::new();
    let mut targets = Vec::new();
    let mut span = 0;
    let mut prev_noise = false;
    for (&tok, &noise) in tokens.iter().zip(&mask) {
        if noise {
            if !prev_noise {
                inputs.push(sentinel(span));
                targets.push(sentinel(span));
                span += 1;
            }
            targets.push(tok);
        } else {
            inputs.push(tok);
        }
        prev_noise = noise;
    }
    inputs.push(eos);
    targets.push(eos);
    (inputs, targets)
}

/// Raw token count whose span-corrupted inputs exactly fill `inputs_length` (one
/// sentinel per span, one EOS), and the resulting targets length.
pub fn raw_length_for_inputs(
    inputs_length: usize,
    noise_density: f64,
    mean_span: f64,
) -> (usize, usize) {
    let lengths = |tokens: usize| {
        let num_noise = round_even(tokens as f64 * noise_density);
        let num_spans = round_even(num_noise as f64 / mean_span);
        (
            tokens - num_noise + num_spans + 1,
            num_noise + num_spans + 1,
        )
    };
    let mut tokens = inputs_length - 1;
    while lengths(tokens + 1).0 <= inputs_length {
        tokens += 1;
    }
    (tokens, lengths(tokens).1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn raw_length_table_of_the_spec() {
        for (inputs, raw, targets) in [
            (512, 568, 114),
            (256, 284, 58),
            (128, 141, 29),
            (64, 70, 14),
        ] {
            assert_eq!(
                raw_length_for_inputs(inputs, 0.15, 3.0),
                (raw, targets),
                "inputs {inputs}"
            );
        }
    }

    #[test]
    fn mask_shape_counts_and_corruption_round_trip() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for length in [2usize, 5, 20, 141, 568] {
            for _ in 0..20 {
                let mask = noise_mask(length, 0.15, 3.0, &mut rng);
                let (num_noise, num_spans) = noise_counts(length, 0.15, 3.0);
                assert_eq!(mask.len(), length);
                assert_eq!(mask.iter().filter(|&&m| m).count(), num_noise);
                assert!(!mask[0] && mask[length - 1], "starts non-noise, ends noise");
                let spans = mask.windows(2).filter(|w| !w[0] && w[1]).count();
                assert_eq!(spans, num_spans, "length {length}");
            }
        }
        // Reassembling inputs and targets gives the original sequence back.
        let tokens: Vec<u32> = (10..151).collect();
        let sentinel = |i: usize| 1000 - i as u32;
        let (inputs, targets) = span_corrupt(&tokens, sentinel, 1, &mut rng);
        assert_eq!(inputs.len(), 128, "141 raw tokens fill 128 inputs");
        assert_eq!(targets.len(), 29);
        let mut rebuilt = Vec::new();
        let mut t = 0;
        for &tok in &inputs[..inputs.len() - 1] {
            if tok >= 900 {
                assert_eq!(targets[t], tok);
                t += 1;
                while t < targets.len() - 1 && targets[t] < 900 {
                    rebuilt.push(targets[t]);
                    t += 1;
                }
            } else {
                rebuilt.push(tok);
            }
        }
        assert_eq!(rebuilt, tokens);
        assert_eq!(*targets.last().unwrap(), 1);
    }

    #[test]
    fn segmentation_is_uniform_over_compositions() {
        // 5 items in 2 positive parts: (1,4) (2,3) (3,2) (4,1), each with probability 1/4.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts = [0usize; 4];
        for _ in 0..8000 {
            let seg = random_segmentation(5, 2, &mut rng);
            assert_eq!(seg.iter().sum::<usize>(), 5);
            counts[seg[0] - 1] += 1;
        }
        for c in counts {
            assert!((c as f64 / 8000.0 - 0.25).abs() < 0.03, "{counts:?}");
        }
    }
}
