//! The configuration file: any text either loads or gives errors that name a place; never a
//! panic. Environment overrides are applied from a fixed set.
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use credswap::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: HashMap<String, String> = HashMap::new();
    match Config::from_toml(text, Path::new("/etc/credswap/credswap.toml"), &env) {
        Ok(config) => {
            let _ = credswap::config::render_effective(&config);
        }
        Err(errors) => {
            let shown = errors.to_string();
            assert!(!shown.is_empty());
        }
    }
});
