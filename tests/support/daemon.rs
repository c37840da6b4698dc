//! The real `credswap run` binary with a configuration, its socket in a temporary directory,
//! its log captured; SIGTERM when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use credswap::api::client;
use serde_json::Value;

pub struct Daemon {
    pub child: Option<Child>,
    _owned: super::owned::Owned,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_credswap")
}

impl Daemon {
    /// Starts `credswap run` with `config` (a TOML text that must not set `[api] socket`;
    /// `extra_api` adds keys to the `[api]` table) and waits until it answers /v1/health.
    pub async fn start(config: &str, extra_api: &str) -> Daemon {
        Self::start_with_env(config, extra_api, &[]).await
    }

    /// As [`Daemon::start`], with extra environment variables.
    pub async fn start_with_env(config: &str, extra_api: &str, env: &[(&str, &str)]) -> Daemon {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // Other users (the refused-peer test) must reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("credswap.sock");
        let path = dir.path().join("credswap.toml");
        std::fs::write(
            &path,
            format!(
                "[api]\nsocket = \"{}\"\n{extra_api}\n{config}",
                socket.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("daemon.log");
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "debug")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("credswap run starts");
        let mut d = Daemon {
            _owned: super::owned::record(child.id(), "credswap"),
            child: Some(child),
            dir,
            socket,
            config: path,
            log,
        };
        d.wait_health().await;
        d
    }

    async fn wait_health(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("credswap run exited with {status}:\n{}", self.log());
            }
            if self.get_health().await == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "credswap did not answer:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until /v1/ready says 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.get("/v1/ready").await.0 != 200 {
            assert!(Instant::now() < deadline, "not ready:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, String) {
        let r = client::request(
            &self.socket,
            method,
            path,
            body.map(|b| b.to_string()),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        let kind = if path == "/metrics" { "metrics" } else { "api" };
        super::capture::record(kind, &format!("{method} {path} -> {}", r.status), &text);
        (
            r.status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    }

    /// The health status code, or `None` when nothing answers.
    pub async fn get_health(&self) -> Option<u16> {
        client::request(
            &self.socket,
            "GET",
            "/v1/health",
            None,
            Duration::from_secs(2),
        )
        .await
        .ok()
        .map(|r| r.status)
    }

    pub async fn get(&self, path: &str) -> (u16, Value, String) {
        self.call("GET", path, None).await
    }

    /// The `/metrics` text (recorded for the canary scan).
    pub async fn metrics(&self) -> String {
        self.call("GET", "/metrics", None).await.2
    }

    /// The value of the metric `name` on the line that also holds `label` (0 when none).
    pub async fn metric(&self, name: &str, label: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `POST /v1/targets/{t}/query`.
    pub async fn query(&self, target: &str, body: Value) -> (u16, Value, String) {
        self.call("POST", &format!("/v1/targets/{target}/query"), Some(body))
            .await
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        super::capture::record("cli", &args.join(" "), &format!("{stdout}{stderr}"));
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        super::capture::record("log", "daemon log", &self.log());
    }
}
