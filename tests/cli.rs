//! The real binary: `credswap check-config`.

mod support;

use std::process::{Command, Output};

fn credswap(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_credswap"));
    cmd.args(args);
    for var in [
        "CREDSWAP_CONFIG",
        "DATABASE_URL",
        "DB_SSL_VERIFY",
        "DB_CA_CERT_PATH",
        "DB_CLIENT_CERT_PATH",
        "DB_CLIENT_KEY_PATH",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("the credswap binary runs");
    support::capture::record(
        "cli",
        &args.join(" "),
        &format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    out
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credswap.toml");
    std::fs::write(
        &path,
        "[[target]]\nname = \"app_rw\"\nurl = \"host=db.internal dbname=app sslmode=require\"\n\
         pool = { max_size = 20 }\nsource = { kind = \"file\", path = \"/run/credentials/app.json\" }\n",
    )
    .unwrap();
    let out = credswap(&["check-config", path.to_str().unwrap()], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("url = \"postgresql://db.internal:5432/app?sslmode=require\""),
        "{stdout}"
    );
    assert!(stdout.contains("max_size = 20"), "{stdout}");
    assert!(stdout.contains("checkout_timeout = \"2s\""), "{stdout}");
    assert!(
        stderr.contains("warning: target \"app_rw\": sslmode=require encrypts but does not check"),
        "{stderr}"
    );
    // The printed configuration is itself a valid configuration file.
    let again = dir.path().join("again.toml");
    std::fs::write(
        &again,
        stdout.lines().skip(1).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    let out = credswap(&["--config", again.to_str().unwrap(), "check-config"], &[]);
    assert!(out.status.success(), "{:?}", text(&out));
}

#[test]
fn check_config_fails_with_exit_78_and_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[[target]]\nname = \"x\"\nurl = \"postgresql://u:{}@db/app\"\npool = {{ max_size = 0 }}\nsource = {{ kind = \"file\", path = \"/x\" }}\n",
            support::CANARY_PASSWORD
        ),
    )
    .unwrap();
    let out = credswap(&["check-config", path.to_str().unwrap()], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(78));
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("target[0].pool.max_size: must be at least 1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("target[0].url: contains a password"),
        "{stderr}"
    );
    support::assert_no_canary("check-config stderr", &stderr);
}

#[test]
fn check_config_from_the_environment_redacts_the_password() {
    let url = format!(
        "postgresql://app:{}@localhost/app?sslmode=disable",
        support::CANARY_PASSWORD
    );
    let out = credswap(&["check-config"], &[("DATABASE_URL", &url)]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("password = \"[redacted]\""), "{stdout}");
    assert!(stdout.contains("username = \"app\""), "{stdout}");
    assert!(stderr.contains("not for production"), "{stderr}");
    support::assert_no_canary("check-config stdout", &stdout);
    support::assert_no_canary("check-config stderr", &stderr);
}

#[test]
fn no_configuration_at_all() {
    let out = credswap(&["check-config"], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out).1.contains("no configuration given"));
}

/// `dev/reap-test-processes` stops a process its run recorded, and leaves alone a live process
/// whose record does not match (a pid reused by another process). Both records are removed.
#[test]
fn the_reaper_stops_only_recorded_processes() {
    let dir = tempfile::tempdir().unwrap();
    let mut orphan = Command::new("sleep").arg("600").spawn().unwrap();
    let record = support::owned::record_in(dir.path(), orphan.id(), "sleep");
    std::mem::forget(record); // a killed run leaves its records behind
    let mut bystander = Command::new("sleep").arg("600").spawn().unwrap();
    std::fs::write(
        dir.path().join(bystander.id().to_string()),
        "1 a-reused-pid\n",
    )
    .unwrap();
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dev/reap-test-processes"
    ))
    .env("CREDSWAP_TEST_PIDS", dir.path())
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status = orphan.wait().unwrap();
    assert!(
        !status.success(),
        "the recorded orphan was killed: {status:?}"
    );
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "a process whose start time does not match was left alone"
    );
    bystander.kill().unwrap();
    let _ = bystander.wait();
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "records removed"
    );
}
