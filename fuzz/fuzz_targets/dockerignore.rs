//! A `.dockerignore` as `brume deploy` reads it when it packs a build context.
#![no_main]

use brume_artifact::pack::DockerIgnore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = DockerIgnore::parse(std::path::Path::new(".dockerignore"), text);
    }
});
