//! `fisherkit classify | embed`: encoders (BERT, RoBERTa) over JSONL inputs, one JSON
//! line per input in input order.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use fisherkit_bert::pooling::Pooling;
use fisherkit_model::data::read_classification;
use serde_json::json;

use crate::t5::{for_batches, ModelArgs};

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL: {"text": ...}, {"text": ..., "text_pair": ...} or {"input_ids": [...],
    /// "token_type_ids": [...]} (ids used as given).
    #[arg(long)]
    data: PathBuf,
}

/// Per input: `{"logits": […], "probs": […], "label": "…"}` (the most probable class's
/// name from `id2label`).
pub fn classify(args: ClassifyArgs) -> Result<()> {
    let (model, tokenizer) = args.model.load()?;
    let labels = model.class_labels().to_vec();
    anyhow::ensure!(
        !labels.is_empty(),
        "{}: the model has no classification head (give it one with `fisherkit init --from {} --num-labels N` and train it)",
        args.model.model.display(),
        args.model.model.display()
    );
    let examples = read_classification(&args.data, tokenizer.as_ref(), Some(&labels), false)?;
    for_batches(&examples, args.model.batch_size, "inputs", |batch| {
        let logits = model.logits(batch)?;
        let classes = logits.dims()[2];
        let values = logits
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
        Ok(values
            .chunks(classes)
            .map(|row| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
                let total: f64 = exps.iter().sum();
                let probs: Vec<f32> = exps.iter().map(|e| (e / total) as f32).collect();
                let best = probs
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                json!({"logits": row, "probs": probs, "label": labels[best]})
            })
            .collect())
    })
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL inputs as `classify` takes them.
    #[arg(long)]
    data: PathBuf,
}

/// Per input: `{"embedding": […]}`, pooled as the directory's sentence-transformers
/// files say (mean pooling without them).
pub fn embed(args: EmbedArgs) -> Result<()> {
    let (model, tokenizer) = args.model.load()?;
    let pooling = Pooling::from_dir(&args.model.model)?;
    let examples = read_classification(&args.data, tokenizer.as_ref(), None, false)?;
    for_batches(&examples, args.model.batch_size, "inputs", |batch| {
        let (hidden, _) = model.encoder_states(batch)?;
        let [_, len, d] = hidden.dims();
        let values = hidden
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("reading hidden states: {e:?}"))?;
        Ok(batch
            .iter()
            .enumerate()
            .map(|(i, example)| {
                let start = i * len * d;
                let tokens = &values[start..start + example.input_ids.len() * d];
                json!({"embedding": pooling.pool(tokens, d)})
            })
            .collect())
    })
}
