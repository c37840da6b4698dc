//! A throwaway PKI for the test clusters, made once per cache with the `openssl` command:
//! a CA, a server certificate for `localhost` and `127.0.0.1`, client certificates for the
//! `certuser` role (RSA and EC keys, in PKCS#8, PKCS#1 and SEC1), and an unrelated CA.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Paths of the generated files.
#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn wrong_ca_cert(&self) -> PathBuf {
        self.dir.join("wrong-ca.crt")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// RSA client certificate for `certuser`, with its PKCS#8 and PKCS#1 keys.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.crt")
    }
    pub fn client_key_pkcs8(&self) -> PathBuf {
        self.dir.join("client.pkcs8.key")
    }
    pub fn client_key_pkcs1(&self) -> PathBuf {
        self.dir.join("client.pkcs1.key")
    }
    /// EC client certificate for `certuser`, with its PKCS#8 and SEC1 keys.
    pub fn ec_client_cert(&self) -> PathBuf {
        self.dir.join("client-ec.crt")
    }
    pub fn ec_client_key_pkcs8(&self) -> PathBuf {
        self.dir.join("client-ec.pkcs8.key")
    }
    pub fn ec_client_key_sec1(&self) -> PathBuf {
        self.dir.join("client-ec.sec1.key")
    }

    /// Generates everything into `dir`.
    pub fn generate(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let p = |name: &str| dir.join(name).display().to_string();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
        for (name, cn) in [("ca", "credswap test CA"), ("wrong-ca", "unrelated CA")] {
            openssl(
                &[
                    &["req", "-x509", "-nodes", "-days", "3650"][..],
                    &ec,
                    &[
                        "-keyout",
                        &p(&format!("{name}.key")),
                        "-out",
                        &p(&format!("{name}.crt")),
                        "-subj",
                        &format!("/CN={cn}"),
                        "-addext",
                        "basicConstraints=critical,CA:TRUE",
                        "-addext",
                        "keyUsage=critical,keyCertSign,cRLSign",
                    ],
                ]
                .concat(),
            );
        }
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        // Server: EC key.
        issue(dir, "server", "localhost", &ec, "server.ext");
        // Clients for certuser: RSA (PKCS#8 as generated, PKCS#1 converted) and EC (SEC1).
        issue(
            dir,
            "client",
            "certuser",
            &["-newkey", "rsa:2048"],
            "client.ext",
        );
        issue(dir, "client-ec", "certuser", &ec, "client.ext");
        std::fs::rename(dir.join("client.key"), dir.join("client.pkcs8.key")).unwrap();
        std::fs::rename(dir.join("client-ec.key"), dir.join("client-ec.pkcs8.key")).unwrap();
        openssl(&[
            "pkey",
            "-in",
            &p("client.pkcs8.key"),
            "-traditional",
            "-out",
            &p("client.pkcs1.key"),
        ]);
        openssl(&[
            "ec",
            "-in",
            &p("client-ec.pkcs8.key"),
            "-out",
            &p("client-ec.sec1.key"),
        ]);
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "key") {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
        Pki {
            dir: dir.to_path_buf(),
        }
    }
}

fn issue(dir: &Path, name: &str, cn: &str, keyspec: &[&str], ext: &str) {
    let p = |n: &str| dir.join(n).display().to_string();
    openssl(
        &[
            &["req", "-new", "-nodes"][..],
            keyspec,
            &[
                "-keyout",
                &p(&format!("{name}.key")),
                "-out",
                &p(&format!("{name}.csr")),
                "-subj",
                &format!("/CN={cn}"),
            ],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&format!("{name}.csr")),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-set_serial",
        &format!("{}", std::process::id() as u64 * 1000 + name.len() as u64),
        "-days",
        "825",
        "-extfile",
        &p(ext),
        "-out",
        &p(&format!("{name}.crt")),
    ]);
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command is needed by the test harness: apt-get install openssl (dev/test does this)");
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
