//! The transaction-mode scan over arbitrary statement text, as PostgreSQL's lexer reads it with
//! `standard_conforming_strings` on and off: never a panic, and the quick answer for a plain
//! read never says "nothing left behind" where the lexer finds a change. (Whether a statement
//! really changes a session is checked against PostgreSQL in tests/postgres_isolation.rs.)
#![no_main]

use credswap::postgres::transaction::scan::scan_with;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let on = scan_with(data, true);
    let off = scan_with(data, false);
    // A text with no quote, backslash or dollar reads the same either way.
    if !data.iter().any(|c| matches!(c, b'\'' | b'\\' | b'$')) {
        assert_eq!(on, off);
    }
});
