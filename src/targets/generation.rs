//! A generation: one verified pool and what it was built from. Requests load the current one;
//! a swap replaces it with one atomic store.

use std::time::SystemTime;

use crate::pool::VerifiedPool;
use crate::secret::Lease;

use super::report::Trigger;

/// The pool that serves a target, with its provenance. Never holds the password.
#[derive(Debug)]
pub struct Generation {
    /// Increases with every swap; shown in `application_name` as `/g<id>`.
    pub id: u64,
    pub pool: VerifiedPool,
    pub credential_version: String,
    pub username: String,
    pub built_at: SystemTime,
    pub trigger: Trigger,
    pub lease: Option<Lease>,
}

/// `application_name` for a generation: the url's name (or `credswap/<target>`) and `/g<id>`,
/// within PostgreSQL's 63 bytes.
pub fn application_name(base: Option<&str>, target: &str, id: u64) -> String {
    let suffix = format!("/g{id}");
    let base = match base {
        Some(b) => b.to_string(),
        None => format!("credswap/{target}"),
    };
    let room = 63usize.saturating_sub(suffix.len());
    let mut cut = base.len().min(room);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &base[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(application_name(None, "app_rw", 7), "credswap/app_rw/g7");
        assert_eq!(
            application_name(Some("billing"), "app_rw", 12),
            "billing/g12"
        );
        let long = "x".repeat(80);
        let n = application_name(Some(&long), "t", 123);
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("/g123"));
    }
}
