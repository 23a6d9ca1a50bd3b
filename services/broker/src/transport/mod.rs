//! The ways a client's bytes reach the MQTT connection: plain TCP, TLS, WebSocket and
//! WebSocket over TLS (SPEC §3.1). Every transport ends in the same
//! [`connection::serve`], so MQTT behaves the same on all of them.
//!
//! Handshakes (TLS, the HTTP upgrade) run inside the connection's own task under the CONNECT
//! timeout, never in the accept loop, so a slow or silent client delays nobody else.

pub mod proxy;
pub mod tls;
pub mod websocket;

use crate::broker::Shared;
use crate::{connection, BrokerConfig, BrokerError};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tls::{ClientCertificate, TlsAcceptors};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long a connection that has ended may take to say goodbye (TLS close_notify, the
/// WebSocket close frame) before its socket is dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Pending connections the kernel may queue per listener before the accept loop takes them
/// (capped by `net.core.somaxconn`). With the standard library's 128, a reconnect storm
/// overflows the queue: the kernel drops the SYNs and every client waits a full TCP
/// retransmission second although the broker has CPU to spare.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (the first of its addresses that binds) with SO_REUSEADDR, as
/// `TcpListener::bind` does, and the larger backlog above.
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for resolved in tokio::net::lookup_host(addr).await? {
        let socket = if resolved.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(resolved)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "resolves to no address")
    }))
}

/// What a listener speaks on top of TCP.
#[derive(Clone)]
pub enum Transport {
    Tcp,
    Tls(tokio_rustls::TlsAcceptor),
    WebSocket(WebSocketConfig),
    WebSocketTls(tokio_rustls::TlsAcceptor, WebSocketConfig),
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "MQTT over TCP",
            Transport::Tls(_) => "MQTT over TLS",
            Transport::WebSocket(_) => "MQTT over WebSocket",
            Transport::WebSocketTls(..) => "MQTT over WebSocket over TLS",
        })
    }
}

impl Transport {
    /// The `transport` label of its connections' metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls(_) => "tls",
            Transport::WebSocket(_) => "ws",
            Transport::WebSocketTls(..) => "wss",
        }
    }
}

/// A bound listening socket and what it speaks.
pub struct Listener {
    pub addr: String,
    pub socket: TcpListener,
    pub transport: Transport,
    /// Whether every connection starts with a PROXY protocol v2 header.
    pub proxy_protocol: bool,
}

/// Binds every configured listener, or fails naming the first address that cannot be bound
/// or the TLS setting that cannot be used. Nothing is accepted until all are bound, so a
/// client that reaches one listener can rely on the others.
pub async fn bind(config: &BrokerConfig) -> Result<Vec<Listener>, BrokerError> {
    let tls = tls_acceptors(config)?;
    let ws = websocket::config(config.max_packet_size);
    let mut wanted = vec![
        (
            config.tcp_listen.as_deref(),
            Transport::Tcp,
            config.tcp_proxy_protocol,
        ),
        (
            config.ws_listen.as_deref(),
            Transport::WebSocket(ws),
            config.ws_proxy_protocol,
        ),
    ];
    // The TLS listeners exist only with a certificate: their default addresses must not
    // turn into an error on a machine that has none.
    if let Some(tls) = tls {
        wanted.push((
            config.tls_listen.as_deref(),
            Transport::Tls(tls.mqtt),
            config.tls_proxy_protocol,
        ));
        wanted.push((
            config.wss_listen.as_deref(),
            Transport::WebSocketTls(tls.websocket, ws),
            config.wss_proxy_protocol,
        ));
    }
    let mut listeners = Vec::new();
    for (addr, transport, proxy_protocol) in wanted {
        let Some(addr) = configured(addr) else {
            continue;
        };
        let socket = listen(addr).await.map_err(|source| BrokerError::Listen {
            addr: addr.to_owned(),
            source,
        })?;
        listeners.push(Listener {
            addr: addr.to_owned(),
            socket,
            transport,
            proxy_protocol,
        });
    }
    Ok(listeners)
}

/// An address setting that is set and not blank; blank is how a file or variable says "off".
fn configured(setting: Option<&str>) -> Option<&str> {
    setting.map(str::trim).filter(|s| !s.is_empty())
}

