//! Connection strings: `postgresql://` URLs and libpq `key=value` strings.
//!
//! Operators already have connection strings; credswap takes them as they are, with libpq's
//! spelling and rules, and refuses what it cannot honour instead of silently ignoring it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use secrecy::SecretString;

use crate::tls::{RootCert, SslMode, TlsSettings};

/// Default PostgreSQL port, as libpq.
pub const DEFAULT_PORT: u16 = 5432;

/// Keys accepted in a connection string; anything else is refused (libpq does the same).
pub const KNOWN_KEYS: &[&str] = &[
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "connect_timeout",
    "options",
    "target_session_attrs",
];

/// Where one server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address.
    Tcp(String),
    /// A directory holding the server's Unix socket (libpq: a host starting with `/`).
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) if h.contains(':') => write!(f, "[{h}]"),
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One server to try, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub host: Host,
    pub port: u16,
}

/// Which servers of a multi-host list are acceptable (libpq 14's `target_session_attrs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionAttrs {
    #[default]
    Any,
    /// Writable: not in recovery, and `default_transaction_read_only` off.
    ReadWrite,
    /// Not writable: a standby, or a server whose transactions default to read-only.
    ReadOnly,
    /// Not in recovery.
    Primary,
    /// In recovery (a hot standby).
    Standby,
    /// A standby if one is up, else any server.
    PreferStandby,
}

impl SessionAttrs {
    fn parse(value: &str) -> Result<Self, DsnError> {
        match value {
            "any" => Ok(SessionAttrs::Any),
            "read-write" => Ok(SessionAttrs::ReadWrite),
            "read-only" => Ok(SessionAttrs::ReadOnly),
            "primary" => Ok(SessionAttrs::Primary),
            "standby" => Ok(SessionAttrs::Standby),
            "prefer-standby" => Ok(SessionAttrs::PreferStandby),
            other => Err(DsnError::BadValue {
                key: "target_session_attrs",
                value: other.to_string(),
                expected: "any, read-write, read-only, primary, standby or prefer-standby",
            }),
        }
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Whether the target's connections must be able to write: they then leave a server that
    /// stops being writable.
    pub fn wants_writable(self) -> bool {
        matches!(self, SessionAttrs::ReadWrite | SessionAttrs::Primary)
    }
}

/// A parsed connection string. The password, if any, is held as a secret and never printed.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub servers: Vec<Server>,
    pub dbname: Option<String>,
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub tls: TlsSettings,
    pub application_name: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub options: Option<String>,
    pub session_attrs: SessionAttrs,
}

/// Whether a connection string may carry a password: a URL with `@` after the scheme, or a
/// `password` key.
fn holds_credentials(input: &str) -> bool {
    match input.split_once("://") {
        Some((_, rest)) => rest.contains('@'),
        None => input.to_ascii_lowercase().contains("password"),
    }
}

/// Why a connection string was refused. Never carries a password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DsnError {
    #[error("the connection string holds credentials (user:password@ or password=) and could not be parsed; it is not shown here. Percent-encode special characters in the password (/ as %2F, @ as %40), or better leave it out: credentials come from the secret source")]
    WithCredentials,
    #[error(
        "unsupported scheme \"{0}\": use postgresql:// or postgres://, or a libpq key=value string"
    )]
    Scheme(String),
    #[error("unknown connection parameter \"{0}\"; supported: {known}", known = KNOWN_KEYS.join(", "))]
    UnknownKey(String),
    #[error("invalid {key} \"{value}\": expected {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("{hosts} hosts but {ports} ports: give one port for all hosts or one per host")]
    PortCount { hosts: usize, ports: usize },
    #[error("sslrootcert=system needs sslmode=verify-full (got {0}); the operating system's roots only mean something when the host name is checked")]
    SystemRootsNeedVerifyFull(SslMode),
    #[error("sslcert and sslkey go together: {0} is missing")]
    ClientCertPair(&'static str),
}

#[derive(Default)]
struct Params {
    hosts: Option<String>,
    ports: Option<String>,
    dbname: Option<String>,
    user: Option<String>,
    password: Option<SecretString>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
    application_name: Option<String>,
    connect_timeout: Option<String>,
    options: Option<String>,
    target_session_attrs: Option<String>,
}

