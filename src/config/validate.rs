//! From parsed TOML to a validated [`Config`]: every rule that serde cannot express.

use std::collections::HashMap;
use std::path::Path;

use super::types::{FileConfig, SourceConfig, TargetConfig};
use super::{Api, Config, ConfigError, ConfigErrors, Source, Target};
use crate::dsn::{ConnInfo, Host};
use crate::tls::{self, RootCert, SslMode, Verification};

/// Longest target name: it ends up in URLs, metric labels and `application_name` (63 bytes).
pub const MAX_NAME_LEN: usize = 40;

/// Parses TOML into the file types, keeping the key path of the first error.
pub fn parse_toml(text: &str, origin: &str) -> Result<FileConfig, ConfigErrors> {
    let de =
        toml::Deserializer::parse(text).map_err(|e| toml_error(text, origin, "(syntax)", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = match e.path().to_string() {
            p if p == "." => "(top level)".to_string(),
            p => p,
        };
        toml_error(text, origin, &key, e.inner())
    })
}

fn toml_error(text: &str, origin: &str, key: &str, e: &toml::de::Error) -> ConfigErrors {
    let position = e.span().map(|span| line_col(text, span.start));
    ConfigErrors(vec![ConfigError {
        origin: origin.to_string(),
        key: key.to_string(),
        message: e.message().trim().to_string(),
        position,
    }])
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Gathers every error of one load.
pub(super) struct Collector<'a> {
    origin: &'a str,
    errors: Vec<ConfigError>,
}

impl<'a> Collector<'a> {
    pub(super) fn new(origin: &'a str) -> Self {
        Collector {
            origin,
            errors: Vec::new(),
        }
    }

    /// `Ok(value)` when nothing was wrong.
    pub(super) fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    pub(super) fn error(&mut self, key: String, message: impl Into<String>) {
        self.errors.push(ConfigError {
            origin: self.origin.to_string(),
            key,
            message: message.into(),
            position: None,
        });
    }
}

