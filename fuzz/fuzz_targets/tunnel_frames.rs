//! The hello and reply frames that open a `/brume/tunnel/2` stream.
#![no_main]

use brume_overlay::frames::read_frame;
use brume_tunnel::{Hello, Reply, HELLO_LIMIT};
use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    block_on(async {
        let _ = read_frame::<_, Hello>(&mut Cursor::new(data), HELLO_LIMIT).await;
        let _ = read_frame::<_, Reply>(&mut Cursor::new(data), HELLO_LIMIT).await;
    });
});
