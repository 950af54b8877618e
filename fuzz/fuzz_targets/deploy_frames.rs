//! `/brume/deploy/3` frames, both ways, through the frame reader every brume stream protocol
//! uses; a decoded spec's owner signature is checked as a host checks it.
#![no_main]

use brume::deploy::wire::{Reply, Request, MAX_FRAME};
use brume_overlay::frames::read_frame;
use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    block_on(async {
        if let Ok(Request::Deploy(spec) | Request::Prepare(spec)) =
            read_frame::<_, Request>(&mut Cursor::new(data), MAX_FRAME).await
        {
            let _ = spec.owner();
        }
        let _ = read_frame::<_, Reply>(&mut Cursor::new(data), MAX_FRAME).await;
    });
});
