//! BERT and RoBERTa encoders as in Hugging Face `modeling_bert.py` /
//! `modeling_roberta.py`, assembled from the model parts of `fisherkit_nn`: word,
//! position and token-type embeddings summed and layer-normed; post-norm layers
//! (`LayerNorm(x + Attention(x))`, `LayerNorm(x + FeedForward(x))`) with biased
//! projections and `d^-½`-scaled attention; BERT's pooler (dense + tanh on `[CLS]`) and
//! classifier, or RoBERTa's classification head (dense + tanh + out_proj on `<s>`).
//!
//! Parameters keep the HF names and `[out, in]` layout: `bert.…`/`roberta.…` inside a
//! sequence classifier, unprefixed in a bare `BertModel` checkpoint.

use anyhow::{bail, ensure, Result};
use fisherkit_model::burn::module::Module;
use fisherkit_model::burn::tensor::{DType, Device, Int, Tensor, TensorData};
use fisherkit_model::{burn, Example};
use fisherkit_nn::attention::{token_mask, AttentionShape, MASKED};
use fisherkit_nn::{
    param_list, Attention, AttentionNames, Dropout, Embedding, FeedForward, FeedForwardNames,
    Linear, Norm, NormKind,
};

use crate::config::{BertConfig, Family};

const ATTENTION_NAMES: AttentionNames = AttentionNames {
    q: "self.query.",
    k: "self.key.",
    v: "self.value.",
    o: "output.dense.",
    relative_bias: "relative_attention_bias.",
};
const FEED_FORWARD_NAMES: FeedForwardNames = FeedForwardNames {
    dense: "intermediate.dense.",
    gate_act: "intermediate.gate.",
    gate_linear: "intermediate.linear.",
    output: "output.dense.",
};

/// One post-norm encoder layer.
#[derive(Module, Debug)]
pub struct Layer {
    pub attention: Attention,
    pub attention_norm: Norm,
    pub feed_forward: FeedForward,
    pub output_norm: Norm,
}

param_list!(Layer {
    child "attention." => attention,
    child "attention.output.LayerNorm." => attention_norm,
    child "" => feed_forward,
    child "output.LayerNorm." => output_norm,
});

impl Layer {
    fn new(config: &BertConfig, device: &Device) -> Self {
        let d = config.hidden_size;
        let shape = AttentionShape {
            d_model: d,
            heads: config.num_attention_heads,
            kv_heads: config.num_attention_heads,
            d_kv: config.head_dim(),
            scale: (config.head_dim() as f64).powf(-0.5),
            bias: true,
            rotary: None,
        };
        let norm = || Norm::new(NormKind::Layer, d, config.layer_norm_eps, device);
        Self {
            attention: Attention::new(shape, None, ATTENTION_NAMES, device),
            attention_norm: norm(),
            feed_forward: FeedForward::new(
                config.feed_forward(),
                d,
                config.intermediate_size,
                true,
                FEED_FORWARD_NAMES,
                device,
            ),
            output_norm: norm(),
        }
    }

    fn forward(&self, x: Tensor<3>, mask: Tensor<4>, dropout: Dropouts) -> Tensor<3> {
        let kv = self.attention.key_value(x.clone(), 0);
        let attended = self
            .attention
            .attend(x.clone(), &kv, mask, 0, dropout.attention);
        let x = self
            .attention_norm
            .forward(x + dropout.hidden.apply(attended));
        // HF applies no dropout inside the feed-forward, only after its output.
        let hidden = self.feed_forward.forward(x.clone(), Dropout::default());
        self.output_norm.forward(x + dropout.hidden.apply(hidden))
    }
}

/// The encoder: embeddings, layers and (BERT, RobertaModel) the pooler.
#[derive(Module, Debug)]
pub struct Encoder {
    pub word: Embedding,
    pub positions: Embedding,
    pub token_types: Embedding,
    pub embedding_norm: Norm,
    pub layers: Vec<Layer>,
    pub pooler: Option<Linear>,
}

