//! `/brume/move/2` frames, both ways.
#![no_main]

use brume::migrate::wire::{Reply, Request, MAX_FRAME};
use brume_overlay::frames::read_frame;
use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    block_on(async {
        let _ = read_frame::<_, Request>(&mut Cursor::new(data), MAX_FRAME).await;
        let _ = read_frame::<_, Reply>(&mut Cursor::new(data), MAX_FRAME).await;
    });
});
