//! `/proc/PID/maps` text as the dirty-page tracker reads it each round.
#![no_main]

use brume_migration::track::maps::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse(text);
    }
});