param_list!(Encoder {
    child "embeddings.word_embeddings." => word,
    child "embeddings.position_embeddings." => positions,
    child "embeddings.token_type_embeddings." => token_types,
    child "embeddings.LayerNorm." => embedding_norm,
    children "encoder.layer." => layers,
    optional_child "pooler.dense." => pooler,
});

/// Which classification head a model has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// A bare encoder (`BertModel`, `RobertaModel`): hidden states and embeddings only.
    None,
    /// `BertForSequenceClassification`: `classifier(pooler(h[CLS]))`.
    Bert,
    /// `RobertaForSequenceClassification`: `out_proj(tanh(dense(h[<s>])))`.
    Roberta,
}

#[derive(Clone, Copy, Debug)]
struct Names {
    body: &'static str,
    classifier: &'static str,
}

#[derive(Clone, Copy, Debug)]
struct Dropouts {
    hidden: Dropout,
    attention: Dropout,
}

/// A BERT or RoBERTa encoder, with or without a sequence-classification head.
#[derive(Module, Debug)]
pub struct Bert {
    pub encoder: Encoder,
    /// RoBERTa's `classifier.dense`.
    pub head_dense: Option<Linear>,
    /// BERT's `classifier`, RoBERTa's `classifier.out_proj`.
    pub classifier: Option<Linear>,
    #[module(skip)]
    names: Names,
    #[module(skip)]
    pub(crate) config: BertConfig,
    #[module(skip)]
    pub(crate) training: bool,
}

param_list!(root Bert {
    child [names.body] => encoder,
    optional_child "classifier.dense." => head_dense,
    optional_child [names.classifier] => classifier,
});

/// One padded batch on the device.
struct Padded {
    ids: Tensor<2, Int>,
    token_types: Tensor<2, Int>,
    positions: Tensor<2, Int>,
    /// `[batch, 1, 1, len]`: 0 for tokens, [`MASKED`] for padding.
    additive_mask: Tensor<4>,
}

