//! The daemon under a service manager: READY=1, STATUS= lines, watchdog pings, STOPPING=1 on a
//! notify socket the test provides.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::pg::{pki, Cluster};

fn next(socket: &UnixDatagram, within: Duration) -> Option<String> {
    socket.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    socket
        .recv(&mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_watchdog_stopping() {
    let db = Cluster::start_tls();
    db.create_role("app", "pw").await;
    let dir = tempfile::tempdir().unwrap();
    let secret = support::credentials_file(dir.path(), "app.json", "app", "pw");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let config = format!(
        "[[target]]\nname = \"app\"\nurl = \"{}\"\nsource = {{ kind = \"file\", path = \"{}\" }}\n",
        db.url(
            "localhost",
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                pki().ca_cert().display()
            )
        ),
        secret.display()
    );
    let started = Instant::now();
    let mut d = Daemon::start_with_env(
        &config,
        "",
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .await;
    // STATUS= updates may come first, as the start-up rotation finishes.
    let ready = loop {
        let msg = next(&notify, Duration::from_secs(10)).expect("READY=1 arrives");
        if msg.starts_with("READY=1") {
            break msg;
        }
        assert!(msg.starts_with("STATUS="), "{msg}");
    };
    eprintln!("start to READY=1: {:?}", started.elapsed());
    assert_eq!(ready, "READY=1\nSTATUS=app: gen 1 ready");

    // Pings every 200 ms (half of WATCHDOG_USEC); a forced rotation shows in STATUS.
    let (code, _, err) = d.cli(&["rotate", "app", "--force", "--wait"]);
    assert_eq!(code, 0, "{err}");
    let mut pings = 0;
    let mut statuses = Vec::new();
    // What queued up while the CLI ran: keep the statuses, count pings only from now.
    while let Some(msg) = next(&notify, Duration::from_millis(1)) {
        if msg != "WATCHDOG=1" {
            statuses.push(msg);
        }
    }
    let until = Instant::now() + Duration::from_millis(1500);
    while let Some(msg) = next(
        &notify,
        until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ) {
        if msg == "WATCHDOG=1" {
            pings += 1;
        } else {
            statuses.push(msg);
        }
        if Instant::now() >= until {
            break;
        }
    }
    assert!(
        (4..=10).contains(&pings),
        "{pings} watchdog pings in 1.5 s at a 200 ms interval"
    );
    assert!(
        statuses.iter().any(|s| s == "STATUS=app: gen 2 ready"),
        "{statuses:?}"
    );

    assert_eq!(d.terminate(), Some(0));
    let mut rest = Vec::new();
    while let Some(msg) = next(&notify, Duration::from_millis(200)) {
        rest.push(msg);
    }
    assert!(rest.iter().any(|m| m.starts_with("STOPPING=1")), "{rest:?}");
}