fn tls_acceptors(config: &BrokerConfig) -> Result<Option<TlsAcceptors>, BrokerError> {
    let cert = configured(config.tls_cert_file.as_deref());
    let key = configured(config.tls_key_file.as_deref());
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => TlsAcceptors::from_pem_files(cert, key).map(Some),
        (Some(_), None) => Err(BrokerError::Config {
            key: "mqtt.tls_key_file",
            message: "required when mqtt.tls_cert_file is set".into(),
        }),
        (None, Some(_)) => Err(BrokerError::Config {
            key: "mqtt.tls_cert_file",
            message: "required when mqtt.tls_key_file is set".into(),
        }),
    }
}

/// Serves one accepted TCP connection over `transport` until it ends. On a PROXY protocol
/// listener the client's address is read from the header first; a connection without a
/// valid header is closed.
pub async fn serve(
    transport: Transport,
    proxy_protocol: bool,
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) {
    let label = transport.label();
    let socket = std::os::fd::AsRawFd::as_raw_fd(&tcp);
    let connection = serve_over(transport, proxy_protocol, tcp, peer, shared);
    crate::metrics::TRANSPORT
        .scope(label, crate::auth::CLIENT_SOCKET.scope(socket, connection))
        .await
}

async fn serve_over(
    transport: Transport,
    proxy_protocol: bool,
    mut tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) {
    // The handshakes count against the same budget as the CONNECT that follows them.
    let deadline = Duration::from_secs(shared.config.connect_timeout_secs);
    let peer = if proxy_protocol {
        match tokio::time::timeout(deadline, Box::pin(proxy::read_header(&mut tcp, peer))).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "PROXY protocol header refused");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "PROXY protocol header timed out");
                return;
            }
        }
    } else {
        peer
    };
    // Each transport's handshake and connection are one boxed future of their own: the
    // task would otherwise be as large as the largest of them (a TLS session, which the
    // state machine keeps room for even after moving it on) for every connection, plain
    // TCP included, for as long as it lives.
    match transport {
        Transport::Tcp => {
            // Publishers may write to a plain TCP socket directly; `run` keeps it open
            // until the connection has ended.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
            Box::pin(run(tcp, peer, None, Some(fd), shared)).await
        }
        Transport::Tls(acceptor) => {
            Box::pin(async move {
                match tokio::time::timeout(deadline, tls::accept(&acceptor, tcp)).await {
                    Ok(Ok((stream, client_certificate))) => {
                        let alpn = tls::alpn(&stream).map(String::from_utf8_lossy);
                        tracing::debug!(%peer, alpn = ?alpn, "TLS established");
                        run(stream, peer, client_certificate, None, shared).await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            })
            .await
        }
        Transport::WebSocket(config) => {
            Box::pin(async move {
                match tokio::time::timeout(deadline, websocket::accept(tcp, config)).await {
                    Ok(Ok(stream)) => run(stream, peer, None, None, shared).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "WebSocket upgrade failed"),
                    Err(_) => tracing::debug!(%peer, "WebSocket upgrade timed out"),
                }
            })
            .await
        }
        Transport::WebSocketTls(acceptor, config) => {
            Box::pin(async move {
                let handshake = async {
                    let (stream, client_certificate) = tls::accept(&acceptor, tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?;
                    let stream = websocket::accept(stream, config)
                        .await
                        .map_err(|e| format!("WebSocket: {e}"))?;
                    Ok::<_, String>((stream, client_certificate))
                };
                match tokio::time::timeout(deadline, handshake).await {
                    Ok(Ok((stream, client_certificate))) => {
                        run(stream, peer, client_certificate, None, shared).await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "WSS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "WSS handshake timed out"),
                }
            })
            .await
        }
    }
}

/// Runs MQTT over an established stream, then closes the transport politely.
async fn run<S>(
    mut stream: S,
    peer: SocketAddr,
    client_certificate: Option<ClientCertificate>,
    direct: Option<std::os::fd::RawFd>,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Certificate authentication (SPEC §4.1, item 1) resolves the principal from these
    // certificates at CONNECT.
    connection::serve(&mut stream, peer, client_certificate, direct, shared).await;
    // Sends TLS close_notify or the WebSocket close frame; a peer that is already gone or
    // does not read cannot hold the task past the grace period.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, stream.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Plain TCP on an ephemeral port and nothing else, whatever the defaults say.
    fn only_tcp() -> BrokerConfig {
        BrokerConfig {
            tcp_listen: Some("127.0.0.1:0".into()),
            tls_listen: Some("127.0.0.1:0".into()),
            ws_listen: None,
            wss_listen: Some("127.0.0.1:0".into()),
            ..BrokerConfig::default()
        }
    }

    /// A self-signed certificate and its key in PEM files under a fresh folder.
    fn certificate_files(name: &str) -> (PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("iotcore-broker-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp folder");
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).expect("write cert");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
        (cert, key)
    }

    fn kinds(listeners: &[Listener]) -> Vec<String> {
        listeners.iter().map(|l| l.transport.to_string()).collect()
    }

    #[tokio::test]
    async fn an_address_in_use_is_named_in_the_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("address").to_string();
        let config = BrokerConfig {
            ws_listen: Some(addr.clone()),
            ..only_tcp()
        };
        match bind(&config).await {
            Err(e @ BrokerError::Listen { .. }) => {
                assert!(e.to_string().contains(&addr), "{e}");
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(listeners) => panic!("bound {:?}", kinds(&listeners)),
        }
    }

    #[tokio::test]
    async fn blank_or_missing_addresses_turn_listeners_off() {
        let config = BrokerConfig {
            tcp_listen: Some("  ".into()),
            ws_listen: None,
            ..only_tcp()
        };
        let listeners = bind(&config).await.expect("bind");
        assert!(listeners.is_empty(), "{:?}", kinds(&listeners));
    }

    #[tokio::test]
    async fn tls_listeners_start_only_with_a_certificate() {
        let listeners = bind(&only_tcp()).await.expect("bind");
        assert_eq!(kinds(&listeners), ["MQTT over TCP"]);

        let (cert, key) = certificate_files("start");
        let config = BrokerConfig {
            ws_listen: Some("127.0.0.1:0".into()),
            tls_cert_file: Some(cert.display().to_string()),
            tls_key_file: Some(key.display().to_string()),
            ..only_tcp()
        };
        let listeners = bind(&config).await.expect("bind");
        assert_eq!(
            kinds(&listeners),
            [
                "MQTT over TCP",
                "MQTT over WebSocket",
                "MQTT over TLS",
                "MQTT over WebSocket over TLS"
            ]
        );
    }

    fn tls_error(cert: Option<String>, key: Option<String>) -> String {
        let config = BrokerConfig {
            tls_cert_file: cert,
            tls_key_file: key,
            ..only_tcp()
        };
        match tls_acceptors(&config) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn tls_settings_that_cannot_work_are_refused_naming_the_key() {
        let (cert, key) = certificate_files("refused");
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let e = tls_error(Some(cert.clone()), None);
        assert!(e.starts_with("mqtt.tls_key_file: required"), "{e}");
        let e = tls_error(None, Some(key.clone()));
        assert!(e.starts_with("mqtt.tls_cert_file: required"), "{e}");
        let e = tls_error(Some("/nonexistent/cert.pem".into()), Some(key.clone()));
        assert!(
            e.starts_with("mqtt.tls_cert_file: /nonexistent/cert.pem"),
            "{e}"
        );
        // A key file holding a certificate has no key in it.
        let e = tls_error(Some(cert.clone()), Some(cert.clone()));
        assert!(e.starts_with("mqtt.tls_key_file: "), "{e}");
        // The key of another certificate does not match this one.
        let (_, other_key) = certificate_files("other");
        let e = tls_error(Some(cert), Some(other_key.display().to_string()));
        assert!(e.starts_with("mqtt.tls_key_file: "), "{e}");
    }
}

#[cfg(test)]
mod task_size {
    use super::*;
    use std::future::Future;

    fn future_size<F, A, B, C, D, E, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D, E) -> Fut,
        Fut: Future,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every connection's task is allocated at the size of its largest state: a plain TCP
    /// connection's must not keep room for a TLS session it never has.
    #[test]
    fn a_connection_task_holds_no_room_for_a_tls_session() {
        let task = future_size(serve);
        let tls = std::mem::size_of::<tokio_rustls::server::TlsStream<TcpStream>>();
        eprintln!("connection task {task} bytes; a TLS session {tls} bytes");
        assert!(
            task < tls,
            "the task takes {task} bytes, a TLS session {tls}"
        );
    }
}
