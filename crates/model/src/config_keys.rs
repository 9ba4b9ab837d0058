//! Typed reads of a `config.json` object's keys, with the architecture's default when a
//! key is missing or `null`; a key of the wrong type is an error naming it and its value.

use anyhow::{Context, Result};
use serde_json::{Map, Value};

/// The keys of one `config.json` object.
#[derive(Clone, Copy)]
pub struct ConfigKeys<'a>(pub &'a Map<String, Value>);

impl ConfigKeys<'_> {
    /// The value of `key` read by `convert`, `default` when it is missing or `null`; an
    /// error saying it is not `expected` when `convert` refuses it.
    fn read<T>(
        &self,
        key: &str,
        default: T,
        convert: impl FnOnce(&Value) -> Option<T>,
        expected: &str,
    ) -> Result<T> {
        match self.0.get(key).filter(|v| !v.is_null()) {
            None => Ok(default),
            Some(v) => convert(v).with_context(|| format!("\"{key}\" is {v}, not {expected}")),
        }
    }

    pub fn usize(&self, key: &str, default: usize) -> Result<usize> {
        let convert = |v: &Value| v.as_u64().map(|n| n as usize);
        self.read(key, default, convert, "a non-negative integer")
    }

    pub fn f64(&self, key: &str, default: f64) -> Result<f64> {
        self.read(key, default, Value::as_f64, "a number")
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        self.read(key, default, Value::as_bool, "true or false")
    }

    pub fn string(&self, key: &str, default: &str) -> Result<String> {
        let convert = |v: &Value| v.as_str().map(str::to_string);
        self.read(key, default.to_string(), convert, "a string")
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
