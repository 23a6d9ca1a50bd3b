//! The SSRF guard (SPEC §5): webhooks may not reach loopback, private, link-local, CGNAT,
//! multicast, metadata or otherwise non-public addresses unless the operator allows
//! private destinations.
//!
//! The check is made on resolved addresses, and [`GuardedResolver`] is the only resolver
//! the delivery client uses, so the addresses that were checked are the addresses that are
//! connected to: a DNS answer that changes between check and connection (rebinding) is
//! checked again, not trusted.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long a name may take to resolve before the check gives up.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a destination was refused or could not be checked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// The host is, or resolves to, an address that is not public.
    #[error("the destination address {0} is not a public address")]
    Forbidden(IpAddr),
    /// The name did not resolve (or not in time); it may later.
    #[error("the destination host could not be resolved")]
    Unresolved,
}

/// Whether `ip` may not be reached from the service unless private destinations are
/// allowed: everything but globally routable unicast.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        // Includes the cloud metadata address 169.254.169.254.
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // CGNAT, 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, 192.0.0.0/24
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, 198.18.0.0/15
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 240 // reserved
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // Addresses that carry an IPv4 address are judged by it, so that ::ffff:127.0.0.1 or
    // 64:ff9b::a9fe:a9fe cannot smuggle a forbidden IPv4 destination.
    if let Some(v4) = embedded_v4(ip) {
        return is_forbidden_v4(v4);
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local fc00::/7, which includes the EC2 metadata address fd00:ec2::254.
        || (segments[0] & 0xfe00) == 0xfc00
        // Link-local fe80::/10 and the deprecated site-local fec0::/10.
        || (segments[0] & 0xffc0) == 0xfe80
        || (segments[0] & 0xffc0) == 0xfec0
        // Documentation 2001:db8::/32 and Teredo 2001::/32 (which tunnels to anywhere).
        || (segments[0] == 0x2001 && (segments[1] == 0x0db8 || segments[1] == 0))
        // Discard-only 100::/64.
        || (segments[0] == 0x100 && segments[1..4] == [0, 0, 0])
}

/// The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d),
/// NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if s[0..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || s[5] == 0) {
        // :: and ::1 are not IPv4-compatible addresses; leave them to the IPv6 rules.
        if s[5] == 0 && s[6] == 0 {
            return None;
        }
        return Some(low(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(low(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(low(s[1], s[2]));
    }
    None
}

/// Checks `host` when it is an IP literal (`[…]` for IPv6); names pass, since they are
/// checked when resolved.
pub fn check_literal(host: &str) -> Result<(), DestinationError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) if is_forbidden(ip) => Err(DestinationError::Forbidden(ip)),
        _ => Ok(()),
    }
}

/// Resolves `host` and checks every address it resolves to: all must be allowed, because
/// the client may try any of them.
pub async fn resolve_checked(host: &str, port: u16) -> Result<Vec<SocketAddr>, DestinationError> {
    // An IP literal (brackets stripped for IPv6) is checked as is, without DNS.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return check_all(vec![SocketAddr::new(ip, port)]);
    }
    let lookup = tokio::net::lookup_host((bare, port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        _ => return Err(DestinationError::Unresolved),
    };
    if addrs.is_empty() {
        return Err(DestinationError::Unresolved);
    }
    check_all(addrs)
}

fn check_all(addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, DestinationError> {
    match addrs.iter().find(|a| is_forbidden(a.ip())) {
        Some(bad) => Err(DestinationError::Forbidden(bad.ip())),
        None => Ok(addrs),
    }
}

/// The delivery client's resolver when private destinations are not allowed: it hands
/// the connector only addresses that passed [`is_forbidden`].
#[derive(Clone, Debug, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // The connector sets the port itself; 0 is a placeholder.
            let addrs = resolve_checked(&host, 0).await?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(s: &str) -> bool {
        s.parse::<IpAddr>().map(is_forbidden).unwrap_or(false)
    }

    #[test]
    fn non_public_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!forbidden(ip), "{ip} should be allowed");
        }
    }

    #[tokio::test]
    async fn literal_and_resolved_hosts_are_checked() {
        assert_eq!(
            resolve_checked("127.0.0.1", 80).await,
            Err(DestinationError::Forbidden(IpAddr::V4(Ipv4Addr::LOCALHOST)))
        );
        assert_eq!(
            resolve_checked("[::1]", 80).await,
            Err(DestinationError::Forbidden(IpAddr::V6(Ipv6Addr::LOCALHOST)))
        );
        // `localhost` resolves through the system resolver (/etc/hosts).
        assert!(matches!(
            resolve_checked("localhost", 80).await,
            Err(DestinationError::Forbidden(_))
        ));
        assert_eq!(
            resolve_checked("8.8.8.8", 443).await,
            Ok(vec![SocketAddr::from(([8, 8, 8, 8], 443))])
        );
    }
}
