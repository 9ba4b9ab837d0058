//! Typed reads of a `config.json` object's keys, with the architecture's default when a
//! key is missing or `null`; a key of the wrong type is an error naming it and its value.

use anyhow::{Context, Result};
use serde_json::{Map, Value};

/// The keys of one `config.json` object.
#[derive(Clone, Copy)]
pub struct ConfigKeys<'a>(pub &'a Map<String, Value>);

impl ConfigKeys<'_> {
    fn present(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .with_context(|| format!("\"{key}\" is {v}, not a non-negative integer")),
        }
    }

    pub fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .with_context(|| format!("\"{key}\" is {v}, not a number")),
        }
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .with_context(|| format!("\"{key}\" is {v}, not true or false")),
        }
    }

    pub fn string(&self, key: &str, default: &str) -> Result<String> {
        match self.present(key) {
            None => Ok(default.to_string()),
            Some(v) => Ok(v
                .as_str()
                .with_context(|| format!("\"{key}\" is {v}, not a string"))?
                .to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_values_and_named_type_errors() {
        let object = serde_json::json!({"a": 3, "b": null, "c": "x", "d": 0.5, "e": true});
        let keys = ConfigKeys(object.as_object().unwrap());
        assert_eq!(keys.usize("a", 9).unwrap(), 3);
        assert_eq!(keys.usize("b", 9).unwrap(), 9);
        assert_eq!(keys.usize("missing", 9).unwrap(), 9);
        assert_eq!(keys.f64("d", 1.0).unwrap(), 0.5);
        assert!(keys.bool("e", false).unwrap());
        assert_eq!(keys.string("c", "y").unwrap(), "x");
        let err = keys.usize("c", 0).unwrap_err().to_string();
        assert!(err.contains("\"c\"") && err.contains("integer"), "{err}");
        let err = keys.bool("a", false).unwrap_err().to_string();
        assert!(err.contains("\"a\""), "{err}");
    }
}
