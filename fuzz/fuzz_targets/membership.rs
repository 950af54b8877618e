//! The join and state exchanges (`/brume/join/1`, `/brume/state/3`) through the very codec the
//! swarm reads them with (libp2p's CBOR request-response codec, with brume's size limits), and
//! a state record's signature check.
#![no_main]

use brume_overlay::behaviour::{
    MembershipRequest, MembershipResponse, JOIN_PROTOCOL, MAX_JOIN_BYTES, MAX_STATE_BYTES,
    STATE_PROTOCOL,
};
use brume_overlay::neighbourhood::NodeRecord;
use brume_overlay::signed_record::verify;
use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use libp2p::request_response::cbor::codec::Codec as Cbor;
use libp2p::request_response::Codec;

fuzz_target!(|data: &[u8]| {
    block_on(async {
        let mut join = Cbor::<MembershipRequest, MembershipResponse>::default()
            .set_request_size_maximum(MAX_JOIN_BYTES)
            .set_response_size_maximum(MAX_JOIN_BYTES);
        let _ = join
            .read_request(&JOIN_PROTOCOL, &mut Cursor::new(data))
            .await;
        let _ = join
            .read_response(&JOIN_PROTOCOL, &mut Cursor::new(data))
            .await;
        let mut state = Cbor::<NodeRecord, NodeRecord>::default()
            .set_request_size_maximum(MAX_STATE_BYTES)
            .set_response_size_maximum(MAX_STATE_BYTES);
        if let Ok(record) = state
            .read_request(&STATE_PROTOCOL, &mut Cursor::new(data))
            .await
        {
            let _ = verify(&record);
        }
    });
});