/// Checks the rules serde cannot, collecting every error.
pub fn validate(
    raw: FileConfig,
    origin: &str,
    file: Option<&Path>,
) -> Result<Config, ConfigErrors> {
    let mut c = Collector::new(origin);
    let api = validate_api(&raw, &mut c);
    if raw.targets.is_empty() {
        c.error(
            "target".into(),
            "no [[target]] is defined; fix: add a [[target]] table with name, url and source (see docs/configuration.md)",
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut targets = Vec::new();
    for (i, t) in raw.targets.iter().enumerate() {
        let at = format!("target[{i}]");
        check_name(&t.name, &format!("{at}.name"), &mut c);
        if let Some(first) = seen.insert(&t.name, i) {
            c.error(
                format!("{at}.name"),
                format!(
                    "\"{}\" is already the name of target[{first}]; fix: give every target its own name",
                    t.name
                ),
            );
        }
        check_pool(t, &at, &mut c);
        if let Some(conn) = check_url(&t.url, &format!("{at}.url"), true, &mut c) {
            check_tls_files(&conn, &format!("{at}.url"), &mut c);
            targets.push(Target {
                name: t.name.clone(),
                conn,
                pool: t.pool.clone(),
                pool_mode: t.pool_mode,
                refresh_interval: t.refresh_interval,
                drain_timeout: t.drain_timeout,
                min_rotation_interval: t.min_rotation_interval,
                retry: t.retry,
                breaker: t.breaker,
                access: check_access(t, &at, &mut c),
                trust: check_trust_domains(t, &at, &mut c),
                server_reset: t.server_reset,
                source: check_source(&t.source, &format!("{at}.source"), &mut c),
            });
        }
    }
    let webhook = raw.webhook.clone();
    if let Some(w) = &webhook {
        check_webhook(w, &mut c);
    }
    let postgres = raw.postgres.as_ref().map(|p| validate_postgres(p, &mut c));
    c.finish(Config {
        file: file.map(Path::to_path_buf),
        daemon: raw.daemon.clone(),
        webhook,
        postgres,
        api,
        targets,
        warnings: Vec::new(),
    })
}

fn socket_mode(text: &str, key: &str, c: &mut Collector<'_>) -> u32 {
    match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 => m,
        _ => {
            c.error(
                key.into(),
                format!("\"{text}\" is not a file mode; fix: write it in octal as for chmod, e.g. \"0660\""),
            );
            0o660
        }
    }
}

fn socket_group(group: Option<&String>, key: &str, c: &mut Collector<'_>) -> Option<u32> {
    group.and_then(|g| {
        let gid = super::access::group_id(g);
        if gid.is_none() {
            c.error(
                key.into(),
                format!("group \"{g}\" does not exist on this host; fix: create it (sysusers.d) or remove socket_group"),
            );
        }
        gid
    })
}

/// The largest `postgres.max_message_bytes`: PostgreSQL's own `MaxAllocSize`, so that a length
/// always fits the protocol's 32-bit field with room to spare.
const MAX_MESSAGE_BYTES: usize = 1 << 30;

fn validate_postgres(p: &super::PostgresConfig, c: &mut Collector<'_>) -> super::Postgres {
    if !p.socket_dir.is_absolute() {
        c.error(
            "postgres.socket_dir".into(),
            format!(
                "\"{}\" is a relative path; fix: give an absolute directory such as /run/credswap",
                p.socket_dir.display()
            ),
        );
    }
    if p.max_prepared_statements == 0 {
        c.error(
            "postgres.max_prepared_statements".into(),
            "must be at least 1; e.g. 200",
        );
    }
    if p.max_client_connections == 0 {
        c.error(
            "postgres.max_client_connections".into(),
            "must be more than zero",
        );
    }
    if p.max_message_bytes < 8192 {
        c.error(
            "postgres.max_message_bytes".into(),
            "must be at least 8192 (PostgreSQL's own messages need that much)",
        );
    }
    if p.max_message_bytes > MAX_MESSAGE_BYTES {
        c.error(
            "postgres.max_message_bytes".into(),
            format!("must be at most {MAX_MESSAGE_BYTES} (1 GiB, the most PostgreSQL itself takes in one message); fix: lower it, e.g. to 268435456"),
        );
    }
    if p.startup_timeout.is_zero() {
        c.error(
            "postgres.startup_timeout".into(),
            "must be more than zero; e.g. \"10s\"",
        );
    }
    super::Postgres {
        socket: p.socket_dir.join(format!(".s.PGSQL.{}", p.port)),
        socket_dir: p.socket_dir.clone(),
        port: p.port,
        socket_mode: socket_mode(&p.socket_mode, "postgres.socket_mode", c),
        socket_gid: socket_group(p.socket_group.as_ref(), "postgres.socket_group", c),
        pool_mode: p.pool_mode,
        max_prepared_statements: p.max_prepared_statements,
        max_client_connections: p.max_client_connections,
        max_message_bytes: p.max_message_bytes,
        startup_timeout: p.startup_timeout,
        server_reset: p.server_reset,
    }
}

fn validate_api(raw: &FileConfig, c: &mut Collector<'_>) -> Api {
    let mode = socket_mode(&raw.api.socket_mode, "api.socket_mode", c);
    if !raw.api.socket.is_absolute() {
        c.error(
            "api.socket".into(),
            format!(
                "\"{}\" is a relative path; fix: give an absolute path such as /run/credswap/credswap.sock",
                raw.api.socket.display()
            ),
        );
    }
    let socket_gid = socket_group(raw.api.socket_group.as_ref(), "api.socket_group", c);
    if raw.api.header_read_timeout.is_zero() {
        c.error(
            "api.header_read_timeout".into(),
            "must be more than zero (a connection that never sends a request must not hold its place forever); e.g. \"10s\"",
        );
    }
    if raw.api.max_connections == 0 || raw.api.max_connections_per_uid == 0 {
        c.error(
            "api".into(),
            "max_connections and max_connections_per_uid must be more than zero",
        );
    }
    if raw.api.max_batch_statements == 0 {
        c.error(
            "api.max_batch_statements".into(),
            "must be at least 1; e.g. 100",
        );
    }
    if raw.api.max_response_memory / 2 < raw.api.max_response_bytes {
        c.error(
            "api.max_response_memory".into(),
            format!(
                "is {} bytes, less than twice api.max_response_bytes ({}): an answer is held twice while it is encoded, so one of the largest allowed size could never be sent; fix: raise max_response_memory or lower max_response_bytes",
                raw.api.max_response_memory, raw.api.max_response_bytes
            ),
        );
    }
    if raw.api.rate_limit_per_second < 0.0 || !raw.api.rate_limit_per_second.is_finite() {
        c.error(
            "api.rate_limit_per_second".into(),
            "must be zero (off) or a positive number",
        );
    }
    Api {
        socket: raw.api.socket.clone(),
        socket_mode: mode,
        socket_group: raw.api.socket_group.clone(),
        socket_gid,
        admin_uids: raw.api.admin_uids.clone(),
        metrics_uids: raw.api.metrics_uids.clone(),
        max_body_bytes: raw.api.max_body_bytes,
        max_rows: raw.api.max_rows,
        max_response_bytes: raw.api.max_response_bytes,
        max_batch_statements: raw.api.max_batch_statements,
        max_response_memory: raw.api.max_response_memory,
        rate_limit_per_second: raw.api.rate_limit_per_second,
        rate_limit_burst: raw.api.rate_limit_burst.max(1),
        max_connections: raw.api.max_connections,
        max_connections_per_uid: raw.api.max_connections_per_uid,
        header_read_timeout: raw.api.header_read_timeout,
    }
}

/// Target names appear in URL paths and metric labels: keep them to a safe alphabet.
pub(super) fn check_name(name: &str, key: &str, c: &mut Collector<'_>) {
    let ok_chars = name
        .chars()
        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-');
    let starts_ok = name
        .chars()
        .next()
        .is_some_and(|ch| ch.is_ascii_lowercase());
    if name.is_empty() || !ok_chars || !starts_ok || name.len() > MAX_NAME_LEN {
        c.error(
            key.to_string(),
            format!(
                "\"{name}\" is not a valid target name; fix: use 1 to {MAX_NAME_LEN} characters from a-z, 0-9, _ and -, starting with a letter"
            ),
        );
    }
}

fn check_pool(t: &TargetConfig, at: &str, c: &mut Collector<'_>) {
    let p = &t.pool;
    if t.retry.max < t.retry.initial {
        c.error(
            format!("{at}.retry.max"),
            "is less than retry.initial; fix: make max at least initial",
        );
    }
    if t.breaker.failures == 0 {
        c.error(
            format!("{at}.breaker.failures"),
            "must be at least 1; fix: the number of failures in a row that opens the breaker",
        );
    }
    if p.max_size == 0 {
        c.error(
            format!("{at}.pool.max_size"),
            "must be at least 1, got 0; fix: set it to the most server connections this target may open",
        );
    }
    if p.min_idle > p.max_size {
        c.error(
            format!("{at}.pool.min_idle"),
            format!(
                "{} is more than max_size ({}); fix: lower min_idle or raise max_size",
                p.min_idle, p.max_size
            ),
        );
    }
    for (key, value) in [
        ("pool.checkout_timeout", p.checkout_timeout),
        ("pool.connect_timeout", p.connect_timeout),
        ("refresh_interval", t.refresh_interval),
        ("drain_timeout", t.drain_timeout),
        ("retry.initial", t.retry.initial),
        ("breaker.open_for", t.breaker.open_for),
    ] {
        if value.is_zero() {
            c.error(
                format!("{at}.{key}"),
                "must be more than zero; fix: give a duration such as \"5s\"",
            );
        }
    }
}

/// Parses a target URL. `from_file`: credentials in a configuration file are refused.
pub(super) fn check_url(
    url: &str,
    key: &str,
    from_file: bool,
    c: &mut Collector<'_>,
) -> Option<ConnInfo> {
    let conn = match ConnInfo::parse(url) {
        Ok(conn) => conn,
        Err(e) => {
            c.error(key.to_string(), format!("{e}"));
            return None;
        }
    };
    let mut ok = true;
    if from_file && conn.password.is_some() {
        c.error(
            key.to_string(),
            "contains a password; passwords come from the secret source, never the configuration; fix: remove it from the url and put it in the target's source",
        );
        ok = false;
    }
    if from_file {
        if let Some(user) = &conn.user {
            c.error(
                key.to_string(),
                format!(
                    "contains a user name (\"{user}\"); the user name comes from the secret source with the password; fix: remove it from the url"
                ),
            );
            ok = false;
        }
    }
    if matches!(conn.tls.mode, SslMode::VerifyCa | SslMode::VerifyFull)
        && conn.tls.rootcert.is_none()
    {
        c.error(
            key.to_string(),
            format!(
                "sslmode={} needs sslrootcert; fix: add sslrootcert=/path/to/ca.pem (or sslrootcert=system for the operating system's roots)",
                conn.tls.mode
            ),
        );
        ok = false;
    }
    ok.then_some(conn)
}

/// Whether a `host:port` listen address is a loopback address.
pub(super) fn is_loopback_addr(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or_else(|_| addr.starts_with("localhost:"))
}

/// Whether an `http://host[:port]/...` URL points at loopback.
pub(super) fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What a target's TLS settings leave open, for `check-config` and the start-up log.
pub(super) fn tls_warnings(name: &str, conn: &ConnInfo) -> Vec<String> {
    let tcp = conn.servers.iter().any(|s| matches!(s.host, Host::Tcp(_)));
    if !tcp {
        return vec![];
    }
    let why = match (conn.tls.mode, conn.tls.verification()) {
        (SslMode::Disable, _) => "sends queries unencrypted",
        (SslMode::Allow | SslMode::Prefer, _) => "may fall back to an unencrypted session",
        (_, Verification::None) => "encrypts but does not check the server's certificate",
        _ => return vec![],
    };
    let hint = match &conn.tls.rootcert {
        Some(RootCert::File(_)) | Some(RootCert::System) => "use sslmode=verify-full",
        None => "use sslmode=verify-full with sslrootcert",
    };
    vec![format!(
        "target \"{name}\": sslmode={} {why}; {hint} in production",
        conn.tls.mode
    )]
}

/// Certificate and key files must exist now, so `check-config` catches a wrong path; they are
/// read again whenever a pool is built.
pub(super) fn check_tls_files(conn: &ConnInfo, key: &str, c: &mut Collector<'_>) {
    let mut files = Vec::new();
    if let Some(RootCert::File(p)) = &conn.tls.rootcert {
        files.push(("sslrootcert", p));
    }
    if let Some(p) = &conn.tls.cert {
        files.push(("sslcert", p));
    }
    for (what, path) in files {
        if let Err(e) = std::fs::metadata(path) {
            c.error(
                key.to_string(),
                format!(
                    "{what} file {} cannot be read ({e}); fix: correct the path",
                    path.display()
                ),
            );
        }
    }
    if let Some(path) = &conn.tls.key {
        match std::fs::metadata(path) {
            Err(e) => c.error(
                key.to_string(),
                format!(
                    "sslkey file {} cannot be read ({e}); fix: correct the path",
                    path.display()
                ),
            ),
            Ok(meta) => {
                if let Err(e) =
                    tls::check_key_permissions(path, &meta, rustix::process::geteuid().as_raw())
                {
                    c.error(key.to_string(), e.to_string());
                }
            }
        }
    }
}

fn check_source(source: &SourceConfig, at: &str, c: &mut Collector<'_>) -> Source {
    match source {
        SourceConfig::File(f) => {
            if f.path.as_os_str().is_empty() {
                c.error(
                    format!("{at}.path"),
                    "is empty; fix: give the credentials file's path",
                );
            }
            Source::File(f.clone())
        }
        SourceConfig::Aws(a) => {
            if a.secret_id.trim().is_empty() {
                c.error(
                    format!("{at}.secret_id"),
                    "is empty; fix: give the secret's name or ARN",
                );
            }
            if let Some(url) = &a.endpoint_url {
                check_http_url(url, &format!("{at}.endpoint_url"), c);
            }
            if a.timeout.is_zero() {
                c.error(
                    format!("{at}.timeout"),
                    "must be more than zero; fix: give a duration such as \"5s\"",
                );
            }
            Source::Aws(a.clone())
        }
        SourceConfig::Vault(v) => {
            check_http_url(&v.address, &format!("{at}.address"), c);
            let (key, value) = if v.engine.uses_role() {
                ("role", &v.role)
            } else {
                ("path", &v.path)
            };
            if value.as_deref().is_none_or(|s| s.trim().is_empty()) {
                c.error(
                    format!("{at}.{key}"),
                    format!(
                        "is required for engine \"{}\"; fix: set {key}",
                        engine_name(v.engine)
                    ),
                );
            }
            let other = if v.engine.uses_role() {
                ("path", &v.path)
            } else {
                ("role", &v.role)
            };
            if other.1.is_some() {
                c.error(
                    format!("{at}.{}", other.0),
                    format!(
                        "does not apply to engine \"{}\"; fix: use {key}",
                        engine_name(v.engine)
                    ),
                );
            }
            if v.timeout.is_zero() {
                c.error(
                    format!("{at}.timeout"),
                    "must be more than zero; fix: give a duration such as \"5s\"",
                );
            }
            Source::Vault(v.clone())
        }
    }
}

fn engine_name(e: super::sources::VaultEngine) -> &'static str {
    use super::sources::VaultEngine::*;
    match e {
        Kv2 => "kv2",
        Kv1 => "kv1",
        Database => "database",
        DatabaseStatic => "database-static",
    }
}

