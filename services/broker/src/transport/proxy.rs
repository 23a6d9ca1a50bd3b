//! PROXY protocol version 2 (the binary header a load balancer such as HAProxy, AWS NLB or
//! a Kubernetes ingress puts before the client's bytes), on listeners configured for it: the
//! client's address comes from the header instead of the TCP peer, which is the balancer.
//!
//! The header is read with exact-length reads (16 bytes, then the length it announces,
//! bounded), so nothing of the MQTT, TLS or HTTP bytes that follow is consumed, and every
//! malformed header is an error that closes the connection, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The twelve bytes every version 2 header starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The largest address block accepted: the addresses and ports (36 bytes for IPv6), UNIX
/// paths (216), and room for the TLVs balancers add (AWS adds a VPC endpoint id).
const MAX_BLOCK: usize = 2048;

/// Why a connection on a PROXY protocol listener is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no PROXY protocol v2 signature")]
    Signature,
    #[error("PROXY protocol version {0} (only 2 is supported)")]
    Version(u8),
    #[error("PROXY protocol command {0:#x}")]
    Command(u8),
    #[error("PROXY protocol address block of {0} bytes")]
    Length(usize),
    #[error("PROXY protocol address block too short for its address family")]
    Truncated,
    #[error("connection closed within the PROXY protocol header")]
    Closed,
}

/// Reads the header and returns the client's address: the source address it carries, or
/// `peer` for a LOCAL command (the balancer's own health check) and for address families
/// other than TCP over IPv4 or IPv6.
pub async fn read_header<S>(stream: &mut S, peer: SocketAddr) -> Result<SocketAddr, ProxyError>
where
    S: AsyncRead + Unpin,
{
    let mut fixed = [0u8; 16];
    stream
        .read_exact(&mut fixed)
        .await
        .map_err(|_| ProxyError::Closed)?;
    if fixed[..12] != SIGNATURE {
        return Err(ProxyError::Signature);
    }
    let version = fixed[12] >> 4;
    if version != 2 {
        return Err(ProxyError::Version(version));
    }
    let command = fixed[12] & 0x0f;
    let family = fixed[13];
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if length > MAX_BLOCK {
        return Err(ProxyError::Length(length));
    }
    let mut block = [0u8; MAX_BLOCK];
    let block = &mut block[..length];
    stream
        .read_exact(block)
        .await
        .map_err(|_| ProxyError::Closed)?;
    match command {
        // LOCAL: the balancer speaking for itself; the address block is ignored.
        0x0 => Ok(peer),
        0x1 => source_address(family, block).map(|source| source.unwrap_or(peer)),
        other => Err(ProxyError::Command(other)),
    }
}

/// The source address of a PROXY command's address block; `None` for families that carry
/// no IP source (UNSPEC, UNIX, datagrams).
fn source_address(family: u8, block: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    match family {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            let b = block.get(..12).ok_or(ProxyError::Truncated)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[8], b[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // TCP over IPv6.
        0x21 => {
            let b = block.get(..36).ok_or(ProxyError::Truncated)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[32], b[33]]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.1:40000".parse().expect("address")
    }

    fn header(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut bytes = SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family);
        bytes.extend_from_slice(&(block.len() as u16).to_be_bytes());
        bytes.extend_from_slice(block);
        bytes
    }

    async fn read(bytes: &[u8]) -> Result<SocketAddr, ProxyError> {
        let mut stream = bytes;
        read_header(&mut stream, peer()).await
    }

    #[tokio::test]
    async fn an_ipv4_header_gives_the_source_and_leaves_what_follows() {
        let mut bytes = header(
            1,
            0x11,
            &[203, 0, 113, 7, 10, 0, 0, 2, 0x10, 0x92, 0x07, 0x5b],
        );
        bytes.extend_from_slice(b"MQTT");
        let mut stream = &bytes[..];
        let source = read_header(&mut stream, peer()).await;
        assert_eq!(source, Ok("203.0.113.7:4242".parse().expect("address")));
        assert_eq!(stream, b"MQTT", "the bytes after the header are untouched");
    }

    #[tokio::test]
    async fn an_ipv6_header_with_tlvs_gives_the_source() {
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().expect("v6").octets());
        block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().expect("v6").octets());
        block.extend_from_slice(&[0x10, 0x92, 0x07, 0x5b]);
        // A TLV (type 0x04, NOOP) is skipped.
        block.extend_from_slice(&[0x04, 0x00, 0x02, 0xaa, 0xbb]);
        let source = read(&header(1, 0x21, &block)).await;
        assert_eq!(source, Ok("[2001:db8::7]:4242".parse().expect("address")));
    }

    #[tokio::test]
    async fn local_and_unspecified_families_keep_the_peer_address() {
        assert_eq!(read(&header(0, 0x00, &[])).await, Ok(peer()));
        assert_eq!(read(&header(0, 0x11, &[0; 12])).await, Ok(peer()));
        assert_eq!(read(&header(1, 0x31, &[0; 216])).await, Ok(peer()));
    }

    #[tokio::test]
    async fn malformed_headers_are_errors() {
        // An MQTT CONNECT where the header should be.
        let connect = [
            0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0, 0, 0,
        ];
        assert_eq!(read(&connect).await, Err(ProxyError::Signature));
        // A version 1 (text) header.
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.2 4242 1883\r\n";
        assert_eq!(read(v1).await, Err(ProxyError::Signature));
        let mut wrong_version = header(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert_eq!(read(&wrong_version).await, Err(ProxyError::Version(1)));
        assert_eq!(
            read(&header(2, 0x11, &[0; 12])).await,
            Err(ProxyError::Command(2))
        );
        assert_eq!(
            read(&header(1, 0x11, &[0; 8])).await,
            Err(ProxyError::Truncated)
        );
        assert_eq!(
            read(&header(1, 0x21, &[0; 12])).await,
            Err(ProxyError::Truncated)
        );
        let mut too_long = header(1, 0x11, &[]);
        too_long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(read(&too_long).await, Err(ProxyError::Length(65535)));
        // Announces more than it sends, then closes.
        let mut short = header(1, 0x11, &[0; 12]);
        short.truncate(20);
        assert_eq!(read(&short).await, Err(ProxyError::Closed));
        assert_eq!(read(&SIGNATURE[..5]).await, Err(ProxyError::Closed));
    }

    #[tokio::test]
    async fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let mut bytes = header(1, 0x11, &[0; 12]);
            for byte in bytes.iter_mut().skip(12) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *byte = seed as u8;
            }
            let _ = read(&bytes).await;
        }
    }
}
