//! A network description file as `brume place --network` reads it.
#![no_main]

use brume_plan::netfile::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse("network.toml", text);
    }
});
