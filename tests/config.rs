//! Configuration errors, with the exact messages an operator reads.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use credswap::config::{Config, PoolMode, ServerReset, Source};
use credswap::tls::{RootCert, SslMode};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(text: &str) -> Result<Config, Vec<String>> {
    Config::from_toml(text, Path::new("/etc/credswap/credswap.toml"), &env(&[]))
        .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

fn errors(text: &str) -> Vec<String> {
    load(text).expect_err("the configuration must be refused")
}

const GOOD: &str = r#"
[[target]]
name = "app_rw"
url = "postgresql://db.internal:5432/app?sslmode=require"
source = { kind = "file", path = "/run/credentials/credswap.service/app-rw.json" }
"#;

#[test]
fn defaults_are_filled_in() {
    let c = load(GOOD).unwrap();
    let t = &c.targets[0];
    assert_eq!(t.name, "app_rw");
    assert_eq!(t.pool.max_size, 10);
    assert_eq!(t.pool.min_idle, 1);
    assert_eq!(t.pool.checkout_timeout.as_secs(), 2);
    assert_eq!(t.pool.statement_timeout.as_secs(), 30);
    assert_eq!(t.pool.connect_timeout.as_secs(), 5);
    assert_eq!(t.refresh_interval.as_secs(), 300);
    assert_eq!(t.drain_timeout.as_secs(), 30);
    assert_eq!(c.api.socket, PathBuf::from("/run/credswap/credswap.sock"));
    assert_eq!(c.api.socket_mode, 0o660);
    assert_eq!(c.api.admin_uids, vec![0]);
    assert!(matches!(&t.source, Source::File(f) if f.path.ends_with("app-rw.json")));
    assert_eq!(
        c.warnings,
        vec!["target \"app_rw\": sslmode=require encrypts but does not check the server's certificate; use sslmode=verify-full with sslrootcert in production"]
    );
}

#[test]
fn unknown_key_names_its_path_and_line() {
    let text = GOOD.to_string() + "pool = { max_size = 5, max_sise = 6 }\n";
    assert_eq!(
        errors(&text),
        vec!["/etc/credswap/credswap.toml:6:24: target[0].pool.max_sise: unknown field `max_sise`, expected one of `max_size`, `min_idle`, `checkout_timeout`, `statement_timeout`, `idle_timeout`, `max_lifetime`, `connect_timeout`, `leak_threshold`"]
    );
}

#[test]
fn bad_duration_names_its_path() {
    let text = GOOD.to_string() + "drain_timeout = \"30 parsecs\"\n";
    let e = errors(&text);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("/etc/credswap/credswap.toml:6:17: target[0].drain_timeout: invalid duration \"30 parsecs\""),
        "{e:?}"
    );
    assert!(
        e[0].ends_with("write it like \"250ms\", \"30s\", \"5m\" or \"1h\""),
        "{e:?}"
    );
}

