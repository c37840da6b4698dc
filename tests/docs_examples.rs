//! The configuration examples in the docs are real: each TOML block must validate.

use std::collections::HashMap;
use std::path::Path;

use credswap::config::Config;

fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn configuration_examples_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let blocks = toml_blocks(&doc);
    assert!(blocks.len() >= 3, "docs/configuration.md lost its examples");
    for block in blocks {
        if let Err(e) = Config::from_toml(
            &block,
            Path::new("docs/configuration.md"),
            &HashMap::<String, String>::new(),
        ) {
            panic!("an example in docs/configuration.md does not validate:\n{block}\n{e}");
        }
    }
}

#[test]
fn the_example_file_validates_apart_from_its_ca_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config/credswap.example.toml")).unwrap();
    // The example names /etc/credswap/db-ca.pem, which a test machine does not have.
    let err = Config::from_toml(
        &text,
        Path::new("credswap.example.toml"),
        &HashMap::<String, String>::new(),
    )
    .unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(
        err.0[0]
            .message
            .starts_with("sslrootcert file /etc/credswap/db-ca.pem cannot be read"),
        "{err}"
    );
}
