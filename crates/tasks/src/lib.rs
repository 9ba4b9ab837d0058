//! Text-to-text task formats, the synthetic task suite, span corruption, mixtures, metrics, tokenizer training.