#[test]
fn wrong_type_and_missing_key() {
    let e = errors("[[target]]\nname = \"a\"\nurl = 5\n");
    assert_eq!(e, vec!["/etc/credswap/credswap.toml:3:7: target[0].url: invalid type: integer `5`, expected a string"]);
    let e = errors("[[target]]\nname = \"a\"\nurl = \"host=h\"\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("target[0]: missing field `source`"), "{e:?}");
    let e = errors(
        "[[target]]\nname = \"a\"\nurl = \"host=h\"\nsource = { kind = \"carrier-pigeon\" }\n",
    );
    assert_eq!(
        e,
        vec!["/etc/credswap/credswap.toml:4:19: target[0].source.kind: unknown variant `carrier-pigeon`, expected one of `file`, `aws`, `vault`"]
    );
}

#[test]
fn syntax_error_has_a_position() {
    let e = errors("[[target]\nname = \"a\"\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("/etc/credswap/credswap.toml:1:"), "{e:?}");
    assert!(e[0].contains("(syntax)"), "{e:?}");
}

#[test]
fn semantic_errors_are_all_reported() {
    let text = r#"
[api]
socket = "credswap.sock"
socket_mode = "rw-rw----"

[[target]]
name = "App RW"
url = "postgresql://db/app"
pool = { max_size = 0, min_idle = 2, checkout_timeout = "0s" }
source = { kind = "file", path = "/x" }

[[target]]
name = "ro"
url = "mysql://db/app"
source = { kind = "file", path = "/x" }

[[target]]
name = "ro"
url = "postgresql://db/app?sslmode=verify-full"
source = { kind = "file", path = "/x" }
"#;
    let f = "/etc/credswap/credswap.toml";
    assert_eq!(
        errors(text),
        vec![
            format!("{f}: api.socket_mode: \"rw-rw----\" is not a file mode; fix: write it in octal as for chmod, e.g. \"0660\""),
            format!("{f}: api.socket: \"credswap.sock\" is a relative path; fix: give an absolute path such as /run/credswap/credswap.sock"),
            format!("{f}: target[0].name: \"App RW\" is not a valid target name; fix: use 1 to 40 characters from a-z, 0-9, _ and -, starting with a letter"),
            format!("{f}: target[0].pool.max_size: must be at least 1, got 0; fix: set it to the most server connections this target may open"),
            format!("{f}: target[0].pool.min_idle: 2 is more than max_size (0); fix: lower min_idle or raise max_size"),
            format!("{f}: target[0].pool.checkout_timeout: must be more than zero; fix: give a duration such as \"5s\""),
            format!("{f}: target[1].url: unsupported scheme \"mysql\": use postgresql:// or postgres://, or a libpq key=value string"),
            format!("{f}: target[2].name: \"ro\" is already the name of target[1]; fix: give every target its own name"),
            format!("{f}: target[2].url: sslmode=verify-full needs sslrootcert; fix: add sslrootcert=/path/to/ca.pem (or sslrootcert=system for the operating system's roots)"),
        ]
    );
}

#[test]
fn no_targets() {
    assert_eq!(
        errors(""),
        vec!["/etc/credswap/credswap.toml: target: no [[target]] is defined; fix: add a [[target]] table with name, url and source (see docs/configuration.md)"]
    );
}

#[test]
fn credentials_in_the_url_are_refused_without_echoing_them() {
    let canary = support::CANARY_PASSWORD;
    let text = format!(
        "[[target]]\nname = \"a\"\nurl = \"postgresql://admin:{canary}@db/app\"\nsource = {{ kind = \"file\", path = \"/x\" }}\n"
    );
    let e = errors(&text);
    assert_eq!(
        e,
        vec![
            "/etc/credswap/credswap.toml: target[0].url: contains a password; passwords come from the secret source, never the configuration; fix: remove it from the url and put it in the target's source".to_string(),
            "/etc/credswap/credswap.toml: target[0].url: contains a user name (\"admin\"); the user name comes from the secret source with the password; fix: remove it from the url".to_string(),
        ]
    );
    // Also as a key=value password.
    let text = format!(
        "[[target]]\nname = \"a\"\nurl = \"host=db password={canary}\"\nsource = {{ kind = \"file\", path = \"/x\" }}\n"
    );
    for e in errors(&text) {
        support::assert_no_canary("config error", &e);
    }
}

#[test]
fn tls_files_must_exist_and_keys_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    std::fs::write(&key, "not really a key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
    let text = format!(
        "[[target]]\nname = \"a\"\nurl = \"host=db sslmode=verify-ca sslrootcert=/nonexistent/ca.pem sslcert=/nonexistent/c.pem sslkey={}\"\nsource = {{ kind = \"file\", path = \"/x\" }}\n",
        key.display()
    );
    let f = "/etc/credswap/credswap.toml";
    assert_eq!(
        errors(&text),
        vec![
            format!("{f}: target[0].url: sslrootcert file /nonexistent/ca.pem cannot be read (No such file or directory (os error 2)); fix: correct the path"),
            format!("{f}: target[0].url: sslcert file /nonexistent/c.pem cannot be read (No such file or directory (os error 2)); fix: correct the path"),
            format!("{f}: target[0].url: private key file {k} has group or world access (mode 0604); fix: chmod 0600 {k} (or 0640 if owned by root)", k = key.display()),
        ]
    );
}

#[test]
fn environment_only_setup_from_database_url() {
    let canary = support::CANARY_PASSWORD;
    let e = env(&[(
        "DATABASE_URL",
        &format!("postgres://app:{canary}@db:6432/app?sslmode=require"),
    )]);
    let c = Config::load(None, &e).unwrap();
    assert!(c.file.is_none());
    let t = &c.targets[0];
    assert_eq!(t.name, "default");
    assert_eq!(t.conn.servers[0].port, 6432);
    assert!(t.conn.password.is_none() && t.conn.user.is_none());
    assert!(matches!(&t.source, Source::Development { username, .. } if username == "app"));
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("development source, not for production")));
    support::assert_no_canary("Debug of the configuration", &format!("{c:?}"));
    support::assert_no_canary(
        "rendered configuration",
        &credswap::config::render_effective(&c),
    );
}