impl Params {
    fn set(&mut self, key: &str, value: String) -> Result<(), DsnError> {
        let slot = match key {
            "host" => &mut self.hosts,
            "port" => &mut self.ports,
            "dbname" => &mut self.dbname,
            "user" => &mut self.user,
            "password" => {
                self.password = Some(SecretString::from(value));
                return Ok(());
            }
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            "application_name" => &mut self.application_name,
            "connect_timeout" => &mut self.connect_timeout,
            "options" => &mut self.options,
            "target_session_attrs" => &mut self.target_session_attrs,
            other => return Err(DsnError::UnknownKey(other.to_string())),
        };
        *slot = Some(value);
        Ok(())
    }
}

impl ConnInfo {
    /// Parses a URL (`postgresql://`, `postgres://`) or a libpq `key=value` string.
    pub fn parse(input: &str) -> Result<ConnInfo, DsnError> {
        Self::parse_inner(input).map_err(|e| {
            // A string with credentials that does not parse must not be quoted back: with an
            // unescaped `/` or `@` in a password, parts of it land in "host" or "port".
            if holds_credentials(input) {
                DsnError::WithCredentials
            } else {
                e
            }
        })
    }

    fn parse_inner(input: &str) -> Result<ConnInfo, DsnError> {
        let input = input.trim();
        let params = if let Some((scheme, rest)) = input.split_once("://") {
            if scheme != "postgresql" && scheme != "postgres" {
                return Err(DsnError::Scheme(scheme.to_string()));
            }
            parse_url(rest)?
        } else if input.contains('=') || input.is_empty() {
            parse_key_value(input)?
        } else if let Some((scheme, _)) = input.split_once(':') {
            return Err(DsnError::Scheme(scheme.to_string()));
        } else {
            return Err(DsnError::Syntax(
                "not a connection string: expected postgresql://... or key=value pairs".into(),
            ));
        };
        Self::from_params(params)
    }

    fn from_params(p: Params) -> Result<ConnInfo, DsnError> {
        let servers = servers(p.hosts.as_deref(), p.ports.as_deref())?;
        let rootcert = p.sslrootcert.as_deref().filter(|s| !s.is_empty()).map(|s| {
            if s == "system" {
                RootCert::System
            } else {
                RootCert::File(PathBuf::from(s))
            }
        });
        let mode = match p.sslmode.as_deref() {
            Some(m) => Some(SslMode::parse(m).ok_or_else(|| DsnError::BadValue {
                key: "sslmode",
                value: m.to_string(),
                expected: "disable, allow, prefer, require, verify-ca or verify-full",
            })?),
            None => None,
        };
        // libpq 16: sslrootcert=system defaults sslmode to verify-full and refuses weaker modes.
        let mode = match (mode, &rootcert) {
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (Some(m), Some(RootCert::System)) if m != SslMode::VerifyFull => {
                return Err(DsnError::SystemRootsNeedVerifyFull(m))
            }
            (Some(m), _) => m,
            (None, _) => SslMode::default(),
        };
        let cert = p.sslcert.filter(|s| !s.is_empty()).map(PathBuf::from);
        let key = p.sslkey.filter(|s| !s.is_empty()).map(PathBuf::from);
        match (&cert, &key) {
            (Some(_), None) => return Err(DsnError::ClientCertPair("sslkey")),
            (None, Some(_)) => return Err(DsnError::ClientCertPair("sslcert")),
            _ => {}
        }
        let connect_timeout = match p.connect_timeout.as_deref() {
            None | Some("") => None,
            Some(v) => {
                let secs: u64 = v.trim().parse().map_err(|_| DsnError::BadValue {
                    key: "connect_timeout",
                    value: v.to_string(),
                    expected: "a whole number of seconds",
                })?;
                // libpq: 0 means wait forever; we leave the pool's connect_timeout in charge.
                // Values of 1 are raised to 2 seconds, as libpq does.
                (secs > 0).then(|| Duration::from_secs(secs.max(2)))
            }
        };
        let session_attrs = match p.target_session_attrs.as_deref() {
            Some(v) => SessionAttrs::parse(v)?,
            None => SessionAttrs::Any,
        };
        Ok(ConnInfo {
            servers,
            dbname: p.dbname.filter(|s| !s.is_empty()),
            user: p.user.filter(|s| !s.is_empty()),
            password: p.password,
            tls: TlsSettings {
                mode,
                rootcert,
                cert,
                key,
            },
            application_name: p.application_name,
            connect_timeout,
            options: p.options.filter(|s| !s.is_empty()),
            session_attrs,
        })
    }

