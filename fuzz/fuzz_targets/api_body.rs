//! API request bodies (query, batch, rotate), then each JSON parameter converted to the text
//! form PostgreSQL gets, for a type picked by the input: the conversion must refuse what does
//! not fit with an error, never panic.
#![no_main]

use credswap::api::query::{BatchRequest, QueryRequest};
use credswap::api::routes::RotateRequest;
use credswap::api::types::to_text;
use libfuzzer_sys::fuzz_target;
use tokio_postgres::types::Type;

const TYPES: &[Type] = &[
    Type::BOOL,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::NUMERIC,
    Type::TEXT,
    Type::VARCHAR,
    Type::BPCHAR,
    Type::NAME,
    Type::JSON,
    Type::JSONB,
    Type::UUID,
    Type::DATE,
    Type::TIME,
    Type::TIMETZ,
    Type::TIMESTAMP,
    Type::TIMESTAMPTZ,
    Type::INTERVAL,
    Type::BYTEA,
    Type::INET,
    Type::CIDR,
    Type::OID,
    Type::INT4_ARRAY,
    Type::TEXT_ARRAY,
    Type::JSONB_ARRAY,
    Type::BYTEA_ARRAY,
    Type::NUMERIC_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::BOOL_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::UUID_ARRAY,
    Type::INT8_ARRAY,
    Type::MONEY,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let _ = serde_json::from_slice::<RotateRequest>(body);
    let _ = serde_json::from_slice::<BatchRequest>(body);
    let Ok(request) = serde_json::from_slice::<QueryRequest>(body) else {
        return;
    };
    for (i, value) in request.params.iter().enumerate() {
        let ty = &TYPES[(pick as usize + i) % TYPES.len()];
        if let Ok(Some(text)) = to_text(value, ty, i + 1) {
            // What is sent is text PostgreSQL parses; it never carries a NUL byte.
            assert!(!text.contains('\0'), "{ty}: {text:?}");
        }
    }
});
