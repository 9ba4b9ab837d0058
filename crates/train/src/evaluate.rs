//! Generation-based evaluation: decode predictions for text inputs and score them with
//! the task metrics.

use fisherkit_common::{anyhow, Result};
use fisherkit_model::{GenerateOptions, LengthPenalty, Model};
use tokenizers::Tokenizer;

/// Decoding settings of an evaluation.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    pub max_new_tokens: usize,
    pub num_beams: usize,
    pub batch_size: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            num_beams: 1,
            batch_size: 64,
        }
    }
}

/// Token ids of each text with EOS appended.
pub fn encode_all(tokenizer: &Tokenizer, texts: &[String]) -> Result<Vec<Vec<u32>>> {
    texts
        .iter()
        .map(|t| fisherkit_tasks::tokenizer::encode(tokenizer, t))
        .collect()
}

/// Generated token ids for each input (in input order). Inputs are batched by length.
pub fn generate_ids(
    model: &dyn Model,
    inputs: &[Vec<u32>],
    opts: &DecodeOptions,
) -> Result<Vec<Vec<u32>>> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| inputs[i].len());
    let options = GenerateOptions {
        num_beams: opts.num_beams,
        // The T5 paper's beam search uses the GNMT length penalty with alpha 0.6.
        length_penalty: if opts.num_beams > 1 {
            LengthPenalty::Gnmt(0.6)
        } else {
            LengthPenalty::Power(1.0)
        },
        max_new_tokens: opts.max_new_tokens,
        min_new_tokens: 0,
    };
    let mut out = vec![Vec::new(); inputs.len()];
    for chunk in order.chunks(opts.batch_size.max(1)) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| inputs[i].clone()).collect();
        let generated = model.generate(&batch, &options)?;
        for (&i, ids) in chunk.iter().zip(generated) {
            out[i] = ids;
        }
    }
    Ok(out)
}

/// Decoded predictions for text inputs.
pub fn predict(
    model: &dyn Model,
    tokenizer: &Tokenizer,
    inputs: &[String],
    opts: &DecodeOptions,
) -> Result<Vec<String>> {
    let ids = encode_all(tokenizer, inputs)?;
    generate_ids(model, &ids, opts)?
        .iter()
        .map(|g| fisherkit_tasks::tokenizer::decode(tokenizer, g))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| anyhow!("decoding predictions: {e}"))
}
