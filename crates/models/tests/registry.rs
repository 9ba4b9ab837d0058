//! The loader registry against the T5 loader itself, on the repository's fixtures.

use std::path::{Path, PathBuf};

use fisherkit_common::st::{self, MappedFile, OwnedTensor};
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::{Example, LogProbModel, Model, ParamAccess};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/fixtures")
        .join(name)
}

/// A copy of a fixture directory whose `config.json` is edited by `edit`.
fn edited_copy(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap();
    dir
}

fn error_of(dir: &Path) -> String {
    format!(
        "{:#}",
        fisherkit_models::load(dir, &Device::flex()).unwrap_err()
    )
}

#[test]
fn loads_t5_fixtures_by_model_type_as_the_t5_loader_does() {
    for name in ["t5-tiny-v10", "t5-tiny-v11"] {
        let dir = fixture(name);
        let direct = fisherkit_t5::checkpoint::load(&dir, &Device::flex()).unwrap();
        let registry = fisherkit_models::load(&dir, &Device::flex()).unwrap();
        assert_eq!(registry.model_type(), "t5");
        assert_eq!(registry.param_specs(), direct.param_specs(), "{name}");
        assert_eq!(
            registry.read_params().unwrap(),
            direct.read_params().unwrap()
        );
    }
}

#[test]
fn loads_by_architectures_when_model_type_is_absent() {
    let dir = edited_copy("t5-tiny-v10", |c| {
        c.as_object_mut().unwrap().remove("model_type");
        c["architectures"] = serde_json::json!(["T5ForConditionalGeneration"]);
    });
    let direct = fisherkit_t5::checkpoint::load(&fixture("t5-tiny-v10"), &Device::flex()).unwrap();
    let registry = fisherkit_models::load(dir.path(), &Device::flex()).unwrap();
    assert_eq!(
        registry.read_params().unwrap(),
        direct.read_params().unwrap()
    );
}

#[test]
fn unknown_model_type_names_the_file_the_value_and_the_known_types() {
    let dir = edited_copy("llama-tiny", |c| c["model_type"] = "gpt2".into());
    let msg = error_of(dir.path());
    assert!(msg.contains("config.json"), "{msg}");
    assert!(msg.contains("\"gpt2\""), "{msg}");
    assert!(
        msg.contains("known model types: t5, bert, roberta, llama"),
        "{msg}"
    );
}

/// Llama checkpoints load through the registry as the Llama loader reads them.
#[test]
fn loads_llama_by_model_type() {
    let direct =
        fisherkit_llama::checkpoint::load(&fixture("llama-tiny"), &Device::flex()).unwrap();
    let registry = fisherkit_models::load(&fixture("llama-tiny"), &Device::flex()).unwrap();
    assert_eq!(registry.model_type(), "llama");
    assert_eq!(
        registry.read_params().unwrap(),
        direct.read_params().unwrap()
    );
}

#[test]
fn loads_bert_and_roberta_by_model_type_and_by_architectures() {
    for name in ["bert-tiny", "roberta-tiny"] {
        let direct = fisherkit_bert::checkpoint::load(&fixture(name), &Device::flex()).unwrap();
        let registry = fisherkit_models::load(&fixture(name), &Device::flex()).unwrap();
        assert_eq!(registry.model_type(), &name[..name.len() - 5]);
        assert_eq!(registry.class_labels().len(), 3);
        assert_eq!(
            registry.read_params().unwrap(),
            direct.read_params().unwrap()
        );
        let dir = edited_copy(name, |c| {
            c.as_object_mut().unwrap().remove("model_type");
        });
        let by_architecture = fisherkit_models::load(dir.path(), &Device::flex()).unwrap();
        assert_eq!(by_architecture.model_type(), registry.model_type());
        assert_eq!(
            by_architecture.read_params().unwrap(),
            direct.read_params().unwrap()
        );
    }
}

