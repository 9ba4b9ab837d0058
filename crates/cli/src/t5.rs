//! `fisherkit init | score | generate | bench t5`: argument parsing and output
//! formatting. `score` and `generate` load any architecture through the loader registry
//! (`fisherkit-models`); `init` builds T5 presets with their switches, other
//! architectures' presets through the registry, and (`--from`) a new classification head
//! on a pre-trained encoder; `bench t5` builds T5s.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Args;
use fisherkit_common::progress;
use fisherkit_model::data::Targets;
use fisherkit_model::{
    device_by_name, Example, GenerateOptions, LengthPenalty, Model, ParamAccess, Sampling,
    TextTokenizer,
};
use fisherkit_t5::checkpoint;
use fisherkit_t5::T5Config;
use serde_json::json;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Architecture preset: tiny, t5-small, t5-base, t5-large, t5-v1_1-small, t5-v1_1-base,
    /// flan-t5-small, ...; bert-tiny, bert-base, roberta-base, minilm-l6 (see README).
    #[arg(long, required_unless_present = "from", conflicts_with = "from")]
    preset: Option<String>,
    /// A pre-trained BERT/RoBERTa directory to put a new classification head on (with
    /// --labels or --num-labels).
    #[arg(long)]
    from: Option<PathBuf>,
    /// Class names of a new classification head, comma-separated (with --from, or an
    /// encoder preset); its `id2label`.
    #[arg(long, value_delimiter = ',', conflicts_with = "num_labels")]
    labels: Option<Vec<String>>,
    /// Number of classes of a new head, named LABEL_0, LABEL_1, ... (as transformers).
    #[arg(long)]
    num_labels: Option<usize>,
    /// How a T5 preset joins inputs and targets: encoder-decoder (default), decoder-only
    /// (one causal stack over input then target) or prefix-lm (fully visible over the
    /// input); the config key `architecture`.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(fisherkit_t5::config::ARCHITECTURES))]
    arch: Option<String>,
    /// Vocabulary size (default: the tokenizer's size when --tokenizer is given, else the
    /// preset's).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// tokenizer.json to copy into the model directory.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Encoder and decoder depth (depth against width at a fixed budget, with --d-ff and
    /// --heads).
    #[arg(long)]
    layers: Option<usize>,
    /// Feed-forward width.
    #[arg(long)]
    d_ff: Option<usize>,
    /// Attention heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Any config.json key, e.g. `--set feed_forward_proj=gated-silu --set
    /// norm_type=layer` (repeatable; README "Model switches" lists the switches).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// Seed of the random initialisation.
    #[arg(long)]
    seed: u64,
    /// Output model directory (Hugging Face layout).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