#[test]
fn environment_errors() {
    let msg = |pairs: &[(&str, &str)]| -> Vec<String> {
        Config::load(None, &env(pairs))
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    };
    assert_eq!(
        msg(&[]),
        vec!["environment: CREDSWAP_CONFIG: no configuration given; fix: pass --config FILE, set CREDSWAP_CONFIG, or set DATABASE_URL for a single-target development setup"]
    );
    assert_eq!(
        msg(&[("DATABASE_URL", "postgres://db/app")]),
        vec!["environment: DATABASE_URL: has no user name and password; without a configuration file both come from DATABASE_URL (development only); fix: use postgresql://USER:PASSWORD@HOST/DB, or a configuration file with a secret source"]
    );
    assert_eq!(
        msg(&[("DATABASE_URL", "postgres://u:p@db/app"), ("DB_SSL_VERIFY", "maybe")]),
        vec!["environment: DB_SSL_VERIFY: \"maybe\" is not true or false; fix: DB_SSL_VERIFY=true checks the server's certificate and host name (verify-full), false only encrypts (require)"]
    );
    assert_eq!(
        msg(&[("DATABASE_URL", "postgres://u:p@db/app"), ("DB_SSL_VERIFY", "true")]),
        vec!["environment: DB_SSL_VERIFY: true needs a CA certificate; fix: set DB_CA_CERT_PATH (or sslrootcert in the url)"]
    );
    assert_eq!(
        msg(&[("DATABASE_URL", "postgres://u:p@db/app"), ("DB_CLIENT_CERT_PATH", "/c.pem")]),
        vec![
            "environment: DB_CLIENT_CERT_PATH: is set but no client key is; fix: also set DB_CLIENT_KEY_PATH",
            "environment: DB_CLIENT_CERT_PATH: sslcert file /c.pem cannot be read (No such file or directory (os error 2)); fix: correct the path",
        ]
    );
}

