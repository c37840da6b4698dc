//! TLS to PostgreSQL with libpq's `sslmode` semantics, on rustls.
//!
//! Operators know libpq's six modes; credswap honours them exactly, so a connection string means
//! the same thing here as in `psql`:
//!
//! | mode        | TLS                        | chain checked        | host name checked |
//! |-------------|----------------------------|----------------------|-------------------|
//! | disable     | never                      | -                    | -                 |
//! | allow       | only if plain is refused   | if `sslrootcert` set | no                |
//! | prefer      | if the server offers it    | if `sslrootcert` set | no                |
//! | require     | always                     | if `sslrootcert` set | no                |
//! | verify-ca   | always                     | yes                  | no                |
//! | verify-full | always                     | yes                  | yes               |
//!
//! Certificate and key files are read each time a client configuration is built (once per pool),
//! so a renewed CA or client certificate is picked up by the next pool without a restart.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SslMode {
    Disable,
    Allow,
    /// libpq's default.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's spelling.
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a session opened in this mode must be encrypted (over TCP).
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the trusted roots come from (`sslrootcert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store.
    System,
}

impl fmt::Display for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCert::File(p) => write!(f, "{}", p.display()),
            RootCert::System => f.write_str("system"),
        }
    }
}

/// The TLS part of a connection string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub rootcert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Encrypt, but accept any certificate (libpq `require` without a root file).
    None,
    /// The chain must lead to a trusted root; the host name is not checked.
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

impl TlsSettings {
    /// libpq's rule: the verify modes check what they say; the others check the chain when a
    /// root certificate file is given, and nothing otherwise.
    pub fn verification(&self) -> Verification {
        match (self.mode, &self.rootcert) {
            (SslMode::VerifyFull, _) => Verification::Full,
            (SslMode::VerifyCa, _) => Verification::Chain,
            (_, Some(_)) => Verification::Chain,
            (_, None) => Verification::None,
        }
    }
}

/// Why a TLS client configuration could not be built. Paths are named; contents never are.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "sslmode={0} needs sslrootcert (a CA file, or \"system\" for the operating system's roots)"
    )]
    RootCertRequired(SslMode),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {path} holds no PEM certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} {path}: {detail}")]
    BadCertificate {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("private key file {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey { path: PathBuf },
    #[error(
        "private key file {path} has group or world access (mode {mode:04o}); \
         fix: chmod 0600 {path} (or 0640 if owned by root)"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("the operating system's trust store has no usable certificate")]
    NoSystemRoots,
    #[error("client certificate {cert} does not go with key {key}: {detail}")]
    ClientAuth {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// Installs aws-lc-rs as the process-wide rustls provider, for the HTTP clients (Vault) that
/// build their TLS from it. Idempotent.
pub fn install_default_provider() {
    let _ = aws_lc_rs::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// Builds the rustls configuration for these settings, or `None` for `sslmode=disable`.
/// Reads the files now (blocking I/O: call from `spawn_blocking`).
pub fn client_config(settings: &TlsSettings) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if settings.mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match settings.verification() {
        Verification::None => Arc::new(AcceptAnyCertificate(provider.clone())),
        check => {
            let roots = match &settings.rootcert {
                Some(root) => Arc::new(load_roots(root)?),
                None => return Err(TlsError::RootCertRequired(settings.mode)),
            };
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::BadCertificate {
                    what: "root certificate file",
                    path: PathBuf::from(
                        settings
                            .rootcert
                            .as_ref()
                            .map(|r| r.to_string())
                            .unwrap_or_default(),
                    ),
                    detail: e.to_string(),
                })?;
            if check == Verification::Full {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert, "client certificate file")?;
            let private = load_key(key)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| TlsError::ClientAuth {
                    cert: cert.clone(),
                    key: key.clone(),
                    detail: e.to_string(),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            what,
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            for cert in load_certs(path, "root certificate file")? {
                store.add(cert).map_err(|e| TlsError::BadCertificate {
                    what: "root certificate file",
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(store)
}

/// libpq's permission rule for `sslkey`: no group or world access when the file belongs to us;
/// a root-owned key may be group-readable (0640) so a service group can share it.
pub fn check_key_permissions(
    path: &Path,
    meta: &std::fs::Metadata,
    euid: u32,
) -> Result<(), TlsError> {
    let mode = meta.mode() & 0o7777;
    let ours_too_open = meta.uid() == euid && mode & 0o077 != 0;
    let roots_too_open = meta.uid() == 0 && mode & 0o037 != 0;
    if ours_too_open || roots_too_open {
        return Err(TlsError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        what: "private key file",
        path: path.to_path_buf(),
        source,
    })?;
    check_key_permissions(path, &meta, rustix::process::geteuid().as_raw())?;
    let pem = read(path, "private key file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoPrivateKey {
        path: path.to_path_buf(),
    })
}

/// `verify-ca` (and `require`/`prefer`/`allow` with a root file): the full webpki chain check,
/// minus the host name, which is what libpq does in these modes.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain (issuer, validity, usage) before the name, so a name error
        // means everything else passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// libpq `require` without a root file: encrypted, but any certificate is accepted. The
/// handshake signatures are still checked, so the session key belongs to the certificate shown.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: SslMode, root: bool) -> TlsSettings {
        TlsSettings {
            mode,
            rootcert: root.then(|| RootCert::File("/ca.pem".into())),
            ..Default::default()
        }
    }

    #[test]
    fn verification_follows_libpq() {
        use SslMode::*;
        for mode in [Allow, Prefer, Require] {
            assert_eq!(settings(mode, false).verification(), Verification::None);
            assert_eq!(settings(mode, true).verification(), Verification::Chain);
        }
        assert_eq!(settings(VerifyCa, true).verification(), Verification::Chain);
        assert_eq!(
            settings(VerifyFull, true).verification(),
            Verification::Full
        );
    }

    #[test]
    fn verify_modes_need_a_root() {
        let err = client_config(&settings(SslMode::VerifyCa, false)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sslmode=verify-ca needs sslrootcert (a CA file, or \"system\" for the operating system's roots)"
        );
        assert!(client_config(&settings(SslMode::Disable, false))
            .unwrap()
            .is_none());
        assert!(client_config(&settings(SslMode::Require, false))
            .unwrap()
            .is_some());
    }

    #[test]
    fn key_permission_rule() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, "x").unwrap();
        let me = rustix::process::geteuid().as_raw();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o644, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            let result = check_key_permissions(&path, &meta, me);
            assert_eq!(result.is_ok(), ok, "mode {mode:o}");
        }
        // Someone else's root-owned key (euid != 0): 0640 is fine, 0644 is not.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        if meta.uid() == 0 {
            assert!(check_key_permissions(&path, &meta, 1234).is_ok());
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            let err = check_key_permissions(&path, &meta, 1234).unwrap_err();
            assert!(err.to_string().contains("chmod 0600"), "{err}");
        }
    }
}
