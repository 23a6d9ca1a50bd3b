//! Decodes arbitrary bytes as a stream of packets in every protocol version: the decoder
//! must never panic, must agree with `check` on packet boundaries, and whatever it accepts
//! must encode and decode back to the same packet.

#![no_main]

use bytes::BytesMut;
use iotcore_codec::{check, decode, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

const MAX_PACKET_SIZE: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    for version in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.len();
            let checked = check(&buf, MAX_PACKET_SIZE);
            match decode(&mut buf, version, MAX_PACKET_SIZE) {
                Ok(Some(packet)) => {
                    assert_eq!(checked, Ok(Some(before - buf.len())));
                    // A CONNECT speaks its own version; everything else the session's.
                    let version = match &packet {
                        iotcore_codec::Packet::Connect(connect) => connect.protocol,
                        _ => version,
                    };
                    let mut encoded = BytesMut::new();
                    packet
                        .encode(version, &mut encoded)
                        .expect("a decoded packet encodes");
                    let again = decode(&mut encoded, version, usize::MAX)
                        .expect("an encoded packet decodes");
                    assert_eq!(again.as_ref(), Some(&packet));
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before);
                    break;
                }
                Err(error) => {
                    let _ = error.reason_code();
                    break;
                }
            }
        }
    }
});