#[test]
fn db_variables_override_the_single_target() {
    let p = support::pg::pki();
    let ca = p.ca_cert().display().to_string();
    let cert = p.client_cert().display().to_string();
    let key = p.client_key_pkcs8().display().to_string();
    let e = env(&[
        ("DATABASE_URL", "postgresql://db.internal/app"),
        ("DB_SSL_VERIFY", "true"),
        ("DB_CA_CERT_PATH", &ca),
        ("DB_CLIENT_CERT_PATH", &cert),
        ("DB_CLIENT_KEY_PATH", &key),
    ]);
    let c = Config::from_toml(GOOD, Path::new("/etc/credswap/credswap.toml"), &e).unwrap();
    let tls = &c.targets[0].conn.tls;
    assert_eq!(c.targets[0].conn.dbname.as_deref(), Some("app"));
    assert_eq!(tls.mode, SslMode::VerifyFull);
    assert_eq!(tls.rootcert, Some(RootCert::File(ca.into())));
    assert_eq!(tls.cert, Some(cert.into()));
    assert_eq!(tls.key, Some(key.into()));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let e = env(&[("DB_SSL_VERIFY", "false")]);
    let c = Config::from_toml(GOOD, Path::new("/c.toml"), &e).unwrap();
    assert_eq!(c.targets[0].conn.tls.mode, SslMode::Require);

    // A password in DATABASE_URL next to a configuration file is refused like one in the file.
    let e = env(&[("DATABASE_URL", "postgresql://u:secret@db/app")]);
    let err = Config::from_toml(GOOD, Path::new("/c.toml"), &e).unwrap_err();
    assert!(
        err.to_string()
            .contains("environment: DATABASE_URL: contains a password"),
        "{err}"
    );

    // With several targets the single-target variables are refused.
    let two = GOOD.to_string() + &GOOD.replace("app_rw", "app_ro");
    let err = Config::from_toml(
        &two,
        Path::new("/c.toml"),
        &env(&[("DB_SSL_VERIFY", "true")]),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment: DB_SSL_VERIFY: applies to a single-target setup, but the configuration has 2 targets; fix: unset DB_SSL_VERIFY and put the setting in each target's url"
    );
}