impl Bert {
    /// The architecture with zero weights (norms 1): filled by a checkpoint or an
    /// initialiser. `head`: the classification head (its size is `config.labels`);
    /// `pooler`: whether the encoder has BERT's pooler (a BERT classifier needs it).
    pub fn skeleton(
        config: &BertConfig,
        head: Head,
        pooler: bool,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let d = config.hidden_size;
        let classes = config.labels.len();
        match (head, config.family) {
            (Head::None, _) => {}
            (Head::Bert, Family::Bert) => {
                ensure!(pooler, "a BERT sequence classifier needs the pooler")
            }
            (Head::Roberta, Family::Roberta) => {}
            (head, family) => bail!("a {head:?} head on a {family:?} encoder"),
        }
        if head != Head::None {
            ensure!(
                classes > 0,
                "a classification head needs labels (id2label or num_labels in config.json)"
            );
        }
        let prefixed = head != Head::None;
        Ok(Self {
            encoder: Encoder {
                word: Embedding::new(config.vocab_size, d, d, device),
                positions: Embedding::new(config.max_position_embeddings, d, d, device),
                token_types: Embedding::new(config.type_vocab_size, d, d, device),
                embedding_norm: Norm::new(NormKind::Layer, d, config.layer_norm_eps, device),
                layers: (0..config.num_hidden_layers)
                    .map(|_| Layer::new(config, device))
                    .collect(),
                pooler: pooler.then(|| Linear::new(d, d, true, device)),
            },
            head_dense: (head == Head::Roberta).then(|| Linear::new(d, d, true, device)),
            classifier: (head != Head::None).then(|| Linear::new(d, classes, true, device)),
            names: Names {
                body: if prefixed {
                    config.family.body_prefix()
                } else {
                    ""
                },
                classifier: match head {
                    Head::Roberta => "classifier.out_proj.",
                    _ => "classifier.",
                },
            },
            config: config.clone(),
            training: false,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn head(&self) -> Head {
        match (&self.classifier, &self.head_dense) {
            (None, _) => Head::None,
            (Some(_), None) => Head::Bert,
            (Some(_), Some(_)) => Head::Roberta,
        }
    }

    /// Class names of the head, by index (empty without a head).
    pub fn labels(&self) -> &[String] {
        if self.classifier.is_some() {
            &self.config.labels
        } else {
            &[]
        }
    }

    pub fn device(&self) -> Device {
        self.encoder.word.table.val().device()
    }

    pub fn dtype(&self) -> DType {
        self.encoder.word.table.val().dtype()
    }

    fn dropouts(&self) -> Dropouts {
        let rate = |r: f64| Dropout {
            rate: if self.training { r } else { 0.0 },
        };
        Dropouts {
            hidden: rate(self.config.hidden_dropout_prob),
            attention: rate(self.config.attention_probs_dropout_prob),
        }
    }

    fn pad(&self, batch: &[Example]) -> Result<Padded> {
        ensure!(!batch.is_empty(), "empty batch");
        for (i, example) in batch.iter().enumerate() {
            self.config.check_input(example, i)?;
        }
        let len = batch.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
        let rows = batch.len();
        let pad = self.config.pad_token_id;
        let (mut ids, mut types, mut positions, mut mask) = (
            Vec::with_capacity(rows * len),
            Vec::with_capacity(rows * len),
            Vec::with_capacity(rows * len),
            Vec::with_capacity(rows * len),
        );
        for example in batch {
            let n = example.input_ids.len();
            for t in 0..len {
                ids.push(example.input_ids.get(t).copied().unwrap_or(pad) as i64);
                types.push(example.token_type_ids.get(t).copied().unwrap_or(0) as i64);
                mask.push(if t < n { 0.0f32 } else { MASKED });
            }
            positions.extend(self.config.position_ids(&example.input_ids, len));
        }
        let device = self.device();
        let int =
            |values: Vec<i64>| Tensor::from_data(TensorData::new(values, [rows, len]), &device);
        Ok(Padded {
            ids: int(ids),
            token_types: int(types),
            positions: int(positions),
            additive_mask: Tensor::from_data(
                TensorData::new(mask, [rows, 1, 1, len]),
                (&device, self.dtype()),
            ),
        })
    }

    /// The last layer's hidden states `[batch, len, hidden]` over a padded batch (rows
    /// past an input's length are padding) and the 1/0 token mask `[batch, len]`.
    pub fn hidden_states(&self, batch: &[Example]) -> Result<(Tensor<3>, Tensor<2>)> {
        let padded = self.pad(batch)?;
        let dropout = self.dropouts();
        let encoder = &self.encoder;
        let embedded = encoder.word.forward(padded.ids)
            + encoder.positions.forward(padded.positions)
            + encoder.token_types.forward(padded.token_types);
        let mut x = dropout
            .hidden
            .apply(encoder.embedding_norm.forward(embedded));
        for layer in &encoder.layers {
            x = layer.forward(x, padded.additive_mask.clone(), dropout);
        }
        Ok((x, token_mask(padded.additive_mask)))
    }

    /// The head's logits `[batch, classes]`.
    pub fn class_logits(&self, batch: &[Example]) -> Result<Tensor<2>> {
        let classifier = match &self.classifier {
            Some(classifier) => classifier,
            None => bail!(
                "this {} checkpoint has no classification head (give it one with `fisherkit init --from DIR --num-labels N`)",
                self.config.family.model_type()
            ),
        };
        let (hidden, _) = self.hidden_states(batch)?;
        let rows = hidden.dims()[0];
        let first = hidden.narrow(1, 0, 1);
        let dropout = self.dropouts().hidden;
        let features = match (&self.head_dense, &self.encoder.pooler) {
            (Some(dense), _) => dense.forward(dropout.apply(first)).tanh(),
            (None, Some(pooler)) => pooler.forward(first).tanh(),
            (None, None) => bail!("a BERT classifier without a pooler"),
        };
        let logits = classifier.forward(dropout.apply(features));
        Ok(logits.reshape([rows, classifier.d_out()]))
    }
}
