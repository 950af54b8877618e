//! CRIU's pagemap image as the post-copy target reads it to learn which ranges are lazy.
#![no_main]

use brume_migration::live::pagemap::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(ranges) = parse(data) {
        for (start, end) in ranges {
            assert!(start <= end, "a lazy range ends before it starts");
        }
    }
});
