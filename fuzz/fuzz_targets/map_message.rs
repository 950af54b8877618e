//! `/brume/map/4` messages as a peer sends them: decoded with the size limit, then every record
//! of an answer's map checked against its signature, as the map link does before use.
#![no_main]

use brume_overlay::wire::{decode_with_limit, MAX_MESSAGE_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut msg) = decode_with_limit(data, MAX_MESSAGE_BYTES) {
        let _ = msg.drop_forged();
    }
});
