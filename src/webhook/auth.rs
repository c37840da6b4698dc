//! Webhook authentication: HMAC-SHA256 signatures with a timestamp and replay protection, or a
//! static token compared in constant time. Keys and tokens come from files, never the
//! configuration text. A refusal never says which part was wrong.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::Sha256;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-credswap-signature";

/// Longest signature header read: `t=<10 digits>` and a few `v1=<64 hex>`. A longer one is
/// refused before any MAC is computed.
pub const MAX_SIGNATURE_HEADER: usize = 512;

/// Most `v1=` candidates compared (senders list two while their key rolls over). Each key's MAC
/// is computed once, whatever the header holds, so a forged request costs at most one HMAC over
/// the body per configured key.
pub const MAX_CANDIDATES: usize = 4;

type HmacSha256 = Hmac<Sha256>;

/// Why a key or token file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("webhook key file {path}: {problem}")]
pub struct KeyFileError {
    pub path: String,
    pub problem: String,
}

/// Reads a key or token file: trimmed, not empty, not readable by others.
pub fn read_secret_file(path: &Path) -> Result<SecretString, KeyFileError> {
    use std::os::unix::fs::MetadataExt;
    let err = |problem: String| KeyFileError {
        path: path.display().to_string(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.mode() & 0o007 != 0 {
        return Err(err(format!(
            "accessible to other users (mode {:04o}); fix: chmod o-rwx",
            meta.mode() & 0o777
        )));
    }
    let text = crate::secret::wipe::SecretText::new(
        std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?,
    );
    let text = text.trim();
    if text.is_empty() {
        return Err(err("is empty".into()));
    }
    Ok(SecretString::from(text.to_string()))
}

/// Computes the header value for `body` at `timestamp` (for `credswap webhook sign`).
pub fn sign(key: &SecretString, timestamp: u64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={timestamp},v1={hex}")
}

/// The current Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// Signatures seen, with when they stop mattering (outside the window anyway). Shared across
/// reloads, so a signature captured before `systemctl reload` cannot be replayed after it.
pub type ReplayCache = Arc<Mutex<HashMap<Vec<u8>, u64>>>;

/// Most signatures remembered; beyond that (after expired ones are dropped) new signed requests
/// are refused until old ones expire, rather than the cache growing without bound.
const MAX_REMEMBERED: usize = 100_000;

/// Checks signatures and tokens.
pub struct Verifier {
    keys: Vec<SecretBox<[u8]>>,
    token: Option<SecretString>,
    token_header: String,
    max_skew: Duration,
    seen: ReplayCache,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// Whether a request is authentic.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Refused,
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Constant-time equality of two byte strings (length is not secret), by `subtle`, the
/// maintained crate the HMAC crates use themselves, rather than a fold of our own that the
/// optimiser is free to shortcut.
fn same(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

impl Verifier {
    /// `keys`: the active HMAC keys (two during a rollover); `token`: a static token and the
    /// header that carries it (`authorization` takes `Bearer <token>`).
    pub fn new(
        keys: Vec<SecretString>,
        token: Option<SecretString>,
        token_header: &str,
        max_skew: Duration,
    ) -> Verifier {
        Verifier {
            keys: keys
                .into_iter()
                .map(|k| SecretBox::new(k.expose_secret().as_bytes().to_vec().into_boxed_slice()))
                .collect(),
            token,
            token_header: token_header.to_ascii_lowercase(),
            max_skew,
            seen: ReplayCache::default(),
        }
    }

    /// Uses `cache` for replay protection (the daemon keeps one across reloads).
    pub fn with_replay_cache(mut self, cache: ReplayCache) -> Verifier {
        self.seen = cache;
        self
    }

    /// The header the token comes in.
    pub fn token_header(&self) -> &str {
        &self.token_header
    }

    /// Checks a request given its signature header, token header and body.
    pub fn check(
        &self,
        signature: Option<&str>,
        token: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Verdict {
        if self.token_matches(token) {
            return Verdict::Ok;
        }
        match signature.and_then(|sig| self.parse_signature(sig, now)) {
            Some(signed) => self.check_signature(signed, body, now),
            None => Verdict::Refused,
        }
    }

    /// Whether the headers alone settle it: no valid token, and no signature header that
    /// could pass (missing, too long, too many candidates, no timestamp, outside the window).
    /// Such a request is refused before its body is read.
    pub fn refuses_by_headers(
        &self,
        signature: Option<&str>,
        token: Option<&str>,
        now: u64,
    ) -> bool {
        !self.token_matches(token)
            && signature
                .and_then(|sig| self.parse_signature(sig, now))
                .is_none()
    }

    fn token_matches(&self, token: Option<&str>) -> bool {
        let (Some(want), Some(got)) = (&self.token, token) else {
            return false;
        };
        let got = if self.token_header == "authorization" {
            got.strip_prefix("Bearer ").unwrap_or("")
        } else {
            got
        };
        same(want.expose_secret().as_bytes(), got.as_bytes())
    }

    /// The timestamp and the (at most [`MAX_CANDIDATES`]) candidate MACs of a signature header
    /// that may pass; `None` when it cannot.
    fn parse_signature(&self, header: &str, now: u64) -> Option<(u64, Vec<Vec<u8>>)> {
        if self.keys.is_empty() || header.len() > MAX_SIGNATURE_HEADER {
            return None;
        }
        let mut timestamp = None;
        let mut candidates = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", v)) => timestamp = v.parse::<u64>().ok(),
                Some(("v1", v)) if candidates.len() < MAX_CANDIDATES => {
                    candidates.extend(decode_hex(v))
                }
                Some(("v1", _)) => return None,
                _ => {}
            }
        }
        let t = timestamp?;
        if t.abs_diff(now) > self.max_skew.as_secs() || candidates.is_empty() {
            return None;
        }
        Some((t, candidates))
    }

    fn check_signature(
        &self,
        (t, candidates): (u64, Vec<Vec<u8>>),
        body: &[u8],
        now: u64,
    ) -> Verdict {
        // One MAC per key, then constant-time comparisons against the few candidates.
        let macs: Vec<_> = self
            .keys
            .iter()
            .map(|key| {
                let mut mac =
                    HmacSha256::new_from_slice(key.expose_secret()).expect("any key length");
                mac.update(t.to_string().as_bytes());
                mac.update(b".");
                mac.update(body);
                mac.finalize().into_bytes()
            })
            .collect();
        let valid = candidates
            .iter()
            .find(|sig| macs.iter().any(|mac| same(mac.as_slice(), sig)));
        let Some(sig) = valid else {
            return Verdict::Refused;
        };
        // Replay: a signature is good once within its window.
        let mut seen = self.seen.lock().expect("never poisoned");
        seen.retain(|_, until| *until >= now);
        if seen.contains_key(sig) || seen.len() >= MAX_REMEMBERED {
            return Verdict::Refused;
        }
        seen.insert(sig.clone(), t + self.max_skew.as_secs());
        Verdict::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> SecretString {
        SecretString::from(k.to_string())
    }

    #[test]
    fn signatures() {
        let v = Verifier::new(
            vec![key("k1"), key("k2")],
            None,
            "authorization",
            Duration::from_secs(300),
        );
        let body = br#"{"target":"app"}"#;
        let t = 1_800_000_000;
        let good = sign(&key("k1"), t, body);
        assert_eq!(v.check(Some(&good), None, body, t + 10), Verdict::Ok);
        assert_eq!(
            v.check(Some(&good), None, body, t + 10),
            Verdict::Refused,
            "replay"
        );
        // Rollover: the second key works too.
        assert_eq!(
            v.check(Some(&sign(&key("k2"), t, body)), None, body, t),
            Verdict::Ok
        );
        assert_eq!(
            v.check(Some(&sign(&key("k3"), t, body)), None, body, t),
            Verdict::Refused,
            "unknown key"
        );
        assert_eq!(
            v.check(Some(&sign(&key("k1"), t - 301, body)), None, body, t),
            Verdict::Refused,
            "old"
        );
        assert_eq!(
            v.check(Some(&sign(&key("k1"), t + 301, body)), None, body, t),
            Verdict::Refused,
            "future"
        );
        assert_eq!(
            v.check(Some(&sign(&key("k1"), t + 1, b"other")), None, body, t),
            Verdict::Refused,
            "body"
        );
        assert_eq!(v.check(Some("garbage"), None, body, t), Verdict::Refused);
        assert_eq!(v.check(None, None, body, t), Verdict::Refused);
    }

    /// A forged header cannot make the verifier work per candidate: an oversized header or one
    /// with too many candidates is refused before any MAC, even when a valid signature is in it.
    #[test]
    fn signature_headers_are_bounded() {
        let v = Verifier::new(
            vec![key("k1")],
            None,
            "authorization",
            Duration::from_secs(300),
        );
        let body = vec![b'x'; 64 * 1024];
        let t = 1_800_000_000;
        let good = sign(&key("k1"), t, &body);
        let hex = good.split_once(",v1=").unwrap().1;
        let stuffed = format!("t={t},{}v1={hex}", "v1=00,".repeat(60_000));
        assert_eq!(v.check(Some(&stuffed), None, &body, t), Verdict::Refused);
        let five = format!("t={t},{}v1={hex}", "v1=00,".repeat(MAX_CANDIDATES));
        assert!(five.len() <= MAX_SIGNATURE_HEADER);
        assert_eq!(v.check(Some(&five), None, &body, t), Verdict::Refused);
        let rollover = format!("t={t},v1=00,v1={hex}");
        assert_eq!(v.check(Some(&rollover), None, &body, t), Verdict::Ok);
    }

    /// The replay cache outlives a verifier: after a reload (a new verifier with the daemon's
    /// cache) a captured signature is still refused.
    #[test]
    fn replays_are_refused_across_a_reload() {
        let cache = ReplayCache::default();
        let make = || {
            Verifier::new(
                vec![key("k1")],
                None,
                "authorization",
                Duration::from_secs(300),
            )
            .with_replay_cache(cache.clone())
        };
        let body = br#"{"target":"app"}"#;
        let t = 1_800_000_000;
        let sig = sign(&key("k1"), t, body);
        assert_eq!(make().check(Some(&sig), None, body, t), Verdict::Ok);
        assert_eq!(
            make().check(Some(&sig), None, body, t + 1),
            Verdict::Refused
        );
    }

    #[test]
    fn tokens() {
        let v = Verifier::new(
            vec![],
            Some(key("tok")),
            "Authorization",
            Duration::from_secs(300),
        );
        assert_eq!(v.check(None, Some("Bearer tok"), b"", 0), Verdict::Ok);
        assert_eq!(v.check(None, Some("Bearer tok2"), b"", 0), Verdict::Refused);
        assert_eq!(v.check(None, Some("tok"), b"", 0), Verdict::Refused);
        let v = Verifier::new(
            vec![],
            Some(key("tok")),
            "X-Api-Key",
            Duration::from_secs(300),
        );
        assert_eq!(v.check(None, Some("tok"), b"", 0), Verdict::Ok);
    }
}
