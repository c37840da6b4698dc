//! Reading a username and password out of a secret's text: JSON (plain or the RDS rotation
//! format) or `KEY=VALUE` lines. Errors name keys, never values.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::wipe::SecretJson;
use super::{Overrides, SecretError};

/// The key names of the username and password inside a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyNames {
    pub username: String,
    pub password: String,
}

impl Default for KeyNames {
    fn default() -> Self {
        KeyNames {
            username: "username".into(),
            password: "password".into(),
        }
    }
}

/// What a secret's text held.
pub struct Parsed {
    pub username: String,
    pub password: SecretString,
    pub overrides: Overrides,
}

fn malformed(what: &str, detail: impl Into<String>) -> SecretError {
    SecretError::Malformed {
        what: what.to_string(),
        detail: detail.into(),
    }
}

/// Parses a JSON object with the username and password keys, and the RDS format's optional
/// `host`, `port`, `dbname`.
pub fn from_json_text(text: &str, keys: &KeyNames, what: &str) -> Result<Parsed, SecretError> {
    // serde_json's syntax errors give a position, never the text around it.
    let value: SecretJson =
        serde_json::from_str(text).map_err(|e| malformed(what, format!("not valid JSON ({e})")))?;
    from_json(&value.0, keys, what)
}

/// Like [`from_json_text`], from a parsed value (Vault KV data).
pub fn from_json(value: &Value, keys: &KeyNames, what: &str) -> Result<Parsed, SecretError> {
    let obj = value
        .as_object()
        .ok_or_else(|| malformed(what, "expected a JSON object"))?;
    let string = |key: &str| -> Result<String, SecretError> {
        match obj.get(key) {
            None | Some(Value::Null) => Err(malformed(what, format!("missing key \"{key}\""))),
            Some(Value::String(s)) if s.is_empty() => {
                Err(malformed(what, format!("key \"{key}\" is empty")))
            }
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(malformed(what, format!("key \"{key}\" is not a string"))),
        }
    };
    let username = string(&keys.username)?;
    let password = SecretString::from(string(&keys.password)?);
    let port = match obj.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Some(Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    };
    if obj.get("port").is_some_and(|p| !p.is_null()) && port.is_none() {
        return Err(malformed(what, "key \"port\" is not a port number"));
    }
    let text = |key: &str| obj.get(key).and_then(Value::as_str).map(str::to_string);
    Ok(Parsed {
        username,
        password,
        overrides: Overrides {
            host: text("host"),
            port,
            dbname: text("dbname"),
        },
    })
}

/// Parses `KEY=VALUE` lines (blank lines and `#` comments skipped, values optionally quoted).
pub fn from_key_value(text: &str, keys: &KeyNames, what: &str) -> Result<Parsed, SecretError> {
    let mut map = serde_json::Map::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(malformed(what, format!("line {} is not KEY=VALUE", n + 1)));
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        map.insert(k.trim().to_ascii_lowercase(), Value::String(v.to_string()));
    }
    let lower = KeyNames {
        username: keys.username.to_ascii_lowercase(),
        password: keys.password.to_ascii_lowercase(),
    };
    let map = SecretJson(Value::Object(map));
    from_json(&map.0, &lower, what)
}

/// JSON if the text looks like an object, `KEY=VALUE` otherwise.
pub fn from_auto(text: &str, keys: &KeyNames, what: &str) -> Result<Parsed, SecretError> {
    if text.trim_start().starts_with('{') {
        from_json_text(text, keys, what)
    } else {
        from_key_value(text, keys, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const CANARY: &str = "canary-pw-payload";

    #[test]
    fn rds_format() {
        let text = format!(
            r#"{{"engine":"postgres","host":"db.internal","port":5433,"dbname":"app","username":"app","password":"{CANARY}"}}"#
        );
        let p = from_json_text(&text, &KeyNames::default(), "s").unwrap();
        assert_eq!(p.username, "app");
        assert_eq!(p.password.expose_secret(), CANARY);
        assert_eq!(p.overrides.host.as_deref(), Some("db.internal"));
        assert_eq!(p.overrides.port, Some(5433));
        assert_eq!(p.overrides.dbname.as_deref(), Some("app"));
    }

    #[test]
    fn custom_keys_and_key_value() {
        let keys = KeyNames {
            username: "DB_USER".into(),
            password: "DB_PASS".into(),
        };
        let p = from_auto(
            &format!("# c\nDB_USER=app\nexport DB_PASS=\"{CANARY}\"\n"),
            &keys,
            "f",
        )
        .unwrap();
        assert_eq!(p.username, "app");
        assert_eq!(p.password.expose_secret(), CANARY);
    }

    #[test]
    fn errors_name_keys_not_values() {
        let keys = KeyNames::default();
        let cases = [
            (
                format!(r#"{{"password":"{CANARY}"}}"#),
                "s is malformed: missing key \"username\"",
            ),
            (
                r#"{"username":"u"}"#.to_string(),
                "s is malformed: missing key \"password\"",
            ),
            (
                format!(r#"{{"username":5,"password":"{CANARY}"}}"#),
                "s is malformed: key \"username\" is not a string",
            ),
            (
                format!(r#"{{"username":"u","password":"{CANARY}","port":"x"}}"#),
                "s is malformed: key \"port\" is not a port number",
            ),
            (
                format!(r#"["{CANARY}"]"#),
                "s is malformed: expected a JSON object",
            ),
        ];
        for (text, want) in cases {
            let e = from_json_text(&text, &keys, "s").err().unwrap();
            assert_eq!(e.to_string(), want);
        }
        let e = from_json_text(
            &format!(r#"{{"username":"u","password":"{CANARY}""#),
            &keys,
            "s",
        )
        .err()
        .unwrap();
        assert!(!e.to_string().contains(CANARY), "{e}");
        let e = from_key_value(&format!("{CANARY}\n"), &keys, "f")
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "f is malformed: line 1 is not KEY=VALUE");
    }
}