fn check_http_url(value: &str, key: &str, c: &mut Collector<'_>) {
    match url::Url::parse(value) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        _ => c.error(
            key.to_string(),
            format!(
                "\"{value}\" is not an http(s) URL; fix: write it like https://vault.internal:8200"
            ),
        ),
    }
}

fn check_trust_domains(
    t: &TargetConfig,
    at: &str,
    c: &mut Collector<'_>,
) -> super::access::TrustDomains {
    let mut seen = std::collections::BTreeMap::new();
    for (i, group) in t.trust_domains.iter().enumerate() {
        let mut uniq: Vec<u32> = group.clone();
        uniq.sort_unstable();
        uniq.dedup();
        if uniq.len() < 2 {
            c.error(
                format!("{at}.trust_domains[{i}]"),
                "holds fewer than two uids; fix: list the uids whose clients may share server connections (a uid alone shares with itself already), or remove it",
            );
        }
        for uid in uniq {
            if let Some(first) = seen.insert(uid, i) {
                c.error(
                    format!("{at}.trust_domains[{i}]"),
                    format!("uid {uid} is in trust_domains[{first}] too; fix: merge the two groups, or keep the uid in one"),
                );
            }
        }
    }
    super::access::TrustDomains::new(t.trust_domains.clone())
}

