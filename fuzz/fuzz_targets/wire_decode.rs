//! The node-to-node wire decoder on arbitrary frame bodies: never panics, and whatever it
//! accepts encodes back to a frame that decodes to the same value.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use troupe_actors::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = wire::decode(Bytes::copy_from_slice(data)) {
        let mut buf = BytesMut::new();
        wire::encode(&frame, &mut buf);
        let body = buf.split_off(4).freeze();
        assert_eq!(wire::decode(body).ok(), Some(frame));
    }
});
