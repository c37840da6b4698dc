//! Checks recorded responses against docs/api/openapi.yaml with the venv's jsonschema.

use std::path::Path;
use std::process::Command;

pub fn check(responses: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run dev/setup",
        python.display()
    );
    let out = Command::new(python)
        .arg(root.join("tests/openapi_check.py"))
        .arg(root.join("docs/api/openapi.yaml"))
        .arg(responses)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "responses do not match docs/api/openapi.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
