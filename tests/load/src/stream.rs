//! Opening a connection to the broker: TCP from a chosen loopback source address, optionally
//! TLS with a client certificate, then CONNECT and (for subscribers) SUBSCRIBE.

use crate::template::{expand, Ids};
use crate::wire::{self, kind};
use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use iotcore_codec::{decode, Packet, ProtocolVersion, QoS};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A connection to the broker, plain or TLS.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// TLS settings shared by every connection of a run.
pub struct Tls {
    roots: Arc<RootCertStore>,
    server_name: ServerName<'static>,
}

impl Tls {
    pub fn new(ca_file: &Path, server_name: &str) -> Result<Tls> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file)
            .with_context(|| format!("reading {}", ca_file.display()))?
        {
            roots.add(cert.with_context(|| format!("parsing {}", ca_file.display()))?)?;
        }
        let server_name = ServerName::try_from(server_name.to_owned())
            .with_context(|| format!("bad TLS server name {server_name}"))?;
        Ok(Tls {
            roots: Arc::new(roots),
            server_name,
        })
    }

    /// A connector presenting the client certificate in `cert_file` (with `key_file`), or
    /// none.
    pub fn connector(&self, client: Option<(&str, &str)>) -> Result<TlsConnector> {
        let builder = ClientConfig::builder().with_root_certificates(self.roots.clone());
        let mut config = match client {
            Some((cert_file, key_file)) => {
                let chain = CertificateDer::pem_file_iter(cert_file)
                    .with_context(|| format!("reading {cert_file}"))?
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("parsing {cert_file}"))?;
                let key = PrivateKeyDer::from_pem_file(key_file)
                    .with_context(|| format!("reading {key_file}"))?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"mqtt".to_vec()];
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// Who a connection is and what it subscribes to.
pub struct Identity {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A filter to subscribe to before the run starts.
    pub subscribe: Option<(String, QoS)>,
}

/// How every connection of a run reaches the broker.
pub struct Connector {
    pub addr: SocketAddr,
    /// Connection `k` comes from 127.0.0.(1 + k % sources): one source address has only
    /// about 28,000 ephemeral ports towards one broker port.
    pub sources: u8,
    pub tls: Option<Arc<Tls>>,
    /// Client certificate and key file templates (see [`crate::template`]).
    pub client_cert: Option<(String, String)>,
    pub version: ProtocolVersion,
    pub keep_alive: u16,
    pub timeout: Duration,
    /// SO_SNDBUF of each socket; `None` leaves the kernel's autotuning.
    pub send_buffer: Option<u32>,
}

/// An open MQTT session: the stream, any bytes read past the handshake, and how long the
/// handshake took from the TCP connect to the CONNACK (or SUBACK).
pub struct Session {
    pub stream: Stream,
    pub read_buf: BytesMut,
    pub connect_latency: Duration,
}

impl Connector {
    /// Connects client `index`, sends CONNECT (and SUBSCRIBE), and waits for the answers.
    pub async fn open(&self, index: usize, identity: &Identity, ids: &Ids) -> Result<Session> {
        let started = Instant::now();
        let tls = match &self.tls {
            Some(tls) => {
                let files = match &self.client_cert {
                    Some((cert, key)) => {
                        Some((expand(cert, index, ids)?, expand(key, index, ids)?))
                    }
                    None => None,
                };
                let files = files.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
                Some((tls.as_ref(), tls.connector(files)?))
            }
            None => None,
        };
        let source = (self.sources > 0)
            .then(|| Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(self.sources)) as u8));
        let handshake = handshake(self, source, tls, identity);
        match tokio::time::timeout(self.timeout, handshake).await {
            Ok(Ok((stream, read_buf))) => Ok(Session {
                stream,
                read_buf,
                connect_latency: started.elapsed(),
            }),
            Ok(Err(e)) => Err(e.context(format!("client {}", identity.client_id))),
            Err(_) => bail!(
                "client {}: no CONNACK/SUBACK within {:?}",
                identity.client_id,
                self.timeout
            ),
        }
    }
}

async fn handshake(
    target: &Connector,
    source: Option<Ipv4Addr>,
    tls: Option<(&Tls, TlsConnector)>,
    identity: &Identity,
) -> Result<(Stream, BytesMut)> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source.filter(|_| target.addr.is_ipv4()) {
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .with_context(|| format!("binding {source}"))?;
    }
    if let Some(size) = target.send_buffer {
        socket.set_send_buffer_size(size)?;
    }
    let tcp = socket.connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let mut stream = match tls {
        Some((tls, connector)) => Stream::Tls(Box::new(
            connector
                .connect(tls.server_name.clone(), tcp)
                .await
                .context("TLS handshake")?,
        )),
        None => Stream::Tcp(tcp),
    };
    let mut out = BytesMut::with_capacity(256);
    wire::put_connect(
        &mut out,
        target.version,
        &identity.client_id,
        identity.username.as_deref(),
        identity.password.as_deref(),
        target.keep_alive,
    )?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(4096);
    match read_packet(&mut stream, &mut buf, target.version).await? {
        Packet::ConnAck(ack) if ack.code == 0 => {}
        Packet::ConnAck(ack) => bail!("CONNACK refused the connection: code {:#04x}", ack.code),
        other => bail!("expected CONNACK, got {}", other.name()),
    }
    if let Some((filter, qos)) = &identity.subscribe {
        // Sent after the CONNACK rather than pipelined behind the CONNECT: a broker may
        // leave packets that came with the CONNECT unread until more bytes arrive.
        out.clear();
        wire::put_subscribe(&mut out, target.version, filter, *qos)?;
        stream.write_all(&out).await?;
        match read_packet(&mut stream, &mut buf, target.version).await? {
            Packet::SubAck(ack) => {
                if let Some(code) = ack.reasons.iter().find(|r| r.0 >= 0x80) {
                    bail!("SUBACK refused {filter}: {:#04x}", code.0);
                }
            }
            other => bail!("expected SUBACK, got {}", other.name()),
        }
    }
    Ok((stream, buf))
}

/// Reads one whole packet of the handshake; messages cannot arrive before SUBACK because the
/// run has not started.
async fn read_packet(
    stream: &mut Stream,
    buf: &mut BytesMut,
    version: ProtocolVersion,
) -> Result<Packet> {
    loop {
        if let Some((_, total)) = wire::frame(buf)? {
            if buf.first().map(|b| b >> 4) == Some(kind::PUBLISH) {
                // A retained message on the benchmark topic from an earlier run: skip it.
                buf.advance(total);
                continue;
            }
            if let Some(packet) = decode(buf, version, wire::MAX_PACKET)? {
                return Ok(packet);
            }
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("the broker closed the connection during the handshake");
        }
    }
}