#[test]
fn credswap_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, GOOD).unwrap();
    let c = Config::load(None, &env(&[("CREDSWAP_CONFIG", path.to_str().unwrap())])).unwrap();
    assert_eq!(c.file.as_deref(), Some(path.as_path()));
    let missing = dir.path().join("missing.toml");
    let err = Config::load(Some(&missing), &env(&[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: (file): cannot read the configuration file: No such file or directory (os error 2); fix: check the path, or pass --config", missing.display())
    );
}

/// Plaintext where secrets travel is flagged: a Vault address over http off the host, a webhook
/// token accepted on a non-loopback TCP listener without TLS. Loopback is not flagged.
#[test]
fn plaintext_secrets_in_transit_are_warned_about() {
    let vault = |address: &str| {
        format!(
            "[[target]]\nname = \"v\"\nurl = \"postgresql://db/app?sslmode=verify-full&sslrootcert=system\"\nsource = {{ kind = \"vault\", address = \"{address}\", path = \"app\" }}\n"
        )
    };
    let warned = |text: &str, needle: &str| {
        load(text)
            .unwrap()
            .warnings
            .iter()
            .any(|w| w.contains(needle))
    };
    assert!(warned(&vault("http://vault.internal:8200"), "plain http"));
    assert!(!warned(&vault("http://127.0.0.1:8200"), "plain http"));
    assert!(!warned(&vault("https://vault.internal:8200"), "plain http"));
    let dir = tempfile::tempdir().unwrap();
    let token = support::write_private(dir.path(), "token", "t0ken-value-here");
    let hook = |listen: &str| {
        format!(
            "[webhook]\nlisten = \"{listen}\"\ntoken_file = \"{}\"\n{GOOD}",
            token.display()
        )
    };
    assert!(warned(&hook("0.0.0.0:9460"), "without TLS"));
    assert!(!warned(&hook("127.0.0.1:9460"), "without TLS"));
}

/// A duration too long for the clock is refused with its key, not a panic at the first timer.
#[test]
fn overlong_durations_are_refused() {
    let e = errors(&GOOD.replace("source =", "refresh_interval = \"400000d\"\nsource ="));
    assert!(e.iter().any(|e| e.contains("1 year")), "{e:?}");
}

/// The PostgreSQL front end's table: defaults, the socket path libpq expects, transaction mode
/// globally or per target, and a prepared-statement limit of zero refused.
#[test]
fn postgres_front_end_settings() {
    let c = load(&format!(
        "[postgres]\nsocket_dir = \"/run/credswap\"\n{GOOD}"
    ))
    .unwrap();
    let p = c.postgres.unwrap();
    assert_eq!(p.socket, PathBuf::from("/run/credswap/.s.PGSQL.5432"));
    assert_eq!((p.socket_mode, p.max_client_connections), (0o660, 1000));
    assert_eq!(
        (p.pool_mode, p.max_prepared_statements),
        (PoolMode::Session, 200)
    );
    assert_eq!(c.targets[0].pool_mode, None, "follows [postgres]");
    let c = load(&format!(
        "[postgres]\npool_mode = \"transaction\"\n{}",
        GOOD.replace("source =", "pool_mode = \"session\"\nsource =")
    ))
    .unwrap();
    assert_eq!(c.postgres.unwrap().pool_mode, PoolMode::Transaction);
    assert_eq!(c.targets[0].pool_mode, Some(PoolMode::Session));
    let e = errors(&format!("[postgres]\nmax_prepared_statements = 0\n{GOOD}"));
    assert!(
        e.iter()
            .any(|e| e.contains("postgres.max_prepared_statements")),
        "{e:?}"
    );
    let e = errors(&GOOD.replace("source =", "pool_mode = \"statement\"\nsource ="));
    assert!(e.iter().any(|e| e.contains("pool_mode")), "{e:?}");
    let e = errors(&format!(
        "[postgres]\nmax_message_bytes = 4294967296\n{GOOD}"
    ));
    assert!(
        e.iter()
            .any(|e| e.contains("postgres.max_message_bytes") && e.contains("at most")),
        "{e:?}"
    );
    let e = errors(&format!(
        "[postgres]\nsocket_dir = \"run\"\nport = 6432\n{GOOD}"
    ));
    assert!(e.iter().any(|e| e.contains("postgres.socket_dir")), "{e:?}");
}

/// Who may share server connections, and when they are reset: the uid alone by default;
/// groups of uids declared per target, each uid in one group of at least two; `server_reset`
/// `auto` by default, `always` in `[postgres]` or per target.
#[test]
fn trust_domains_and_server_reset() {
    let c = load(&format!("[postgres]\n{GOOD}")).unwrap();
    assert_eq!(c.postgres.unwrap().server_reset, ServerReset::Auto);
    let t = &c.targets[0];
    assert_eq!((t.trust.domain(1001), t.server_reset), (1001, None));
    let c = load(&format!(
        "[postgres]\nserver_reset = \"always\"\n{}",
        GOOD.replace(
            "source =",
            "trust_domains = [[1002, 1001], [7, 8, 9]]\nserver_reset = \"auto\"\nsource ="
        )
    ))
    .unwrap();
    assert_eq!(c.postgres.unwrap().server_reset, ServerReset::Always);
    let t = &c.targets[0];
    assert_eq!(t.server_reset, Some(ServerReset::Auto));
    assert_eq!(
        [1001, 1002, 9, 8, 7, 10].map(|u| t.trust.domain(u)),
        [1001, 1001, 7, 7, 7, 10]
    );
    let e = errors(&GOOD.replace(
        "source =",
        "trust_domains = [[1, 2], [2, 3], [4]]\nsource =",
    ));
    assert!(
        e.iter()
            .any(|e| e.contains("target[0].trust_domains[1]") && e.contains("uid 2")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.contains("target[0].trust_domains[2]") && e.contains("fewer than two")),
        "{e:?}"
    );
    let e = errors(&format!("[postgres]\nserver_reset = \"never\"\n{GOOD}"));
    assert!(e.iter().any(|e| e.contains("server_reset")), "{e:?}");
}

/// The response limits: defaults, and a memory budget that could never hold one maximal answer
/// (held twice while it is encoded) is refused with both keys named.
#[test]
fn response_limits() {
    let c = load(GOOD).unwrap();
    assert_eq!(
        (c.api.max_batch_statements, c.api.max_response_memory),
        (100, 32 << 20)
    );
    let e = errors(&format!(
        "[api]\nmax_response_bytes = 1000\nmax_response_memory = 1999\nmax_batch_statements = 0\n{GOOD}"
    ));
    assert!(
        e.iter()
            .any(|e| e.contains("api.max_response_memory")
                && e.contains("twice api.max_response_bytes")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.contains("api.max_batch_statements")),
        "{e:?}"
    );
}
