//! A batch request body as the API reads it: parsed, then checked the way the handler checks
//! it before taking a connection (statement count, transaction control refused, the session
//! effect of every statement). Never a panic; a statement refused alone is refused in a batch.
#![no_main]

use credswap::api::query::{command_of, BatchRequest};
use credswap::api::session::effect;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = serde_json::from_slice::<BatchRequest>(data) else {
        return;
    };
    for s in &batch.statements {
        let command = command_of(&s.sql);
        assert!(
            command.chars().all(|c| c.is_ascii_uppercase()),
            "{command:?}"
        );
        match effect(&s.sql) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.status, 400);
                assert!(e.message.contains("/batch"), "{}", e.message);
            }
        }
    }
    // Re-encoding and parsing again gives the same statements.
    let again = serde_json::to_vec(&serde_json::json!({
        "statements": batch.statements.iter().map(|s| serde_json::json!({"sql": s.sql, "params": s.params})).collect::<Vec<_>>(),
        "transaction": batch.transaction,
    }))
    .expect("a parsed batch encodes");
    let reparsed: BatchRequest = serde_json::from_slice(&again).expect("it parses again");
    assert_eq!(reparsed.statements.len(), batch.statements.len());
});
