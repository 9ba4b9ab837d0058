//! End-to-end behaviour of the training loop on a tiny T5.

use fisherkit_model::burn::tensor::Device;
use fisherkit_model::{Example, LogProbModel, Model, ParamAccess};
use fisherkit_train::data::BatchBy;
use fisherkit_train::optim::{AdafactorConfig, AdamWConfig, OptimizerConfig};
use fisherkit_train::schedule::{Schedule, ScheduleKind};
use fisherkit_train::trainer::{self, RunOptions, TrainConfig, TrainData};

/// burn's flex backend keeps one process-wide RNG that `train` reseeds before every
/// micro-batch (dropout masks), so trainings in parallel test threads would draw from
/// each other's streams. Each test holds this lock while it trains.
static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    BACKEND_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tiny_config(dropout: f64) -> serde_json::Value {
    serde_json::json!({
        "model_type": "t5",
        "vocab_size": 24,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 48,
        "num_layers": 1,
        "num_decoder_layers": 1,
        "num_heads": 2,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
        "dropout_rate": dropout,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": false,
        "scale_decoder_outputs": false,
    })
}

fn model(dropout: f64, seed: u64) -> Box<dyn Model> {
    fisherkit_models::init(&tiny_config(dropout), seed, &Device::flex().autodiff()).unwrap()
}

/// Reverse-the-sequence examples over ids 3..20, ending with EOS 1.
fn examples(n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let len = 2 + i % 4;
            let seq: Vec<u32> = (0..len)
                .map(|j| 3 + ((i * 5 + j * 7) % 17) as u32)
                .collect();
            let mut input_ids = seq.clone();
            input_ids.push(1);
            let mut target_ids: Vec<u32> = seq.into_iter().rev().collect();
            target_ids.push(1);
            Example::new(input_ids, target_ids)
        })
        .collect()
}

fn config(
    optimizer: OptimizerConfig,
    lr: f64,
    steps: u64,
    batch: BatchBy,
    accum: usize,
) -> TrainConfig {
    TrainConfig {
        optimizer,
        schedule: Schedule::new(ScheduleKind::Constant, lr, 0, steps).unwrap(),
        batch,
        grad_accum: accum,
        max_grad_norm: Some(1.0),
        z_loss: 0.0,
        seed: 7,
        total_steps: steps,
        log_every: 1,
        eval_every: None,
        checkpoint_every: None,
        keep_checkpoints: 2,
    }
}

fn run_opts(out: &std::path::Path) -> RunOptions<'_> {
    RunOptions {
        out,
        resume: false,
        stop_after: None,
        tokenizer: None,
        validator: None,
        quiet: true,
    }
}

#[test]
fn overfits_a_handful_of_examples_and_saved_model_scores_the_same() {
    std::env::set_var("FISHERKIT_NO_PROGRESS", "1");
    let _serial = serial();
    let data = examples(4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        OptimizerConfig::Adamw(AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        }),
        1e-2,
        200,
        BatchBy::Examples(4),
        1,
    );
    let (trained, summary) = trainer::train(
        model(0.0, 1),
        TrainData {
            train: &data,
            valid: Some(&data),
        },
        &cfg,
        run_opts(dir.path()),
    )
    .unwrap();
    assert!(summary.final_loss < 0.05, "loss {}", summary.final_loss);
    assert!(!summary.stopped_early);

    // The saved model (HF layout) loads and its loss equals the in-memory model's.
    let in_memory = trainer::mean_loss(&*trained.without_autodiff(), &data, 8).unwrap();
    assert!(in_memory < 0.05, "{in_memory}");
    let loaded = fisherkit_models::load(&dir.path().join("model"), &Device::flex()).unwrap();
    let from_disk = trainer::mean_loss(&*loaded, &data, 8).unwrap();
    assert!(
        (from_disk - in_memory).abs() < 1e-6,
        "{from_disk} vs {in_memory}"
    );
    // `score` (per-token log-probs) agrees with the training loss.
    let scored = fisherkit_model::score(&*loaded, &data).unwrap();
    let nll: f64 = -scored.iter().flatten().map(|&x| x as f64).sum::<f64>();
    let tokens: usize = data.iter().map(|e| e.target_ids.len()).sum();
    assert!((nll / tokens as f64 - from_disk).abs() < 1e-5);
    // HF names and config keys.
    let cfg_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("model/config.json")).unwrap(),
    )
    .unwrap();
    for key in [
        "d_model",
        "d_kv",
        "d_ff",
        "num_layers",
        "num_heads",
        "vocab_size",
        "feed_forward_proj",
        "tie_word_embeddings",
    ] {
        assert!(cfg_json.get(key).is_some(), "config.json lacks {key}");
    }
    let st = fisherkit_common::st::MappedFile::open(&dir.path().join("model/model.safetensors"))
        .unwrap();
    let names = st.names_in_order().unwrap();
    for n in [
        "shared.weight",
        "encoder.block.0.layer.0.SelfAttention.q.weight",
        "decoder.block.0.layer.1.EncDecAttention.o.weight",
        "lm_head.weight",
    ] {
        assert!(names.iter().any(|x| x == n), "missing {n}");
    }
    // metrics.jsonl has one row per step plus the final validation.
    let log = std::fs::read_to_string(dir.path().join(trainer::METRICS_FILE)).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"loss\"")).count(), 200);
    assert!(log.contains("valid_loss"));
}

