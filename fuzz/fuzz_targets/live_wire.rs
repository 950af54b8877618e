//! Live-migration frames (`/brume/live/3`'s payload: rounds, chunks, tracked pages, bitmaps)
//! read from a stream the way the target reads them, and a decoded message encoded again must
//! decode to itself.
#![no_main]

use brume_migration::live::wire::{read_message, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    rt.block_on(async {
        let mut r = data;
        while let Ok(m) = read_message(&mut r).await {
            let again = m.encode();
            let back = Message::decode(&again[4..]).expect("an encoded message decodes");
            assert_eq!(back, m);
        }
    });
    let _ = Message::decode(data);
});
