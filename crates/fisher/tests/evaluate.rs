//! The merge evaluator reads merged tensors under the names the model's checkpoint loader
//! accepts (one alias list, `LogProbModel::checkpoint_names`).

use fisherkit_fisher::evaluate::{Metric, ModelEvaluator};
use fisherkit_fisher::model::{Item, Outputs};
use fisherkit_merge::search::MergedTensors;
use fisherkit_model::burn::tensor::Device;
use fisherkit_model::{Example, LogProbModel, ParamAccess};

#[test]
fn merged_head_stored_as_decoder_lm_head_is_found() {
    let mut config = fisherkit_models::preset("tiny").unwrap();
    config["vocab_size"] = 40.into();
    config["tie_word_embeddings"] = false.into();
    let model = fisherkit_models::init(&config, 3, &Device::flex()).unwrap();
    let merged_model = fisherkit_models::init(&config, 4, &Device::flex()).unwrap();
    assert!(model
        .checkpoint_names("lm_head.weight")
        .contains(&"decoder.lm_head.weight".to_string()));
    let merged: MergedTensors = merged_model
        .read_params()
        .unwrap()
        .into_iter()
        .zip(merged_model.param_specs())
        .map(|((name, values), spec)| {
            let stored = if name == "lm_head.weight" {
                "decoder.lm_head.weight".to_string()
            } else {
                name
            };
            (stored, (spec.shape, values))
        })
        .collect();
    assert!(!merged.contains_key("lm_head.weight"));
    let items = vec![Item {
        example: Example::new(vec![5, 6, 1], vec![7, 1]),
        label: None,
    }];
    let mut evaluator =
        ModelEvaluator::new(model, Outputs::Tokens, items, Metric::LogProb, 4).unwrap();
    evaluator.load_merged(&merged).unwrap();
    assert_eq!(
        evaluator.model().read_params().unwrap(),
        merged_model.read_params().unwrap()
    );
}
