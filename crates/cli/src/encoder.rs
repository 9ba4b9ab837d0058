//! `fisherkit classify | embed`: encoders (BERT, RoBERTa) over JSONL inputs, one JSON
//! line per input in input order.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use fisherkit_bert::pooling::Pooling;
use fisherkit_model::argmax;
use fisherkit_model::burn::tensor::activation::softmax;
use fisherkit_model::burn::tensor::Tensor;
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
    let source = args.data.display().to_string();
    for_batches(
        &examples,
        args.model.batch_size,
        "inputs",
        &source,
        |batch| {
            let logits = model.logits(batch)?;
            let classes = logits.dims()[2];
            let read = |t: Tensor<3>| {
                t.try_into_vec_as::<f32>()
                    .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))
            };
            let probs = read(softmax(logits.clone(), 2))?;
            let logits = read(logits)?;
            Ok(logits
            .chunks(classes)
            .zip(probs.chunks(classes))
            .map(
                |(row, probs)| json!({"logits": row, "probs": probs, "label": labels[argmax(row)]}),
            )
            .collect())
        },
    )
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
    let source = args.data.display().to_string();
    for_batches(
        &examples,
        args.model.batch_size,
        "inputs",
        &source,
        |batch| {
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
        },
    )
}