fn check_access(t: &TargetConfig, at: &str, c: &mut Collector<'_>) -> super::access::Access {
    let mut access = super::access::Access {
        uids: t.allow_uids.iter().copied().collect(),
        gids: t.allow_gids.iter().copied().collect(),
    };
    for (i, user) in t.allow_users.iter().enumerate() {
        match super::access::user_id(user) {
            Some(uid) => {
                access.uids.insert(uid);
            }
            None => c.error(
                format!("{at}.allow_users[{i}]"),
                format!("user \"{user}\" does not exist on this host; fix: create it, or use allow_uids"),
            ),
        }
    }
    for (i, group) in t.allow_groups.iter().enumerate() {
        match super::access::group_id(group) {
            Some(gid) => {
                access.gids.insert(gid);
            }
            None => c.error(
                format!("{at}.allow_groups[{i}]"),
                format!("group \"{group}\" does not exist on this host; fix: create it, or use allow_gids"),
            ),
        }
    }
    access
}

fn check_webhook(w: &super::WebhookConfig, c: &mut Collector<'_>) {
    if w.header_read_timeout.is_zero() {
        c.error(
            "webhook.header_read_timeout".into(),
            "must be more than zero; e.g. \"10s\"",
        );
    }
    if w.hmac_key_files.is_empty() && w.token_file.is_none() {
        c.error(
            "webhook".into(),
            "has no way to authenticate senders; fix: set hmac_key_files, token_file, or both",
        );
    }
    if w.hmac_key_files.len() > 2 {
        c.error(
            "webhook.hmac_key_files".into(),
            "holds more than two keys; fix: keep the current key and, during a rollover, the next one",
        );
    }
    if w.listen.is_empty() && w.unix_socket.is_none() {
        c.error(
            "webhook.listen".into(),
            "is empty and there is no unix_socket; fix: give one of them",
        );
    } else if !w.listen.is_empty() && w.listen.parse::<std::net::SocketAddr>().is_err() {
        c.error(
            "webhook.listen".into(),
            format!(
                "\"{}\" is not an address:port; fix: write it like \"127.0.0.1:9460\"",
                w.listen
            ),
        );
    }
    if w.tls_cert_file.is_some() != w.tls_key_file.is_some() {
        c.error(
            "webhook.tls_cert_file".into(),
            "tls_cert_file and tls_key_file go together",
        );
    }
}
