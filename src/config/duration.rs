//! Human durations in configuration files: `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// The longest duration a setting may have: one year. Longer ones would overflow the clock
/// arithmetic of timers (a panic) and mean nothing for a daemon.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a human duration; the error says what is accepted.
pub fn parse(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "invalid duration \"{text}\" ({e}); write it like \"250ms\", \"30s\", \"5m\" or \"1h\""
        )
    })?;
    if d > MAX {
        return Err(format!(
            "duration \"{text}\" is longer than the most a setting may be (1 year); choose a shorter one"
        ));
    }
    Ok(d)
}

/// Formats a duration the way it is written in the configuration.
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// `#[serde(with = "duration")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// `#[serde(with = "duration")]`.
pub fn serialize<S: Serializer>(d: &Duration, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(&format(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (text, d) in [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse(text).unwrap(), d, "{text}");
            assert_eq!(format(d), text);
        }
        assert!(parse("30").unwrap_err().contains("write it like"));
        assert!(parse("400d").unwrap_err().contains("1 year"));
        assert!(parse("99999999999999999999h").is_err());
        assert!(parse("soon").is_err());
    }
}
