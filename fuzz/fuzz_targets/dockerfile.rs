//! The Dockerfile subset the process engine builds (`FROM scratch`, COPY, ENV, ...).
#![no_main]

use brume_engine::dockerfile::parse_scratch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_scratch(text);
    }
});