pub fn init(args: InitArgs) -> Result<()> {
    let device = device_by_name("cpu")?;
    let labels = match (&args.labels, args.num_labels) {
        (Some(labels), _) => Some(labels.clone()),
        (None, Some(n)) => Some(fisherkit_bert::config::default_labels(n)),
        (None, None) => None,
    };
    if let Some(from) = &args.from {
        let labels =
            labels.context("--from needs the classes: --labels a,b,... or --num-labels N")?;
        let model = fisherkit_bert::checkpoint::with_new_head(from, &labels, args.seed, &device)
            .with_context(|| format!("a new head on {}", from.display()))?;
        let tokenizer = from.join(fisherkit_model::tokenizer::TOKENIZER_FILE);
        let tokenizer = args
            .tokenizer
            .clone()
            .or(tokenizer.exists().then_some(tokenizer));
        let dir =
            fisherkit_bert::checkpoint::save(&model, &args.out, tokenizer.as_deref(), args.force)?;
        eprintln!(
            "initialised a {}-class head on {} ({} parameters) in {}",
            labels.len(),
            from.display(),
            model.num_params(),
            dir.display()
        );
        return Ok(());
    }
    let preset = args
        .preset
        .as_deref()
        .expect("clap requires --preset without --from");
    if !fisherkit_t5::config::PRESETS.contains(&preset) {
        return init_other(&args, preset, labels, &device);
    }
    ensure!(
        labels.is_none(),
        "--labels/--num-labels are for encoders (BERT, RoBERTa); T5 outputs text"
    );
    let mut settings: Vec<(String, String)> = args
        .arch
        .iter()
        .map(|arch| ("architecture".to_string(), arch.clone()))
        .collect();
    for (key, value) in [
        ("num_layers", args.layers),
        ("num_decoder_layers", args.layers),
        ("d_ff", args.d_ff),
        ("num_heads", args.heads),
    ] {
        if let Some(value) = value {
            settings.push((key.to_string(), value.to_string()));
        }
    }
    settings.extend(args.settings.iter().cloned());
    let mut config = T5Config::preset(preset)?.with_settings(&settings)?;
    if let Some(path) = &args.tokenizer {
        let tokenizer = TextTokenizer::load(path, config.eos_token_id)?;
        let size = tokenizer.vocab_size();
        config.vocab_size = args.vocab_size.unwrap_or(size);
        ensure!(
            size <= config.vocab_size,
            "{}: the tokenizer has {size} tokens but --vocab-size is {}",
            path.display(),
            config.vocab_size
        );
    } else if let Some(size) = args.vocab_size {
        config.vocab_size = size;
    }
    let untied = !config.tie_word_embeddings;
    let model = checkpoint::init(&config, untied, args.seed, &device)?;
    let dir = checkpoint::save(&model, &args.out, args.tokenizer.as_deref(), args.force)?;
    // Per token of a 64-token input and 64-token target (attention grows with length).
    let flops = fisherkit_t5::flops::forward(&config, 1, 64, 64) / 128.0;
    let experts = match config.routing() {
        Some(routing) => {
            let (encoder, decoder) = config.sparse_layers();
            format!(
                "; {} experts, top-{}, in {} encoder and {} decoder feed-forwards",
                routing.experts, routing.top_k, encoder, decoder
            )
        }
        None => String::new(),
    };
    eprintln!(
        "initialised {preset} ({} parameters, {:.2} MFLOP per token forward at 64 + 64 tokens{experts}) in {}",
        model.num_params(),
        flops / 1e6,
        dir.display()
    );
    Ok(())
}

/// A preset of another architecture of the registry: its `config.json` with `--set`
/// keys (values parsed as JSON, else taken as strings) and `--num-labels`.
fn init_other(
    args: &InitArgs,
    preset: &str,
    labels: Option<Vec<String>>,
    device: &fisherkit_model::burn::tensor::Device,
) -> Result<()> {
    ensure!(
        args.arch.is_none(),
        "--arch chooses between T5's architectures; {preset} is an encoder"
    );
    ensure!(
        args.layers.is_none() && args.d_ff.is_none() && args.heads.is_none(),
        "--layers, --d-ff and --heads shape T5 presets; set {preset}'s keys with --set (e.g. --set num_hidden_layers=4)"
    );
    let mut config = fisherkit_models::preset(preset)?;
    let object = config
        .as_object_mut()
        .context("a preset is a JSON object")?;
    // The preset's own keys, and the few an encoder preset leaves at their defaults.
    let mut known: Vec<String> = object.keys().cloned().collect();
    known.extend(
        [
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "initializer_range",
        ]
        .map(String::from),
    );
    for (key, _) in &args.settings {
        ensure!(
            known.contains(key),
            "--set {key}: not a key of the {preset} preset; known keys: {}",
            known.join(", ")
        );
    }
    for (key, value) in &args.settings {
        let value = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
        object.insert(key.clone(), value);
    }
    if let Some(labels) = labels {
        let id2label: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), json!(l)))
            .collect();
        object.insert("id2label".into(), id2label.into());
    }
    if let Some(path) = &args.tokenizer {
        let size = TextTokenizer::load(path, 0)?.vocab_size();
        object.insert("vocab_size".into(), json!(args.vocab_size.unwrap_or(size)));
    } else if let Some(size) = args.vocab_size {
        object.insert("vocab_size".into(), json!(size));
    }
    let model = fisherkit_models::init(&config, args.seed, device)?;
    let dir = model.save_checkpoint(&args.out, args.tokenizer.as_deref(), args.force)?;
    eprintln!(
        "initialised {preset} ({} parameters) in {}",
        model.num_params(),
        dir.display()
    );
    Ok(())
}

/// Options every command that reads a model shares.
#[derive(Args, Debug)]
pub(crate) struct ModelArgs {
    /// Model directory (config.json, model.safetensors or sharded index, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Compute device: cpu, or cuda / wgpu in builds with those features.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
}

