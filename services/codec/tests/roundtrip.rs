//! Property tests: every valid packet survives encode → decode, every prefix of one is
//! "incomplete", and arbitrary bytes never panic the decoder.

mod strategies;

use bytes::BytesMut;
use iotcore_codec::{check, decode, Packet, ProtocolVersion};
use proptest::prelude::*;

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];
const MAX: usize = 1 << 20;

fn version() -> impl Strategy<Value = ProtocolVersion> {
    proptest::sample::select(&VERSIONS[..])
}

fn any_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| strategies::packet(v).prop_map(move |p| (v, p)))
}

fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    packet
        .encode(version, &mut buf)
        .expect("valid packet encodes");
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_valid_packet_round_trips((version, packet) in any_packet()) {
        let mut buf = encode(&packet, version);
        prop_assert_eq!(packet.encoded_len(version), Ok(buf.len()));
        prop_assert_eq!(check(&buf, MAX), Ok(Some(buf.len())));
        let decoded = decode(&mut buf, version, MAX);
        prop_assert_eq!(decoded, Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn packets_decode_one_at_a_time_from_a_stream(
        (version, packets) in version().prop_flat_map(|v| {
            proptest::collection::vec(strategies::packet(v), 1..5).prop_map(move |p| (v, p))
        }),
    ) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            packet.encode(version, &mut buf).expect("valid packet encodes");
        }
        for packet in packets {
            prop_assert_eq!(decode(&mut buf, version, MAX), Ok(Some(packet)));
        }
        prop_assert_eq!(decode(&mut buf, version, MAX), Ok(None));
    }

    #[test]
    fn every_prefix_of_a_packet_is_incomplete_and_consumes_nothing(
        (version, packet) in any_packet(),
    ) {
        let whole = encode(&packet, version);
        for len in 0..whole.len() {
            let mut prefix = BytesMut::from(&whole[..len]);
            prop_assert_eq!(check(&prefix, MAX), Ok(None));
            prop_assert_eq!(decode(&mut prefix, version, MAX), Ok(None));
            prop_assert_eq!(&prefix[..], &whole[..len]);
        }
    }

    #[test]
    fn a_packet_one_byte_over_the_limit_is_refused_from_its_header(
        (version, packet) in any_packet(),
    ) {
        let whole = encode(&packet, version);
        let max = whole.len() - 1;
        let header_only = BytesMut::from(&whole[..2.min(whole.len())]);
        // Only the first bytes are there, yet the size is already known to be too big
        // whenever the remaining length fits in one byte.
        if whole[1] & 0x80 == 0 {
            let mut buf = header_only;
            let too_large = matches!(
                decode(&mut buf, version, max),
                Err(iotcore_codec::DecodeError::PacketTooLarge { .. })
            );
            prop_assert!(too_large);
        }
        let mut buf = whole.clone();
        let too_large = matches!(
            decode(&mut buf, version, max),
            Err(iotcore_codec::DecodeError::PacketTooLarge { .. })
        );
        prop_assert!(too_large);
        prop_assert_eq!(decode(&mut whole.clone(), version, whole.len()).map(|p| p.is_some()), Ok(true));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        for version in VERSIONS {
            let mut buf = BytesMut::from(&bytes[..]);
            loop {
                let before = buf.len();
                let checked = check(&buf, 256);
                match decode(&mut buf, version, 256) {
                    Ok(Some(_)) => {
                        // `check` and `decode` agree on where the packet ended.
                        prop_assert_eq!(checked, Ok(Some(before - buf.len())));
                    }
                    Ok(None) => {
                        prop_assert_eq!(buf.len(), before);
                        break;
                    }
                    Err(error) => {
                        let _ = error.reason_code();
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn a_corrupted_packet_is_refused_or_decodes_to_something_that_round_trips(
        (version, packet) in any_packet(),
        index in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut wire = encode(&packet, version);
        let at = index.index(wire.len());
        wire[at] = byte;
        if let Ok(Some(decoded)) = decode(&mut wire, version, MAX) {
            let version = match &decoded {
                Packet::Connect(connect) => connect.protocol,
                _ => version,
            };
            let mut again = encode(&decoded, version);
            prop_assert_eq!(decode(&mut again, version, MAX), Ok(Some(decoded)));
        }
    }

    #[test]
    fn arbitrary_bodies_behind_valid_headers_never_panic(
        first in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut bytes = vec![first, body.len() as u8];
        bytes.extend_from_slice(&body);
        for version in VERSIONS {
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(packet)) = decode(&mut buf, version, MAX) {
                // Whatever the decoder accepts, the encoder can send back unchanged.
                let version = match &packet {
                    Packet::Connect(connect) => connect.protocol,
                    _ => version,
                };
                let mut again = encode(&packet, version);
                prop_assert_eq!(decode(&mut again, version, MAX), Ok(Some(packet)));
            }
        }
    }
}
