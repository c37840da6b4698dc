//! Environment overrides, in the spelling applications already use: `CREDSWAP_CONFIG`, and for
//! a single-target setup `DATABASE_URL`, `DB_SSL_VERIFY`, `DB_CA_CERT_PATH`,
//! `DB_CLIENT_CERT_PATH`, `DB_CLIENT_KEY_PATH`.

use std::collections::HashMap;
use std::path::PathBuf;

use super::validate::{check_tls_files, check_url, tls_warnings, Collector};
use super::{Api, Config, ConfigErrors, Source, Target};
use crate::tls::{RootCert, SslMode};

/// Where environment variables come from; a trait so tests need not touch the process's own.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

const ORIGIN: &str = "environment";
/// The name of the target an environment-only setup creates.
pub const DEFAULT_TARGET: &str = "default";
const TLS_VARS: [&str; 4] = [
    "DB_SSL_VERIFY",
    "DB_CA_CERT_PATH",
    "DB_CLIENT_CERT_PATH",
    "DB_CLIENT_KEY_PATH",
];

/// No configuration file: one target named `default` from `DATABASE_URL`, user and password
/// included (the development source).
pub fn environment_only(env: &dyn Env) -> Result<Config, ConfigErrors> {
    let mut c = Collector::new(ORIGIN);
    let Some(url) = env.var("DATABASE_URL") else {
        c.error(
            "CREDSWAP_CONFIG".into(),
            "no configuration given; fix: pass --config FILE, set CREDSWAP_CONFIG, or set DATABASE_URL for a single-target development setup",
        );
        return c.finish(unreachable_config());
    };
    let Some(mut conn) = check_url(&url, "DATABASE_URL", false, &mut c) else {
        return c.finish(unreachable_config());
    };
    let user = conn.user.take();
    let password = conn.password.take();
    let source = match (user, password) {
        (Some(username), Some(password)) => Some(Source::Development { username, password }),
        _ => {
            c.error(
                "DATABASE_URL".into(),
                "has no user name and password; without a configuration file both come from DATABASE_URL (development only); fix: use postgresql://USER:PASSWORD@HOST/DB, or a configuration file with a secret source",
            );
            None
        }
    };
    let Some(source) = source else {
        return c.finish(unreachable_config());
    };
    check_tls_files(&conn, "DATABASE_URL", &mut c);
    let mut config = c.finish(Config {
        file: None,
        daemon: Default::default(),
        api: Api::defaults(),
        webhook: None,
        postgres: None,
        targets: vec![Target::new(DEFAULT_TARGET, conn, source)],
        warnings: Vec::new(),
    })?;
    apply_overrides(&mut config, env)?;
    Ok(config)
}

/// Only reached when an error was recorded; `finish` then returns the errors.
fn unreachable_config() -> Config {
    Config {
        file: None,
        daemon: Default::default(),
        api: Api::defaults(),
        webhook: None,
        postgres: None,
        targets: vec![],
        warnings: vec![],
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Applies `DATABASE_URL` (with a file) and the `DB_*` TLS variables to the single target,
/// then computes the warnings of the final configuration.
pub fn apply_overrides(config: &mut Config, env: &dyn Env) -> Result<(), ConfigErrors> {
    let mut c = Collector::new(ORIGIN);
    let mut set: Vec<&str> = TLS_VARS
        .into_iter()
        .filter(|v| env.var(v).is_some())
        .collect();
    let url = config.file.as_ref().and(env.var("DATABASE_URL"));
    if url.is_some() {
        set.insert(0, "DATABASE_URL");
    }
    if !set.is_empty() && config.targets.len() != 1 {
        for var in &set {
            c.error(
                var.to_string(),
                format!(
                    "applies to a single-target setup, but the configuration has {} targets; fix: unset {var} and put the setting in each target's url",
                    config.targets.len()
                ),
            );
        }
        return c.finish(());
    }
    if let Some(target) = config.targets.first_mut() {
        if let Some(conn) = url.and_then(|u| check_url(&u, "DATABASE_URL", true, &mut c)) {
            target.conn = conn;
        }
        let tls = &mut target.conn.tls;
        if let Some(v) = env.var("DB_SSL_VERIFY") {
            match parse_bool(&v) {
                Some(true) => tls.mode = SslMode::VerifyFull,
                Some(false) => tls.mode = SslMode::Require,
                None => c.error(
                    "DB_SSL_VERIFY".into(),
                    format!("\"{v}\" is not true or false; fix: DB_SSL_VERIFY=true checks the server's certificate and host name (verify-full), false only encrypts (require)"),
                ),
            }
        }
        if let Some(v) = env.var("DB_CA_CERT_PATH") {
            tls.rootcert = Some(RootCert::File(PathBuf::from(v)));
        }
        if let Some(v) = env.var("DB_CLIENT_CERT_PATH") {
            tls.cert = Some(PathBuf::from(v));
        }
        if let Some(v) = env.var("DB_CLIENT_KEY_PATH") {
            tls.key = Some(PathBuf::from(v));
        }
        match (&tls.cert, &tls.key) {
            (Some(_), None) => c.error(
                "DB_CLIENT_CERT_PATH".into(),
                "is set but no client key is; fix: also set DB_CLIENT_KEY_PATH",
            ),
            (None, Some(_)) => c.error(
                "DB_CLIENT_KEY_PATH".into(),
                "is set but no client certificate is; fix: also set DB_CLIENT_CERT_PATH",
            ),
            _ => {}
        }
        if tls.mode == SslMode::VerifyFull && tls.rootcert.is_none() {
            c.error(
                "DB_SSL_VERIFY".into(),
                "true needs a CA certificate; fix: set DB_CA_CERT_PATH (or sslrootcert in the url)",
            );
        }
        if !set.is_empty() {
            let key = set.join(", ");
            check_tls_files(&target.conn, &key, &mut c);
        }
    }
    c.finish(())?;
    config.warnings = config
        .targets
        .iter()
        .flat_map(|t| {
            let mut w = tls_warnings(&t.name, &t.conn);
            if matches!(t.source, Source::Development { .. }) {
                w.push(format!(
                    "target \"{}\": credentials come from DATABASE_URL: the development source, not for production; use a secret source",
                    t.name
                ));
            }
            if let Source::Vault(v) = &t.source {
                if v.address.starts_with("http://") && !super::validate::is_loopback_url(&v.address) {
                    w.push(format!(
                        "target \"{}\": the Vault address {} is plain http: the store's token and the credentials cross the network unencrypted; use https",
                        t.name, v.address
                    ));
                }
            }
            w
        })
        .collect();
    if let Some(hook) = &config.webhook {
        let plaintext_tcp = !hook.listen.is_empty()
            && hook.tls_cert_file.is_none()
            && !super::validate::is_loopback_addr(&hook.listen);
        if plaintext_tcp && hook.token_file.is_some() {
            config.warnings.push(format!(
                "webhook: a token is accepted on {} without TLS: anyone on the path can read it and trigger rotations; set tls_cert_file/tls_key_file or listen on loopback",
                hook.listen
            ));
        }
    }
    Ok(())
}