#[test]
fn unknown_architectures_without_model_type_is_an_error() {
    let dir = edited_copy("t5-tiny-v10", |c| {
        c.as_object_mut().unwrap().remove("model_type");
        c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    });
    let msg = error_of(dir.path());
    assert!(msg.contains("config.json"), "{msg}");
    assert!(msg.contains("GPT2LMHeadModel"), "{msg}");
    assert!(msg.contains("known model types: t5"), "{msg}");
}

/// A T5 checkpoint whose config claims Llama falls back to Llama's 7B-scale defaults; the
/// loader must refuse it from the safetensors header instead of allocating 7B parameters.
#[test]
fn mislabelled_checkpoint_is_refused_before_allocation() {
    let dir = edited_copy("t5-tiny-v10", |c| {
        c.as_object_mut().unwrap().remove("model_type");
        c["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    });
    let msg = error_of(dir.path());
    assert!(msg.contains("model.embed_tokens.weight"), "{msg}");
}

#[test]
fn missing_config_names_the_file_and_the_known_types() {
    let dir = tempfile::tempdir().unwrap();
    let msg = error_of(dir.path());
    assert!(msg.contains("config.json"), "{msg}");
    assert!(msg.contains("known model types: t5"), "{msg}");
}

#[test]
fn preset_and_init_go_through_the_architecture() {
    let config = fisherkit_models::preset("tiny").unwrap();
    assert_eq!(config["model_type"], "t5");
    let a = fisherkit_models::init(&config, 7, &Device::flex()).unwrap();
    let b = fisherkit_models::init(&config, 7, &Device::flex()).unwrap();
    let c = fisherkit_models::init(&config, 8, &Device::flex()).unwrap();
    assert_eq!(a.read_flat().unwrap(), b.read_flat().unwrap());
    assert_ne!(a.read_flat().unwrap(), c.read_flat().unwrap());
    let msg = format!("{:#}", fisherkit_models::preset("no-such").unwrap_err());
    assert!(msg.contains("tiny") && msg.contains("t5-small"), "{msg}");
}

/// `[batch, len, vocab]` values of the training-mode log-softmax with the backend seeded.
fn train_mode_output(model: &dyn Model, batch: &[Example], seed: u64) -> Vec<f32> {
    model.device().seed(seed);
    model
        .log_softmax(batch)
        .unwrap()
        .try_into_vec_as::<f32>()
        .unwrap()
}

#[test]
fn set_dropout_changes_training_outputs_only() {
    let mut model = fisherkit_models::load(&fixture("t5-tiny-v10"), &Device::flex()).unwrap();
    let batch = vec![Example::new(vec![5, 6, 7, 8, 1], vec![9, 10, 1])];
    let eval_before = fisherkit_model::score(&model, &batch).unwrap();
    model.set_training(true);
    // The fixture has no dropout: training mode is evaluation mode.
    assert_eq!(model.dropout(), 0.0);
    let no_dropout = train_mode_output(&*model, &batch, 1);
    model.set_training(false);
    let eval = model
        .log_softmax(&batch)
        .unwrap()
        .try_into_vec_as::<f32>()
        .unwrap();
    assert_eq!(no_dropout, eval);

    model.set_dropout(0.5).unwrap();
    assert_eq!(model.dropout(), 0.5);
    assert_eq!(fisherkit_model::score(&model, &batch).unwrap(), eval_before);
    model.set_training(true);
    let first = train_mode_output(&*model, &batch, 1);
    let again = train_mode_output(&*model, &batch, 1);
    assert_ne!(
        first, no_dropout,
        "dropout 0.5 left training outputs unchanged"
    );
    assert_eq!(first, again, "same seed, same masks");

    assert!(model.set_dropout(1.0).is_err());
    assert_eq!(model.dropout(), 0.5);
}

#[test]
fn saved_rate_is_what_set_dropout_set() {
    let mut model = fisherkit_models::load(&fixture("t5-tiny-v10"), &Device::flex()).unwrap();
    model.set_dropout(0.25).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = model
        .save_checkpoint(&out.path().join("m"), None, false)
        .unwrap();
    let reloaded = fisherkit_models::load(&dir, &Device::flex()).unwrap();
    assert_eq!(reloaded.dropout(), 0.25);
    assert_eq!(reloaded.read_flat().unwrap(), model.read_flat().unwrap());
}

/// An untied model saved with its head renamed to `decoder.lm_head.weight`, as some
/// exports store it.
fn untied_with_renamed_head(dir: &Path) -> Box<dyn Model> {
    let mut config = fisherkit_models::preset("tiny").unwrap();
    config["vocab_size"] = 40.into();
    config["tie_word_embeddings"] = false.into();
    let model = fisherkit_models::init(&config, 3, &Device::flex()).unwrap();
    model.save_checkpoint(dir, None, true).unwrap();
    let weights = dir.join("model.safetensors");
    let file = MappedFile::open(&weights).unwrap();
    let mut tensors = Vec::new();
    for name in file.names_in_order().unwrap() {
        let (shape, values) = file.read_f32(&name).unwrap();
        let stored = if name == "lm_head.weight" {
            "decoder.lm_head.weight".to_string()
        } else {
            name
        };
        tensors.push((stored, OwnedTensor::f32(shape, &values)));
    }
    drop(file);
    assert!(tensors.iter().any(|(n, _)| n == "decoder.lm_head.weight"));
    st::write(&weights, &tensors, Default::default()).unwrap();
    model
}

#[test]
fn the_checkpoint_loader_finds_the_renamed_head() {
    let dir = tempfile::tempdir().unwrap();
    let original = untied_with_renamed_head(dir.path());
    let loaded = fisherkit_models::load(dir.path(), &Device::flex()).unwrap();
    assert_eq!(
        loaded.read_param("lm_head.weight").unwrap(),
        original.read_param("lm_head.weight").unwrap()
    );
    assert_eq!(loaded.read_flat().unwrap(), original.read_flat().unwrap());
    assert!(loaded
        .checkpoint_names("lm_head.weight")
        .contains(&"decoder.lm_head.weight".to_string()));
}

/// A checkpoint with a non-finite weight, or a config with a non-positive norm epsilon,
/// is refused at load with the file and the tensor or key named — for every
/// architecture, through the shared checkpoint reader.
#[test]
fn non_finite_weights_and_bad_epsilons_are_refused() {
    use fisherkit_common::st::{self, MappedFile, OwnedTensor};
    for (name, epsilon_key) in [
        ("t5-tiny-v10", "layer_norm_epsilon"),
        ("bert-tiny", "layer_norm_eps"),
        ("roberta-tiny", "layer_norm_eps"),
    ] {
        for bad in [f32::NAN, f32::INFINITY] {
            let dir = edited_copy(name, |_| {});
            let weights = dir.path().join("model.safetensors");
            let file = MappedFile::open(&weights).unwrap();
            let names = file.names_in_order().unwrap();
            let victim = names.last().unwrap().clone();
            let tensors: Vec<(String, OwnedTensor)> = names
                .iter()
                .map(|n| {
                    let (shape, mut values) = file.read_f32(n).unwrap();
                    if *n == victim {
                        values[1] = bad;
                    }
                    (n.clone(), OwnedTensor::f32(shape, &values))
                })
                .collect();
            drop(file);
            st::write(&weights, &tensors, Default::default()).unwrap();
            let msg = error_of(dir.path());
            assert!(
                msg.contains(&victim) && msg.contains("flat index 1") && msg.contains("model"),
                "{name}: {msg}"
            );
        }
        let dir = edited_copy(name, |c| c[epsilon_key] = serde_json::json!(-1.0));
        let msg = error_of(dir.path());
        assert!(
            msg.contains(epsilon_key) && msg.contains("config.json"),
            "{name}: {msg}"
        );
    }
}
