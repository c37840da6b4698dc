//! Connection strings, URL and key=value forms: parsed or refused with an error, never a
//! panic; a parsed one can be shown redacted.
#![no_main]

use credswap::dsn::ConnInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(info) = ConnInfo::parse(text) {
        let _ = info.redacted();
    }
});
