//! The unit file: hardened (systemd-analyze security) and valid (systemd-analyze verify).

use std::path::Path;
use std::process::Command;

fn analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze is needed: apt-get install systemd (dev/setup does this)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn exposure_is_at_most_1_2() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/credswap.service");
    let (_, text) = analyze(&["security", "--offline=yes", "--no-pager"], &unit);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for credswap.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{text}"));
    assert!(score <= 1.2, "exposure {score} > 1.2:\n{text}");
    // Per-uid access control needs real peer uids.
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        !unit_text.lines().any(|l| l.starts_with("PrivateUsers=")),
        "PrivateUsers= would make every client nobody"
    );
}

#[test]
fn verify_finds_nothing_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("credswap.service");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/credswap.service"),
    )
    .unwrap()
    .replace("/usr/bin/credswap", env!("CARGO_BIN_EXE_credswap"));
    std::fs::write(&unit, text).unwrap();
    let (ok, out) = analyze(&["verify"], &unit);
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
}
