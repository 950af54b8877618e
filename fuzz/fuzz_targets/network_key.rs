//! A network key file (`--network-key`), parsed as the node parses it; a key that parses must
//! write out to a file that parses to the same key.
#![no_main]

use brume_overlay::NetworkKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = text.parse::<NetworkKey>() {
            let fingerprint = key.fingerprint();
            let again: NetworkKey = key
                .to_key_file()
                .parse()
                .expect("a written key file parses");
            assert_eq!(again.fingerprint(), fingerprint);
        }
    }
});