    /// The connection string in URL form, without user or password: safe to log and print.
    pub fn redacted(&self) -> String {
        let hosts: Vec<String> = self
            .servers
            .iter()
            .map(|s| match &s.host {
                Host::Unix(_) => String::new(),
                h => format!("{h}:{}", s.port),
            })
            .collect();
        let mut out = format!("postgresql://{}", hosts.join(","));
        out.push('/');
        if let Some(db) = &self.dbname {
            out.push_str(&encode(db));
        }
        let mut query = vec![format!("sslmode={}", self.tls.mode)];
        for s in &self.servers {
            if let Host::Unix(dir) = &s.host {
                query.push(format!("host={}", encode(&dir.display().to_string())));
                query.push(format!("port={}", s.port));
            }
        }
        if let Some(root) = &self.tls.rootcert {
            query.push(format!("sslrootcert={}", encode(&root.to_string())));
        }
        if let (Some(c), Some(k)) = (&self.tls.cert, &self.tls.key) {
            query.push(format!("sslcert={}", encode(&c.display().to_string())));
            query.push(format!("sslkey={}", encode(&k.display().to_string())));
        }
        if let Some(a) = &self.application_name {
            query.push(format!("application_name={}", encode(a)));
        }
        if let Some(t) = self.connect_timeout {
            query.push(format!("connect_timeout={}", t.as_secs()));
        }
        if let Some(o) = &self.options {
            query.push(format!("options={}", encode(o)));
        }
        if self.session_attrs != SessionAttrs::Any {
            query.push(format!(
                "target_session_attrs={}",
                self.session_attrs.as_str()
            ));
        }
        out.push('?');
        out.push_str(&query.join("&"));
        out
    }
}

fn encode(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    const SET: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'&')
        .add(b'=')
        .add(b'?')
        .add(b'#')
        .add(b'%')
        .add(b'/')
        .add(b'@')
        .add(b',');
    utf8_percent_encode(s, SET).to_string()
}

fn decode(s: &str, what: &'static str) -> Result<String, DsnError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| DsnError::Syntax(format!("{what} is not valid UTF-8 after percent-decoding")))
}

/// `[user[:password]@][host][:port][,host[:port]...][/dbname][?key=value&...]`
fn parse_url(rest: &str) -> Result<Params, DsnError> {
    let mut p = Params::default();
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, d)) => (a, Some(d)),
        None => (before_query, None),
    };
    let hostlist = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            match userinfo.split_once(':') {
                Some((u, pw)) => {
                    p.user = Some(decode(u, "the user name")?);
                    let pw = percent_decode_str(pw).decode_utf8().map_err(|_| {
                        DsnError::Syntax("the password is not valid UTF-8".to_string())
                    })?;
                    p.password = Some(SecretString::from(pw.into_owned()));
                }
                None => p.user = Some(decode(userinfo, "the user name")?),
            }
            hosts
        }
        None => authority,
    };
    if !hostlist.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for item in hostlist.split(',') {
            let (h, port) = split_host_port(item)?;
            hosts.push(decode(h, "a host")?);
            ports.push(port.unwrap_or_default());
        }
        p.hosts = Some(hosts.join(","));
        if ports.iter().any(|s| !s.is_empty()) {
            p.ports = Some(ports.join(","));
        }
    }
    if let Some(db) = path.filter(|d| !d.is_empty()) {
        p.dbname = Some(decode(db, "the database name")?);
    }
    for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            DsnError::Syntax(format!(
                "URL parameter \"{pair}\" has no value (expected key=value)"
            ))
        })?;
        let key = decode(k, "a parameter name")?;
        let value = if key == "password" {
            percent_decode_str(v).decode_utf8_lossy().into_owned()
        } else {
            decode(v, "a parameter value")?
        };
        p.set(&key, value)?;
    }
    Ok(p)
}