#[test]
fn resume_continues_exactly() {
    std::env::set_var("FISHERKIT_NO_PROGRESS", "1");
    let _serial = serial();
    let data = examples(10);
    // Dropout, z-loss, Adafactor with a first moment, token batching and accumulation:
    // every piece of state that resume must restore.
    let mut cfg = config(
        OptimizerConfig::Adafactor(AdafactorConfig {
            beta1: Some(0.9),
            ..Default::default()
        }),
        1e-2,
        6,
        BatchBy::Tokens(40),
        2,
    );
    cfg.z_loss = 1e-4;
    let full_dir = tempfile::tempdir().unwrap();
    let (full, _) = trainer::train(
        model(0.1, 3),
        TrainData {
            train: &data,
            valid: None,
        },
        &cfg,
        run_opts(full_dir.path()),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut first = run_opts(dir.path());
    first.stop_after = Some(4);
    let (_, s) = trainer::train(
        model(0.1, 3),
        TrainData {
            train: &data,
            valid: None,
        },
        &cfg,
        first,
    )
    .unwrap();
    assert!(s.stopped_early && s.steps == 4);
    assert!(trainer::latest_checkpoint(dir.path()).unwrap().is_some());
    let mut second = run_opts(dir.path());
    second.resume = true;
    // A different initial model: everything must come from the checkpoint.
    let (resumed, s) = trainer::train(
        model(0.1, 99),
        TrainData {
            train: &data,
            valid: None,
        },
        &cfg,
        second,
    )
    .unwrap();
    assert_eq!(s.steps, 6);
    assert_eq!(
        full.read_flat().unwrap(),
        resumed.read_flat().unwrap(),
        "resumed parameters differ"
    );

    // Starting over in a directory with checkpoints without --resume is refused.
    assert!(trainer::train(
        model(0.1, 3),
        TrainData {
            train: &data,
            valid: None
        },
        &cfg,
        run_opts(dir.path())
    )
    .is_err());
}

#[test]
fn divergence_stops_and_keeps_the_last_good_checkpoint() {
    std::env::set_var("FISHERKIT_NO_PROGRESS", "1");
    let _serial = serial();
    let data = examples(4);
    let mut cfg = config(
        OptimizerConfig::Adamw(AdamWConfig::default()),
        1e6,
        20,
        BatchBy::Examples(4),
        1,
    );
    cfg.max_grad_norm = None;
    cfg.checkpoint_every = Some(1);
    let dir = tempfile::tempdir().unwrap();
    let mut m = model(0.0, 1);
    m.set_training(true);
    let err = trainer::train(
        m,
        TrainData {
            train: &data,
            valid: None,
        },
        &cfg,
        run_opts(dir.path()),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("diverged"), "{msg}");
    assert!(msg.contains("last good checkpoint"), "{msg}");
    let ckpt = trainer::latest_checkpoint(dir.path())
        .unwrap()
        .expect("a checkpoint before divergence");
    let loaded = fisherkit_models::load(&ckpt.join("model"), &Device::flex()).unwrap();
    assert!(loaded.read_flat().unwrap().iter().all(|x| x.is_finite()));
    assert!(
        !dir.path().join("model").exists(),
        "no final model after divergence"
    );
}

#[test]
fn quickstart_runs_end_to_end_on_a_small_budget() {
    std::env::set_var("FISHERKIT_NO_PROGRESS", "1");
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("qs");
    let opts = fisherkit_train::quickstart::QuickstartOptions {
        out: out.clone(),
        train_per_task: 40,
        test_per_task: 10,
        steps: 4,
        batch_size: 8,
        d_model: 32,
        layers: 1,
        ..Default::default()
    };
    let mut lines = Vec::new();
    let report = fisherkit_train::quickstart::run(&opts, &Device::flex(), &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(lines.len(), 4, "{lines:?}");
    // One row per suite task, with the suite's metric and chance level.
    let suite = fisherkit_tasks::synthetic::Manifest::load(&out.join("data")).unwrap();
    assert_eq!(report.tasks.len(), suite.tasks.len());
    for (row, task) in report.tasks.iter().zip(&suite.tasks) {
        assert_eq!(
            (&row.task, &row.metric, row.chance),
            (&task.name, &task.metric, task.chance)
        );
        assert!((0.0..=100.0).contains(&row.score));
    }
    assert_eq!(report.train_steps, 4);
    assert!(out.join("train/model/model.safetensors").exists());
    assert!(out.join("results.json").exists());
    let table = fisherkit_train::quickstart::table(&report, &out);
    assert_eq!(table.lines().count(), suite.tasks.len() + 2);
    // An existing output directory is kept unless forced.
    assert!(fisherkit_train::quickstart::run(&opts, &Device::flex(), &mut |_| {}).is_err());
}

/// One step of the trainer (gradient read on the host, accumulated over two
/// micro-batches, clipped, fused AdamW) against PyTorch's first AdamW step written out in
/// f64 from the autodiff gradient of the whole batch: p·(1 − lr·wd) − lr·ĝ/(|ĝ| + ε),
/// ĝ = g · min(1, max_norm / (‖g‖ + 1e-6)).
#[test]
fn a_step_is_the_clipped_adamw_update_of_the_batch_gradient() {
    let _serial = serial();
    let data = examples(4);
    let (lr, wd, max_norm) = (1e-2, 0.1, 0.05);
    let reference = model(0.0, 5);
    let targets: usize = data.iter().map(|e| e.target_ids.len()).sum();
    let terms = trainer::batch_loss_terms(&*reference, &data, false).unwrap();
    let grads = terms.nll.div_scalar(targets as f64).backward();
    // A parameter the loss does not reach has no gradient and keeps its value.
    let per_param: Vec<(Vec<f64>, Option<Vec<f64>>)> = reference
        .named_params()
        .iter()
        .map(|(_, p)| {
            let values = p.to_vec::<f64>().unwrap();
            let g = p.grad_f32(&grads).unwrap();
            (values, g.map(|g| g.into_iter().map(f64::from).collect()))
        })
        .collect();
    let norm = per_param
        .iter()
        .flat_map(|(_, g)| g.iter().flatten())
        .map(|g| g * g)
        .sum::<f64>()
        .sqrt();
    let clip = (max_norm / (norm + 1e-6)).min(1.0);
    assert!(
        clip < 0.5,
        "the test should exercise clipping (norm {norm})"
    );

    // A large ε keeps ĝ/(|ĝ| + ε) well conditioned where the gradient is tiny (with 1e-8
    // it flips with the rounding of a 1e-8 gradient).
    let adamw = AdamWConfig {
        weight_decay: wd,
        eps: 1e-3,
        ..Default::default()
    };
    let mut cfg = config(
        OptimizerConfig::Adamw(adamw),
        lr,
        1,
        BatchBy::Examples(2),
        2,
    );
    cfg.max_grad_norm = Some(max_norm);
    let mut trained = model(0.0, 5);
    let mut optimizer = fisherkit_train::optim::Optimizer::new(cfg.optimizer);
    let batches = vec![data[..2].to_vec(), data[2..].to_vec()];
    let stats = trainer::train_step(&mut *trained, &mut optimizer, &batches, &cfg, lr, 1).unwrap();
    assert!(
        (stats.grad_norm - norm).abs() < 1e-4 * norm,
        "{} vs {norm}",
        stats.grad_norm
    );
    for ((name, p), (values, g)) in trained.named_params().iter().zip(&per_param) {
        let got = p.to_vec::<f64>().unwrap();
        let Some(g) = g else {
            assert_eq!(&got, values, "{name} has no gradient and must not move");
            continue;
        };
        for ((got, p0), g) in got.iter().zip(values).zip(g) {
            let g = g * clip;
            let want = p0 * (1.0 - lr * wd) - lr * g / (g.abs() + adamw.eps);
            assert!((got - want).abs() < 1e-3 * lr, "{name}: {got} vs {want}");
        }
    }
}
