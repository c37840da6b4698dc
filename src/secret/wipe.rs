//! Zeroing the copies of a secret that pass through our hands on the way in. A secret's text
//! is parsed (serde_json) into values that are plain `String`s; they are zeroed when dropped,
//! so a freed page or a later core dump does not hold them. Copies inside the HTTP client's and
//! the AWS SDK's own buffers are beyond reach; the unit's `LimitCORE=0` covers those.

use secrecy::zeroize::{Zeroize, Zeroizing};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Zeroes every string in `value` (object keys are names, not secrets, and stay).
pub fn wipe(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe),
        Value::Object(map) => map.values_mut().for_each(wipe),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A JSON value that may hold secrets: zeroed when dropped.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct SecretJson(pub Value);

impl Drop for SecretJson {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Text that may hold a secret: zeroed when dropped.
pub type SecretText = Zeroizing<String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_string_is_zeroed() {
        let mut v = serde_json::json!({
            "password": "hunter2",
            "nested": [{"secret_id": "abc"}, "def", 1, null, true],
        });
        wipe(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"password": "", "nested": [{"secret_id": ""}, "", 1, null, true]})
        );
    }
}