fn split_host_port(item: &str) -> Result<(&str, Option<&str>), DsnError> {
    if let Some(rest) = item.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| DsnError::Syntax(format!("unclosed [ in host \"{item}\"")))?;
        match after {
            "" => Ok((h, None)),
            a => match a.strip_prefix(':') {
                Some(port) => Ok((h, Some(port))),
                None => Err(DsnError::Syntax(format!("unexpected \"{a}\" after [{h}]"))),
            },
        }
    } else {
        match item.split_once(':') {
            Some((h, port)) => Ok((h, Some(port))),
            None => Ok((item, None)),
        }
    }
}

/// libpq's keyword/value syntax: `key=value` pairs separated by white space; values may be
/// single-quoted, with `\'` and `\\` escapes.
fn parse_key_value(input: &str) -> Result<Params, DsnError> {
    let mut p = Params::default();
    let mut chars = input.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(DsnError::Syntax(format!(
                "missing \"=\" after \"{key}\" in key=value connection string"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(DsnError::Syntax(format!(
                    "unterminated quoted value for \"{key}\""
                )));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        p.set(&key, value)?;
    }
    Ok(p)
}

fn servers(hosts: Option<&str>, ports: Option<&str>) -> Result<Vec<Server>, DsnError> {
    let hosts: Vec<&str> = hosts.unwrap_or("").split(',').collect();
    let ports: Vec<u16> = match ports {
        None => vec![],
        Some(list) => list
            .split(',')
            .map(|s| {
                if s.is_empty() {
                    return Ok(DEFAULT_PORT);
                }
                s.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| DsnError::BadValue {
                        key: "port",
                        value: s.to_string(),
                        expected: "a port number from 1 to 65535",
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    if ports.len() > 1 && ports.len() != hosts.len() {
        return Err(DsnError::PortCount {
            hosts: hosts.len(),
            ports: ports.len(),
        });
    }
    Ok(hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Server {
            host: match *h {
                "" => Host::Tcp("localhost".to_string()),
                h if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
                h => Host::Tcp(h.to_string()),
            },
            port: match ports.len() {
                0 => DEFAULT_PORT,
                1 => ports[0],
                _ => ports[i],
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    /// A password with an unescaped `/` or `@` makes the string unparsable; the error must not
    /// quote any part of it.
    #[test]
    fn parse_errors_never_quote_credentials() {
        for bad in [
            "postgresql://app:pa/ss@h/db",
            "postgresql://app:s3cr@t@h:99999/db",
            "host=h password='s3cr port=x",
        ] {
            let e = ConnInfo::parse(bad).unwrap_err();
            let text = e.to_string();
            for part in ["pa", "ss", "s3cr", "t@h"] {
                assert!(!text.contains(&format!("\"{part}")), "{bad}: {text}");
            }
            assert_eq!(e, DsnError::WithCredentials, "{bad}");
        }
        // Without credentials the error still names what is wrong.
        assert!(ConnInfo::parse("postgresql://h:port/db")
            .unwrap_err()
            .to_string()
            .contains("port"));
    }

    #[test]
    fn url_with_everything() {
        let c = ConnInfo::parse(
            "postgresql://db1.internal:5433,db2.internal/app%20db?sslmode=verify-full\
             &sslrootcert=/etc/ca.pem&application_name=web&connect_timeout=7\
             &options=-c%20search_path%3Dapp&target_session_attrs=read-write",
        )
        .unwrap();
        assert_eq!(
            c.servers,
            vec![
                Server {
                    host: Host::Tcp("db1.internal".into()),
                    port: 5433
                },
                Server {
                    host: Host::Tcp("db2.internal".into()),
                    port: 5432
                },
            ]
        );
        assert_eq!(c.dbname.as_deref(), Some("app db"));
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(c.tls.rootcert, Some(RootCert::File("/etc/ca.pem".into())));
        assert_eq!(c.application_name.as_deref(), Some("web"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(c.options.as_deref(), Some("-c search_path=app"));
        assert_eq!(c.session_attrs, SessionAttrs::ReadWrite);
        assert!(c.user.is_none() && c.password.is_none());
    }

    #[test]
    fn key_value_with_quotes_and_multi_host() {
        let c = ConnInfo::parse(
            "host=h1,h2 port=5432,6432 dbname='my \\'db\\'' sslmode=require options='-c a=b'",
        )
        .unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.servers[1].port, 6432);
        assert_eq!(c.dbname.as_deref(), Some("my 'db'"));
        assert_eq!(c.tls.mode, SslMode::Require);
        assert_eq!(c.options.as_deref(), Some("-c a=b"));
    }

    #[test]
    fn ipv6_and_unix_hosts() {
        let c = ConnInfo::parse("postgres://[::1]:6000/db").unwrap();
        assert_eq!(c.servers[0].host, Host::Tcp("::1".into()));
        assert_eq!(c.servers[0].port, 6000);
        let c = ConnInfo::parse("postgresql://%2Fvar%2Frun%2Fpostgresql/db").unwrap();
        assert_eq!(c.servers[0].host, Host::Unix("/var/run/postgresql".into()));
        let c = ConnInfo::parse("postgresql:///db?host=/tmp&port=5555").unwrap();
        assert_eq!(c.servers[0].host, Host::Unix("/tmp".into()));
        assert_eq!(c.servers[0].port, 5555);
    }

    #[test]
    fn password_is_kept_secret() {
        let c = ConnInfo::parse("postgresql://u:s%40cret-CANARY@h/db").unwrap();
        assert_eq!(c.user.as_deref(), Some("u"));
        assert_eq!(
            c.password.as_ref().unwrap().expose_secret(),
            "s@cret-CANARY"
        );
        assert!(!format!("{c:?}").contains("CANARY"));
        assert!(!c.redacted().contains("CANARY"));
        let c = ConnInfo::parse("host=h password=kv-CANARY").unwrap();
        assert!(!format!("{c:?}").contains("CANARY"));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            ConnInfo::parse("mysql://h/db").unwrap_err(),
            DsnError::Scheme("mysql".into())
        );
        assert_eq!(
            ConnInfo::parse("postgresql://h/db?sslmod=require").unwrap_err(),
            DsnError::UnknownKey("sslmod".into())
        );
        assert!(matches!(
            ConnInfo::parse("host=h sslmode=verify").unwrap_err(),
            DsnError::BadValue { key: "sslmode", .. }
        ));
        assert!(matches!(
            ConnInfo::parse("host=h port=99999").unwrap_err(),
            DsnError::BadValue { key: "port", .. }
        ));
        assert_eq!(
            ConnInfo::parse("host=a,b,c port=1,2").unwrap_err(),
            DsnError::PortCount { hosts: 3, ports: 2 }
        );
        assert_eq!(
            ConnInfo::parse("host=h sslrootcert=system sslmode=require").unwrap_err(),
            DsnError::SystemRootsNeedVerifyFull(SslMode::Require)
        );
        assert_eq!(
            ConnInfo::parse("host=h sslcert=/c.pem").unwrap_err(),
            DsnError::ClientCertPair("sslkey")
        );
        assert!(matches!(
            ConnInfo::parse("host=h dbname='x").unwrap_err(),
            DsnError::Syntax(_)
        ));
    }

    #[test]
    fn system_roots_default_to_verify_full() {
        let c = ConnInfo::parse("host=h sslrootcert=system").unwrap();
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(c.tls.rootcert, Some(RootCert::System));
    }

    #[test]
    fn redacted_round_trips() {
        let src = "postgresql://u:pw@h1:5433,h2:5434/db?sslmode=verify-ca&sslrootcert=/ca.pem";
        let c = ConnInfo::parse(src).unwrap();
        let again = ConnInfo::parse(&c.redacted()).unwrap();
        assert_eq!(again.servers, c.servers);
        assert_eq!(again.tls, c.tls);
        assert!(again.user.is_none() && again.password.is_none());
    }
}