impl ModelArgs {
    pub fn load(&self) -> Result<(Box<dyn Model>, Option<TextTokenizer>)> {
        ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        let model = fisherkit_models::load(&self.model, &device_by_name(&self.device)?)?;
        let tokenizer = model.tokenizer_in(&self.model)?;
        Ok((model, tokenizer))
    }
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL: {"input": "...", "target": "..."} or {"input_ids": [...], "target_ids": [...]};
    /// for a decoder-only or prefix LM also an input alone, scored token by token.
    #[arg(long)]
    data: PathBuf,
}

/// Run `work` over `examples` in batches with a progress bar, printing one JSON line per
/// example in input order. An error names `source` and the batch's examples.
pub(crate) fn for_batches(
    examples: &[Example],
    batch_size: usize,
    unit: &str,
    source: &str,
    mut work: impl FnMut(&[Example]) -> Result<Vec<serde_json::Value>>,
) -> Result<()> {
    let bar = progress::bar(examples.len() as u64, unit);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (index, batch) in examples.chunks(batch_size).enumerate() {
        let first = index * batch_size + 1;
        let lines = work(batch).with_context(|| {
            format!(
                "{source}: {unit} {first}–{} (JSON lines, blank lines not counted)",
                first + batch.len() - 1
            )
        })?;
        for line in lines {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

pub fn score(args: ScoreArgs) -> Result<()> {
    let (model, tokenizer) = args.model.load()?;
    let examples = fisherkit_model::data::read_examples(
        &args.data,
        tokenizer.as_ref(),
        model.vocab_size(),
        Targets::for_model(&*model),
    )?;
    let source = args.data.display().to_string();
    for_batches(
        &examples,
        args.model.batch_size,
        "examples",
        &source,
        |batch| {
            let scores = fisherkit_model::score(&*model, batch)?;
            Ok(scores
                .into_iter()
                .map(|token_logprobs| {
                    let sum: f64 = token_logprobs.iter().map(|&v| v as f64).sum();
                    json!({"target_logprob_sum": sum, "token_logprobs": token_logprobs})
                })
                .collect())
        },
    )
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL with "input" (text) or "input_ids" per line.
    #[arg(long, conflicts_with = "text", required_unless_present = "text")]
    data: Option<PathBuf>,
    /// One input text (needs the model's tokenizer.json).
    #[arg(long)]
    text: Option<String>,
    /// Beam width; 1 is greedy.
    #[arg(long, default_value_t = 1)]
    num_beams: usize,
    /// HF length penalty A: hypotheses compared by score / length^A (0: raw sum).
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f64,
    /// Use the T5 paper's GNMT penalty score / ((5+len)/6)^alpha with this alpha instead
    /// (the paper used 0.6).
    #[arg(long)]
    gnmt_alpha: Option<f64>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sample instead of taking the most likely token, with logits divided by this
    /// temperature (also turned on by --top-k or --top-p).
    #[arg(long, conflicts_with = "num_beams")]
    temperature: Option<f64>,
    /// Sample from the K most likely tokens only.
    #[arg(long, conflicts_with = "num_beams")]
    top_k: Option<usize>,
    /// Sample from the smallest set of most likely tokens whose probability reaches P.
    #[arg(long, conflicts_with = "num_beams")]
    top_p: Option<f64>,
    /// Seed of the sampling draws (batch b of --batch-size inputs draws from seed + b).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let (model, tokenizer) = args.model.load()?;
    let examples = match (&args.data, &args.text) {
        (Some(path), _) => fisherkit_model::data::read_examples(
            path,
            tokenizer.as_ref(),
            model.vocab_size(),
            Targets::Optional,
        )?,
        (None, Some(text)) => {
            ensure!(!text.trim().is_empty(), "--text is empty");
            let tokenizer = tokenizer.as_ref().with_context(|| {
                format!(
                    "--text needs a tokenizer, but {} has no tokenizer.json",
                    args.model.model.display()
                )
            })?;
            vec![Example::new(tokenizer.encode(text)?, Vec::new())]
        }
        (None, None) => unreachable!("clap requires --data or --text"),
    };
    let options = GenerateOptions {
        num_beams: args.num_beams,
        length_penalty: match args.gnmt_alpha {
            Some(alpha) => LengthPenalty::Gnmt(alpha),
            None => LengthPenalty::Power(args.length_penalty),
        },
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: 0,
        sampling: (args.temperature.is_some() || args.top_k.is_some() || args.top_p.is_some())
            .then_some(Sampling {
                temperature: args.temperature.unwrap_or(1.0),
                top_k: args.top_k,
                top_p: args.top_p,
                seed: args.seed,
            }),
    };
    let source = match &args.data {
        Some(path) => path.display().to_string(),
        None => "--text".to_string(),
    };
    let mut batch_number = 0u64;
    for_batches(
        &examples,
        args.model.batch_size,
        "inputs",
        &source,
        |batch| {
            let inputs: Vec<Vec<u32>> = batch.iter().map(|e| e.input_ids.clone()).collect();
            // Each batch draws from its own stream, so equal prompts in different batches
            // get independent samples.
            let mut options = options;
            if let Some(sampling) = &mut options.sampling {
                sampling.seed = sampling.seed.wrapping_add(batch_number);
            }
            batch_number += 1;
            model
                .generate(&inputs, &options)?
                .into_iter()
                .map(|ids| match &tokenizer {
                    Some(tokenizer) => Ok(json!({"ids": ids, "text": tokenizer.decode(&ids)?})),
                    None => Ok(json!({ "ids": ids })),
                })
                .collect()
        },
    )
}

/// The workload the T5 benchmarks time: a preset with random weights, `batch` inputs of
/// `input_len` tokens, and `target_len` target (teacher forcing) or new (generation) tokens.
#[derive(Args, Debug)]
pub struct BenchShape {
    /// Architecture preset (a `fisherkit init` preset), randomly initialised.
    #[arg(long, default_value = "t5-small")]
    pub preset: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub input_len: usize,
    #[arg(long, default_value_t = 32)]
    pub target_len: usize,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    shape: BenchShape,
    /// Timed repetitions (the best is reported) after one warm-up.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Write the numbers as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Best wall time of `repeats` runs of `f` after one warm-up.
fn best_time(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let shape = &args.shape;
    let config = T5Config::preset(&shape.preset)?;
    let model = checkpoint::init(
        &config,
        !config.tie_word_embeddings,
        0,
        &device_by_name("cpu")?,
    )?;
    let inputs: Vec<Vec<u32>> = (0..shape.batch)
        .map(|b| {
            (0..shape.input_len)
                .map(|t| 3 + ((b * 7919 + t * 104_729) % (config.vocab_size - 3)) as u32)
                .collect()
        })
        .collect();
    let batch: Vec<Example> = inputs
        .iter()
        .map(|input| Example::new(input.clone(), input[..shape.target_len].to_vec()))
        .collect();
    let forward_s = best_time(args.repeats, || {
        fisherkit_t5::score(&model, &batch).map(|_| ())
    })?;
    // The encoder alone: generation time minus this is the incremental decoding.
    let encode_s = best_time(args.repeats, || model.encode(&inputs).map(|_| ()))?;
    let options = GenerateOptions {
        num_beams: 1,
        length_penalty: LengthPenalty::Power(1.0),
        max_new_tokens: shape.target_len,
        min_new_tokens: shape.target_len,
        sampling: None,
    };
    let generate_s = best_time(args.repeats, || {
        fisherkit_model::generate::generate(&model, &inputs, &options).map(|_| ())
    })?;
    let forward_tokens = shape.batch * (shape.input_len + shape.target_len);
    let forward = fisherkit_model::peak::Workload {
        name: "forward",
        flops: Model::forward_flops(&model, shape.batch, shape.input_len, shape.target_len),
        seconds: forward_s,
    };
    let peak =
        fisherkit_model::peak::workload_peak(model.dominant_matmul(shape.batch * shape.input_len))?;
    let mut report = json!({
        "preset": shape.preset,
        "params": model.num_params(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "batch": shape.batch,
        "input_len": shape.input_len,
        "target_len": shape.target_len,
        "forward_s": forward_s,
        "forward_tokens_per_s": forward_tokens as f64 / forward_s,
        "encode_s": encode_s,
        "generate_s": generate_s,
        "generate_tokens_per_s": (shape.batch * shape.target_len) as f64 / generate_s,
    });
    let share = fisherkit_model::peak::share_of_peak(peak, &[forward]);
    for (key, value) in share.as_object().expect("an object") {
        report[key] = value.clone();
    }
    println!("{report}");
    if let Some(path) = &args.json {
        fisherkit_common::atomic::write_json(Path::new(path), &report)?;
    }
    Ok(())
}
