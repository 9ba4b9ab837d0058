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
        sampling: None,
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

/// A classifier's most probable class for each example (in input order), `batch_size`
/// examples per forward pass, inputs batched by length.
pub fn predict_classes(
    model: &dyn Model,
    examples: &[fisherkit_model::Example],
    batch_size: usize,
) -> Result<Vec<usize>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].input_ids.len());
    let mut out = vec![0; examples.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<_> = chunk.iter().map(|&i| examples[i].clone()).collect();
        let logits = model.logits(&batch)?;
        let classes = logits.dims()[2];
        let values = logits
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow!("reading logits: {e:?}"))?;
        for (&i, row) in chunk.iter().zip(values.chunks(classes)) {
            out[i] = fisherkit_model::argmax(row);
        }
    }
    Ok(out)
}

/// Class metrics (accuracy, F1, ...) of a classifier on labelled examples: the label names
/// of its predictions against the examples' labels.
pub fn classifier_metrics(
    model: &dyn Model,
    examples: &[fisherkit_model::Example],
    metrics: &[String],
    batch_size: usize,
) -> Result<(fisherkit_tasks::metrics::Scores, Vec<String>)> {
    let labels = model.class_labels().to_vec();
    let predictions: Vec<String> = predict_classes(model, examples, batch_size)?
        .into_iter()
        .map(|c| labels[c].clone())
        .collect();
    let references: Vec<String> = examples
        .iter()
        .map(|e| labels[e.target_ids[0] as usize].clone())
        .collect();
    let scores =
        fisherkit_tasks::metrics::evaluate(&predictions, &references, metrics, Some(&labels))?;
    Ok((scores, predictions))
}

/// The metrics classifier evaluation reports when none are asked for.
pub const CLASSIFIER_METRICS: [&str; 2] = ["accuracy", "macro-f1"];
