//! The webhook signature header alone, with a fixed body: arbitrary headers, and headers that
//! hide the valid signature among the input's own candidates. What the headers alone refuse
//! is refused by the full check too (the listener relies on that to refuse before reading the
//! body); a valid signature among at most three other candidates in a header within the size
//! limit is accepted; nothing panics, whatever the header's size or number of candidates.
#![no_main]

use std::time::Duration;

use credswap::webhook::auth::{sign, Verdict, Verifier};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const BODY: &[u8] = br#"{"target":"app"}"#;
const NOW: u64 = 1_800_000_000;

fn verifier(key: &SecretString) -> Verifier {
    Verifier::new(
        vec![SecretString::from("an-old-key"), key.clone()],
        None,
        "authorization",
        Duration::from_secs(300),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let header = String::from_utf8_lossy(rest);
    let key = SecretString::from("fuzz-key-0123456789");
    let v = verifier(&key);
    let by_headers = v.refuses_by_headers(Some(&header), None, NOW);
    let full = v.check(Some(&header), None, BODY, NOW);
    if by_headers {
        assert_eq!(
            full,
            Verdict::Refused,
            "refused by headers, accepted in full: {header:?}"
        );
    }

    // The valid signature's MAC, placed after up to three of the input's candidates.
    let signed = sign(&key, NOW, BODY);
    let mac = signed.rsplit_once("v1=").expect("sign writes v1=").1;
    let others: Vec<String> = header
        .split(',')
        .filter_map(|p| p.trim().strip_prefix("v1="))
        .filter(|c| !c.contains(','))
        .take(usize::from(flags % 4))
        .map(|c| format!("v1={c}"))
        .collect();
    let mut parts = vec![format!("t={NOW}")];
    parts.extend(others);
    parts.push(format!("v1={mac}"));
    let hidden = parts.join(",");
    let fresh = verifier(&key);
    let verdict = fresh.check(Some(&hidden), None, BODY, NOW);
    if hidden.len() <= 512 {
        assert_eq!(
            verdict,
            Verdict::Ok,
            "a valid signature was refused: {hidden:?}"
        );
        assert!(!fresh.refuses_by_headers(Some(&hidden), None, NOW));
    }
});
