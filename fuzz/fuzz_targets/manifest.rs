//! A service manifest (`service.toml`) as `brume deploy` and `brume place` read it.
#![no_main]

use brume_plan::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Manifest::parse("service.toml", text, std::path::Path::new("/nonexistent"));
    }
});
