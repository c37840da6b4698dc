//! The secret-store test servers: moto (AWS Secrets Manager) and OpenBao in dev mode, both from
//! the venv `dev/setup` makes, started on free loopback ports and killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The root token of the test OpenBao: a canary, so a leak of it is caught.
pub const BAO_ROOT_TOKEN: &str = "canary-root-token-5d2a91";

fn venv_bin(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run dev/setup (it installs dev/requirements.txt into .venv)",
        path.display()
    );
    path
}

/// Waits until `url` answers 200, or panics with the server's output.
fn wait_ready(child: &mut Child, url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited during start-up with {status}");
        }
        if probe::get_ok(url) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not become ready at {url} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tiny blocking HTTP GET over std, so readiness checks need no runtime.
mod probe {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    pub fn get_ok(url: &str) -> bool {
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let Ok(mut s) = TcpStream::connect(host) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        if write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") && &buf[9..12] == b"200"
    }
}

/// A moto server: AWS Secrets Manager on loopback.
pub struct Moto {
    child: Child,
    _owned: super::owned::Owned,
    port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = super::free_port();
        let mut child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        wait_ready(
            &mut child,
            &format!("http://127.0.0.1:{port}/moto-api/"),
            "moto_server",
        );
        // The SDK reads these from the environment; the values mean nothing to moto.
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        let _owned = super::owned::record(child.id(), "moto_server");
        Moto {
            child,
            _owned,
            port,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (a dead store), keeping the port for a restart.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port (its data is gone, as after a real restart).
    pub fn restart(&mut self) {
        self.stop();
        let mut child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        wait_ready(
            &mut child,
            &format!("http://127.0.0.1:{}/moto-api/", self.port),
            "moto_server",
        );
        self._owned = super::owned::record(child.id(), "moto_server");
        self.child = child;
    }

    /// A Secrets Manager client for the test itself.
    pub async fn client(&self) -> aws_sdk_secretsmanager::Client {
        let cfg = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await;
        aws_sdk_secretsmanager::Client::new(&cfg)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An OpenBao dev server (in-memory, unsealed, KV v2 at `secret/`).
pub struct Bao {
    child: Child,
    _owned: super::owned::Owned,
    port: u16,
    http: reqwest::Client,
    /// With `-dev-tls`: the directory holding its generated CA (`vault-ca.pem`).
    tls_dir: Option<tempfile::TempDir>,
}

impl Bao {
    /// A dev server on HTTPS with a CA of its own (`ca_file()`).
    pub fn start_tls() -> Bao {
        let port = super::free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(venv_bin("openbao-server"))
            .args([
                "server",
                "-dev",
                "-dev-tls",
                "-dev-no-store-token",
                &format!("-dev-tls-cert-dir={}", dir.path().display()),
                &format!("-dev-root-token-id={BAO_ROOT_TOKEN}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the OpenBao server starts");
        let ca = dir.path().join("vault-ca.pem");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(ca.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("OpenBao exited during start-up with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao with TLS did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        credswap::tls::install_default_provider();
        let root = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
        Bao {
            _owned: super::owned::record(child.id(), "openbao"),
            child,
            port,
            http: reqwest::Client::builder()
                .add_root_certificate(root)
                .build()
                .unwrap(),
            tls_dir: Some(dir),
        }
    }

    /// The CA of a TLS dev server.
    pub fn ca_file(&self) -> PathBuf {
        self.tls_dir
            .as_ref()
            .expect("started with start_tls")
            .path()
            .join("vault-ca.pem")
    }

    pub fn start() -> Bao {
        let port = super::free_port();
        let mut child = Command::new(venv_bin("openbao-server"))
            .args([
                "server",
                "-dev",
                "-dev-no-store-token",
                &format!("-dev-root-token-id={BAO_ROOT_TOKEN}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the OpenBao server starts");
        wait_ready(
            &mut child,
            &format!("http://127.0.0.1:{port}/v1/sys/health"),
            "OpenBao",
        );
        credswap::tls::install_default_provider();
        Bao {
            _owned: super::owned::record(child.id(), "openbao"),
            child,
            port,
            http: reqwest::Client::new(),
            tls_dir: None,
        }
    }

    pub fn address(&self) -> String {
        let scheme = if self.tls_dir.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A request with the root token; panics on an error status, with the body.
    /// Mounts the database engine on `db` (verify-full, as the superuser `vaultadmin` it
    /// creates) with the dynamic role `dyn`: a login role per lease, valid for `ttl`, and
    /// `extra` statements run as it is created (grants).
    pub async fn database_engine(&self, db: &super::pg::Cluster, ttl: &str, extra: &[&str]) {
        db.create_role("vaultadmin", "vault-admin-pw").await;
        db.admin()
            .await
            .batch_execute("ALTER ROLE vaultadmin SUPERUSER")
            .await
            .unwrap();
        self.call(
            "POST",
            "sys/mounts/database",
            Some(json!({"type": "database"})),
        )
        .await;
        let url = format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            db.port(),
            super::pg::pki().ca_cert().display()
        );
        self.call(
            "POST",
            "database/config/pg",
            Some(json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": url,
                "username": "vaultadmin",
                "password": "vault-admin-pw",
                "allowed_roles": "*",
            })),
        )
        .await;
        let mut creation = vec!["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';".to_string()];
        creation.extend(extra.iter().map(|s| s.to_string()));
        self.call(
            "POST",
            "database/roles/dyn",
            Some(json!({
                "db_name": "pg",
                "creation_statements": creation,
                "default_ttl": ttl,
                "max_ttl": "10m",
            })),
        )
        .await;
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call_with(BAO_ROOT_TOKEN, method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A request with a given token; `Err` holds the status and body.
    pub async fn call_with(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.address()))
            .header("X-Vault-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Writes a KV v2 secret and returns its version.
    pub async fn kv2_put(&self, path: &str, data: Value) -> u64 {
        let r = self
            .call(
                "POST",
                &format!("secret/data/{path}"),
                Some(json!({ "data": data })),
            )
            .await;
        r["data"]["version"].as_u64().unwrap()
    }

    /// Mounts KV v1 at `kv1/`.
    pub async fn enable_kv1(&self) {
        self.call(
            "POST",
            "sys/mounts/kv1",
            Some(json!({"type": "kv", "options": {"version": "1"}})),
        )
        .await;
    }

    /// Enables AppRole with `role` bound to `policy`; returns (role_id, secret_id).
    pub async fn approle(&self, role: &str, policy: &str, token_ttl: &str) -> (String, String) {
        let _ = self
            .call_with(
                BAO_ROOT_TOKEN,
                "POST",
                "sys/auth/approle",
                Some(json!({"type": "approle"})),
            )
            .await;
        self.call(
            "POST",
            &format!("auth/approle/role/{role}"),
            Some(
                json!({"token_policies": [policy], "token_ttl": token_ttl, "token_max_ttl": "1h"}),
            ),
        )
        .await;
        let role_id = self
            .call("GET", &format!("auth/approle/role/{role}/role-id"), None)
            .await["data"]["role_id"]
            .as_str()
            .unwrap()
            .to_string();
        let secret_id = self
            .call("POST", &format!("auth/approle/role/{role}/secret-id"), None)
            .await["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_string();
        (role_id, secret_id)
    }

    /// Calls `path` asking for a response-wrapped answer; returns the wrapping token.
    pub async fn http_wrapped(&self, method: &str, path: &str, ttl: &str) -> String {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp: Value = self
            .http
            .request(method, format!("{}/v1/{path}", self.address()))
            .header("X-Vault-Token", BAO_ROOT_TOKEN)
            .header("X-Vault-Wrap-TTL", ttl)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["wrap_info"]["token"]
            .as_str()
            .expect("a wrapped response")
            .to_string()
    }

    /// A policy named `name` with `hcl` rules.
    pub async fn policy(&self, name: &str, hcl: &str) {
        self.call(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        )
        .await;
    }

    /// A child token with `policy` and a TTL; returns the token.
    pub async fn token(&self, policy: &str, ttl: &str, renewable: bool) -> String {
        let r = self
            .call(
                "POST",
                "auth/token/create",
                Some(json!({"policies": [policy], "ttl": ttl, "renewable": renewable, "explicit_max_ttl": "1h"})),
            )
            .await;
        r["auth"]["client_token"].as_str().unwrap().to_string()
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
