//! One MQTT connection: bytes ↔ packets, and each packet applied to the session.
//!
//! The task owns its socket, its read and write buffers, its subscriptions and its
//! in-flight windows. A PUBLISH flows one way: socket → codec → ACL (decided at CONNECT) →
//! [`publish`](crate::publish) → router → subscribers' bounded mailboxes. Nothing here
//! blocks on another connection.

use crate::broker::Shared;
use crate::handshake::{self, Accepted};
use crate::limits::TokenBucket;
use crate::mailbox::{self, Queue};
use crate::outbound::Outbound;
use crate::router::{ConnectionId, Mailbox, NamespaceRoutes};
use crate::session_store::Journal;
use crate::sessions::{SessionState, Signal, Stopped};
use crate::status;
use crate::topic_aliases::OutboundAliases;
use crate::transport::tls::ClientCertificate;
use crate::wills;
use bytes::BytesMut;
use iotcore_codec::{
    decode, Disconnect, Packet, Properties, ProtocolVersion, PublishRef, ReasonCode,
};
use iotcore_telemetry::metrics::mqtt::{ConnectionMetrics, ACCEPTED, CONNECTS};
use iotcore_topic::Subscription;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// [`Close::why`] of a normal DISCONNECT from the client.
pub const CLIENT_DISCONNECT: &str = "DISCONNECT from client";
/// [`Close::why`] of a client that took nothing of what was written to it for
/// `mqtt.write_timeout_secs`.
pub const WRITE_TIMEOUT: &str = "write timeout";

/// Why a connection ends; MQTT 5 clients are told with a DISCONNECT when there is a reason.
#[derive(Debug)]
pub struct Close {
    pub reason: Option<ReasonCode>,
    pub why: &'static str,
    /// Whether the will is published: on every end but a normal DISCONNECT from the client
    /// (MQTT-3.1.2-8, -10; MQTT 5 reason 0x04 asks for it explicitly).
    pub publish_will: bool,
    /// A new MQTT 5 Session Expiry Interval from the client's DISCONNECT.
    pub session_expiry: Option<u32>,
}

impl Close {
    pub fn with(reason: ReasonCode, why: &'static str) -> Close {
        Close {
            reason: Some(reason),
            why,
            publish_will: true,
            session_expiry: None,
        }
    }

    pub fn silently(why: &'static str) -> Close {
        Close {
            reason: None,
            why,
            publish_will: true,
            session_expiry: None,
        }
    }
}

/// Serves one accepted connection until it ends. `direct` is the socket of a plain TCP
/// connection, which publishers may write QoS 0 messages to directly
/// ([`mailbox`](crate::mailbox)); it must stay open until the returned future ends.
///
/// Not an `async fn`: its arguments would be kept in the returned future for the
/// connection's whole life, next to the copies the connection's own future keeps.
pub fn serve<S>(
    stream: S,
    peer: SocketAddr,
    client_certificate: Option<ClientCertificate>,
    direct: Option<RawFd>,
    shared: Arc<Shared>,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connection_id = shared.router.next_connection_id();
    let span = tracing::info_span!(
        "mqtt",
        connection_id,
        %peer,
        tenant_id = tracing::field::Empty,
        registry_id = tracing::field::Empty,
        device_id = tracing::field::Empty,
        client_id = tracing::field::Empty,
    );
    async move {
        let (reader, writer) = tokio::io::split(stream);
        let mut io = Io {
            reader,
            writer,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            bytes: None,
            write_timeout: Duration::from_secs(shared.config.write_timeout_secs),
            stop: Stop {
                shutdown: shared.shutdown.clone(),
                session: None,
            },
            broken: false,
            gate: None,
            direct,
        };
        // From the CONNECT to the CONNACK in a future of its own, boxed: the packet, the
        // spans and whatever authenticating held are gone once connected, so that the task
        // of a connected client, idle for most of its life, keeps only what the session
        // needs.
        let Some(Opened {
            mut session,
            mut queue,
            claim,
            will,
            status,
            session_present,
        }) = Box::pin(open(
            &mut io,
            &shared,
            connection_id,
            peer,
            client_certificate.as_ref(),
        ))
        .await
        else {
            return;
        };
        let version = session.version;
        if session_present {
            // MQTT-4.4.0-1: unacknowledged messages are sent again, with DUP set.
            session.redeliver(&mut io);
        }
        let close = match io.flush().await {
            Err(failed) => failed.into(),
            Ok(()) => {
                if io.direct.is_some() {
                    io.gate = Some(queue.gate());
                }
                let close = session.run(&mut io, &mut queue, &claim.signal).await;
                // Publishers write to this socket no more: it is closed after this
                // returns, and a resumed session's messages go to its next connection.
                queue.detach();
                io.gate = None;
                close
            }
        };
        tracing::info!(why = close.why, "disconnected");
        crate::metrics::disconnected(session.accepted.principal.namespace.tenant_id(), &close);
        if version == ProtocolVersion::V5 {
            if let Some(reason) = close.reason {
                // The reason string says why in words (MQTT-3.14.2-3: only where it fits
                // the client's Maximum Packet Size; the code alone otherwise).
                // Encoded in a scope of their own: the packets are not kept across the
                // flush below, so the task never keeps room for them.
                let max = session.client_max_packet;
                let queued = {
                    let explained = Packet::Disconnect(Disconnect {
                        reason,
                        properties: Properties {
                            reason_string: Some(close.why.to_owned()),
                            ..Properties::default()
                        },
                    });
                    let bare = Packet::Disconnect(Disconnect {
                        reason,
                        properties: Properties::default(),
                    });
                    io.send(&explained, version, max).is_ok()
                        || io.send(&bare, version, max).is_ok()
                };
                if queued {
                    // The connection is ending already: only the second decides.
                    io.stop = Stop::never();
                    let _ = tokio::time::timeout(Duration::from_secs(1), io.flush()).await;
                }
            }
        }
        if let Some(status) = status {
            Box::pin(status::disconnected(
                &shared,
                &session.routes,
                &session.accepted.principal,
                status,
                close.why,
            ))
            .await;
        }
        if close.publish_will {
            if let Some(will) = will {
                let (message, delay) = *will;
                match claim.signal.successor_resumed() {
                    // MQTT-3.1.3-9: the connection that took over carries the session on,
                    // and was there before this one ended: a delayed will is never sent.
                    Some(true) if !delay.is_zero() => {}
                    // It started a clean session, so this one has ended: the will goes out
                    // now, whatever its delay (MQTT-3.1.2-8).
                    Some(false) => wills::publish_later(&session, message, Duration::ZERO),
                    _ => wills::publish_later(&session, message, delay),
                }
            }
        }
        if let Some(expiry) = close.session_expiry {
            // MQTT-3.14.2-2: a session that was to end with the connection cannot be
            // extended at DISCONNECT.
            if session.accepted.session_expiry > 0 {
                session.accepted.session_expiry = expiry.min(shared.config.max_session_expiry_secs);
            }
        }
        session.end(queue, connection_id, &claim.signal);
        claim.signal.end();
    }
    .instrument(span)
}

/// What a connection that was accepted carries into its session.
struct Opened {
    session: Session,
    queue: Queue,
    claim: crate::sessions::Claim,
    will: Option<Box<(crate::router::Message, Duration)>>,
    status: Option<status::Connected>,
    session_present: bool,
}

/// Reads the CONNECT, authenticates it and answers with the CONNACK; `None` when the
/// connection is to end there.
async fn open<R, W>(
    io: &mut Io<R, W>,
    shared: &Arc<Shared>,
    connection_id: ConnectionId,
    peer: SocketAddr,
    client_certificate: Option<&ClientCertificate>,
) -> Option<Opened>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let connect_timeout = Duration::from_secs(shared.config.connect_timeout_secs);
    let read = tokio::time::timeout(connect_timeout, io.read_connect(shared)).await;
    let connect = match read {
        Ok(Ok(connect)) => connect,
        Ok(Err(why)) => {
            tracing::debug!(why, "connection closed before CONNECT");
            return None;
        }
        Err(_) => {
            tracing::debug!("no CONNECT in time");
            return None;
        }
    };
    let version = connect.protocol;
    // From the CONNECT to the CONNACK, authentication included: its own span, so that
    // a trace shows what connecting cost, and with what outcome, apart from the
    // connection's whole life. Never the password: only ids.
    let connect_span = tracing::info_span!(
        "connect",
        otel.name = "mqtt CONNECT",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        connection_id,
        transport = crate::metrics::transport(),
        protocol = ?version,
        tenant_id = tracing::field::Empty,
        registry_id = tracing::field::Empty,
        device_id = tracing::field::Empty,
        client_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
        reason = tracing::field::Empty,
    );
    // Authentication, the route lookup and the lifecycle events below wait on the
    // store; boxed, their futures take memory only while they run. Unboxed, the
    // connection's task would be as large as the largest of them for its whole life,
    // idle or not.
    let authenticated = Box::pin(handshake::accept(
        shared,
        &connect,
        peer.ip(),
        client_certificate,
    ))
    .instrument(connect_span.clone())
    .await;
    let mut accepted = match authenticated {
        Ok(accepted) => accepted,
        Err(refused) => {
            connect_span.record("outcome", "refused");
            connect_span.record("reason", refused.reason);
            connect_span.record("otel.status_code", "error");
            let reason = refused.reason;
            tracing::info!(parent: &connect_span, reason, "CONNECT refused");
            crate::metrics::connect_refused(refused.code, version);
            let mut answer = handshake::refusal(&refused, version);
            let max = connect.properties.maximum_packet_size;
            if io.send(&answer, version, max).is_err() {
                // MQTT-3.2.2-19: no reason string where it would make the CONNACK larger
                // than the client's Maximum Packet Size; the code alone.
                if let Packet::ConnAck(connack) = &mut answer {
                    connack.properties.reason_string = None;
                }
                let _ = io.send(&answer, version, max);
            }
            let _ = io.flush().await;
            return None;
        }
    };
    let span = tracing::Span::current();
    span.record(
        "tenant_id",
        tracing::field::display(&accepted.principal.tenant_id),
    );
    span.record("client_id", accepted.client_id.as_str());
    crate::metrics::record_principal(&span, &accepted.principal.kind);
    connect_span.record(
        "tenant_id",
        tracing::field::display(&accepted.principal.tenant_id),
    );
    connect_span.record("client_id", accepted.client_id.as_str());
    crate::metrics::record_principal(&connect_span, &accepted.principal.kind);
    let routes = Box::pin(shared.routes_for(&accepted.principal)).await;
    let namespace = accepted.principal.namespace.clone();
    let tenant = namespace.tenant_id().as_str();
    let metrics = ConnectionMetrics::new(tenant, crate::metrics::transport());
    CONNECTS.with(&[ACCEPTED]).inc();
    io.bytes = Some(metrics.byte_counters());
    let client_id = accepted.client_id.clone();
    let claim = shared.sessions.claim(
        &namespace,
        &client_id,
        connection_id,
        Some(&principal_key(&accepted)),
        connect.clean_start,
    );
    io.stop.session = Some(claim.signal.clone());
    if let Some(previous) = &claim.previous {
        // Let the connection we take over finish, so that its session is parked and
        // can be resumed below. One that takes longer cannot park any more.
        let ended = previous.ended();
        let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
    }
    // MQTT-3.1.2-4/5: Clean Start discards a parked session; otherwise it is resumed.
    let resumed = match shared
        .sessions
        .take_parked(&namespace, &client_id, claim.previous.as_ref())
    {
        Some(state) if connect.clean_start => {
            state.discard();
            None
        }
        other => other,
    };
    let session_present = resumed.is_some();
    let connack = handshake::connack(shared, version, &accepted, session_present);
    let sent = io.send(&connack, version, None).is_ok() && io.flush().await.is_ok();
    connect_span.record("outcome", if sent { "accepted" } else { "closed" });
    // Closes the span: connecting ends with the CONNACK.
    drop(connect_span);
    if !sent {
        if let Some(state) = resumed {
            shared.sessions.park(
                &namespace,
                &client_id,
                &claim.signal,
                state,
                session_expiry(&accepted),
            );
        }
        shared
            .sessions
            .release(&namespace, &client_id, connection_id);
        claim.signal.end();
        return None;
    }
    tracing::info!(protocol = ?version, session_present, "connected");
    let status = Box::pin(status::connected(
        shared,
        &routes,
        &accepted.principal,
        version,
        peer,
    ))
    .await;
    let will = accepted.will.take();
    // MQTT-3.1.2-25 / MQTT 5 Receive Maximum: what the client accepts bounds what we send.
    let window = usize::from(shared.config.inflight_window.max(1)).min(usize::from(
        connect.properties.receive_maximum.unwrap_or(u16::MAX),
    ));
    let state = match resumed {
        Some(mut state) => {
            state.outbound.set_window(window);
            state
        }
        None => {
            // Only a session that outlives its connection is stored.
            let journal = (accepted.session_expiry > 0).then(|| {
                Journal::start(
                    &shared.sessions_writer,
                    &namespace,
                    &client_id,
                    accepted.acl.current().registry_scope.as_ref(),
                )
            });
            let (mailbox, queue) = mailbox::channel(shared.config.outbound_queue, journal);
            SessionState {
                id: connection_id,
                routes,
                mailbox,
                queue,
                subscriptions: HashMap::new(),
                outbound: Outbound::new(window),
                incoming_qos2: HashSet::new(),
            }
        }
    };
    let SessionState {
        id,
        routes,
        mailbox,
        queue,
        subscriptions,
        outbound,
        incoming_qos2,
    } = state;
    if let Some(journal) = mailbox.journal() {
        journal.connected(accepted.session_expiry);
    }
    let session = Session {
        id,
        version,
        accepted,
        routes,
        shared: shared.clone(),
        mailbox,
        subscriptions,
        outbound,
        incoming_qos2,
        topic_aliases: None,
        client_max_packet: connect.properties.maximum_packet_size,
        publish_rate: TokenBucket::new(shared.config.max_publishes_per_second_per_client),
        outbound_aliases: OutboundAliases::new(match version {
            // MQTT-3.1.2-26/27: no more aliases than the client's Topic Alias
            // Maximum; bounded by ours too, since each one holds a topic in memory.
            ProtocolVersion::V5 => connect
                .properties
                .topic_alias_maximum
                .unwrap_or(0)
                .min(shared.config.topic_alias_maximum),
            _ => 0,
        }),
        metrics,
        full_queue: None,
    };
    Some(Opened {
        session,
        queue,
        claim,
        will,
        status,
        session_present,
    })
}

/// About the most one write to a subscriber carries; messages are encoded until the write
/// buffer holds this much.
const SEND_BATCH: usize = 64 * 1024;
/// Messages taken from the session's queue under one lock.
const TAKE_BATCH: usize = 64;

/// The most one read takes in between packets (the size of the stack buffer of
/// [`Io::fill`]).
const READ_CHUNK: usize = 8 * 1024;

/// The socket halves and their buffers.
pub struct Io<R, W> {
    reader: R,
    writer: W,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    /// The tenant's bytes in and out, once CONNECT has said who the tenant is.
    bytes: Option<(iotcore_telemetry::Counter, iotcore_telemetry::Counter)>,
    /// The longest one flush may wait for a client that does not read
    /// (`mqtt.write_timeout_secs`).
    write_timeout: Duration,
    /// What ends a flush that waits on a client that does not read.
    stop: Stop,
    /// A flush failed part way: what is left in the stream is unknown, nothing more is
    /// written.
    broken: bool,
    /// While the session runs: takes the socket back from publishers' direct writes
    /// around each flush.
    gate: Option<mailbox::Gate>,
    /// The socket of a plain TCP connection, for publishers' direct writes.
    direct: Option<RawFd>,
}

/// Why a flush did not complete.
#[derive(Debug)]
pub enum WriteFailed {
    Error,
    TimedOut,
    /// The connection is to end (takeover, revocation, shutdown) while the client does not
    /// take what is written to it.
    Stopped(Close),
}

impl From<WriteFailed> for Close {
    fn from(failed: WriteFailed) -> Close {
        match failed {
            WriteFailed::Error => Close::silently("write error"),
            // As a network loss: the will is published.
            WriteFailed::TimedOut => Close::silently(WRITE_TIMEOUT),
            WriteFailed::Stopped(close) => close,
        }
    }
}

/// The events that end a connection whatever it is waiting for; a write blocked on a full
/// socket races them.
struct Stop {
    shutdown: CancellationToken,
    /// Takeover and revocation, known once the session is claimed.
    session: Option<Signal>,
}

impl Stop {
    fn never() -> Stop {
        Stop {
            shutdown: CancellationToken::new(),
            session: None,
        }
    }

    async fn stopped(&self) -> Close {
        async fn stopped(signal: Option<&Signal>) -> Stopped {
            match signal {
                Some(signal) => signal.stopped().await,
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            stopped = stopped(self.session.as_ref()) => stopped.into(),
            _ = self.shutdown.cancelled() => {
                Close::with(ReasonCode::SERVER_SHUTTING_DOWN, "server shutting down")
            }
        }
    }
}

impl From<Stopped> for Close {
    fn from(stopped: Stopped) -> Close {
        match stopped {
            Stopped::Revoked => {
                Close::with(ReasonCode::NOT_AUTHORIZED, "credential no longer valid")
            }
            Stopped::TakenOver => Close::with(ReasonCode::SESSION_TAKEN_OVER, "session taken over"),
        }
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Io<R, W> {
    /// Reads until the first packet, which must be a CONNECT (MQTT-3.1.0-1).
    async fn read_connect(
        &mut self,
        shared: &Shared,
    ) -> Result<iotcore_codec::Connect, &'static str> {
        loop {
            match decode(
                &mut self.rbuf,
                ProtocolVersion::V3_1_1,
                shared.config.max_packet_size as usize,
            ) {
                Ok(Some(Packet::Connect(connect))) => return Ok(connect),
                Ok(Some(_)) => return Err("first packet was not CONNECT"),
                Ok(None) => {}
                Err(e) => {
                    // MQTT-3.1.2-2: an unsupported protocol level is answered with return
                    // code 1 before closing.
                    if e.reason_code() == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION {
                        let refusal = Packet::ConnAck(iotcore_codec::ConnAck {
                            session_present: false,
                            code: iotcore_codec::connack_v3::UNACCEPTABLE_PROTOCOL_VERSION,
                            properties: Properties::default(),
                        });
                        let _ = self.send(&refusal, ProtocolVersion::V3_1_1, None);
                        let _ = self.flush().await;
                    }
                    return Err("malformed CONNECT");
                }
            }
            if self.fill().await? == 0 {
                return Err("closed");
            }
        }
    }

    /// Reads more bytes; 0 means the peer closed.
    ///
    /// Between packets (nothing buffered) the read goes through a buffer on the stack and
    /// only what arrived is copied to the heap, so that an idle connection, which spends
    /// its life waiting here, holds no read buffer at all. A partial packet is read into
    /// `rbuf` directly.
    async fn fill(&mut self) -> Result<usize, &'static str> {
        let read = if self.rbuf.is_empty() {
            // Payloads decoded earlier share this allocation; let it go with them.
            self.rbuf = BytesMut::new();
            let (reader, rbuf) = (&mut self.reader, &mut self.rbuf);
            std::future::poll_fn(|cx| {
                let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut buf = tokio::io::ReadBuf::uninit(&mut stack);
                std::task::ready!(std::pin::Pin::new(&mut *reader).poll_read(cx, &mut buf))?;
                rbuf.extend_from_slice(buf.filled());
                std::task::Poll::Ready(Ok::<_, std::io::Error>(buf.filled().len()))
            })
            .await
        } else {
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(READ_CHUNK);
            }
            self.reader.read_buf(&mut self.rbuf).await
        }
        .map_err(|_| "read error")?;
        if let Some((received, _)) = &self.bytes {
            received.add(read as u64);
        }
        Ok(read)
    }

    /// Encodes `packet` into the write buffer. A packet larger than the client's Maximum
    /// Packet Size is not sent (MQTT-3.1.2-25) and `Err` is returned.
    pub fn send(
        &mut self,
        packet: &Packet,
        version: ProtocolVersion,
        client_max: Option<u32>,
    ) -> Result<(), ()> {
        let start = self.wbuf.len();
        if packet.encode(version, &mut self.wbuf).is_err() {
            self.wbuf.truncate(start);
            return Err(());
        }
        if client_max.is_some_and(|max| self.wbuf.len() - start > max as usize) {
            self.wbuf.truncate(start);
            return Err(());
        }
        Ok(())
    }

    /// Encodes a PUBLISH into the write buffer, as [`Io::send`] does a packet.
    pub fn send_publish(
        &mut self,
        publish: &PublishRef<'_>,
        version: ProtocolVersion,
        client_max: Option<u32>,
    ) -> Result<(), ()> {
        let start = self.wbuf.len();
        if publish.encode(version, &mut self.wbuf).is_err() {
            self.wbuf.truncate(start);
            return Err(());
        }
        if client_max.is_some_and(|max| self.wbuf.len() - start > max as usize) {
            self.wbuf.truncate(start);
            return Err(());
        }
        Ok(())
    }

    /// Writes the write buffer out. A client that does not read cannot hold the connection:
    /// the write gives up after `mqtt.write_timeout_secs`, or as soon as the connection is
    /// to end (takeover, revocation, shutdown). After a failure nothing more is written.
    async fn flush(&mut self) -> Result<(), WriteFailed> {
        self.flush_keeping(false).await
    }

    /// [`Io::flush`], keeping the write buffer's memory for more to come when `keep`.
    /// Publishers' direct writes wait while it writes, and may go on once everything is
    /// written unless `keep` (more is queued).
    async fn flush_keeping(&mut self, keep: bool) -> Result<(), WriteFailed> {
        if self.broken {
            return Err(WriteFailed::Error);
        }
        if self.wbuf.is_empty() {
            if !keep && self.wbuf.capacity() > 0 {
                // Reserved for messages that were not sent after all (expired, too large).
                self.wbuf = BytesMut::new();
            }
            return Ok(());
        }
        if let Some(gate) = &self.gate {
            gate.claim(&mut self.wbuf);
        }
        let (writer, wbuf, stop) = (&mut self.writer, &self.wbuf, &self.stop);
        let write_timeout = self.write_timeout;
        // Boxed while it runs: the timer and the waits on the stop signals would otherwise
        // take room in every connection's task, idle or not, for its whole life.
        let written = Box::pin(async move {
            let write = async {
                writer.write_all(wbuf).await?;
                writer.flush().await
            };
            tokio::select! {
                // A write that can complete at once does, whatever else happened.
                biased;
                written = tokio::time::timeout(write_timeout, write) => match written {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(WriteFailed::Error),
                    Err(_) => Err(WriteFailed::TimedOut),
                },
                close = stop.stopped() => Err(WriteFailed::Stopped(close)),
            }
        })
        .await;
        match written {
            Ok(()) => {
                if let Some((_, sent)) = &self.bytes {
                    sent.add(self.wbuf.len() as u64);
                }
                if keep && self.wbuf.capacity() <= 2 * SEND_BATCH {
                    self.wbuf.clear();
                } else {
                    // What was written is not kept: an idle connection holds no write
                    // buffer.
                    self.wbuf = BytesMut::new();
                }
                if let (Some(gate), false) = (&self.gate, keep) {
                    gate.release();
                }
                Ok(())
            }
            Err(failed) => {
                self.broken = true;
                self.wbuf = BytesMut::new();
                Err(failed)
            }
        }
    }
}

/// The state of one connected client.
pub struct Session {
    pub id: ConnectionId,
    pub version: ProtocolVersion,
    pub accepted: Accepted,
    pub routes: Arc<NamespaceRoutes>,
    pub shared: Arc<Shared>,
    /// Our own mailbox, for retained messages sent on subscribe.
    pub mailbox: Mailbox,
    /// Filters as the client wrote them → parsed, for UNSUBSCRIBE and clean-up.
    pub subscriptions: HashMap<String, Subscription>,
    pub outbound: Outbound,
    /// Inbound QoS 2 packet ids between PUBREC and PUBREL; a PUBLISH that repeats one is
    /// not routed again (MQTT-4.3.3-10).
    pub incoming_qos2: HashSet<u16>,
    /// Inbound MQTT 5 topic aliases (MQTT-3.3.2-10..12); made by the first one.
    // Boxed on purpose: an empty map takes 48 bytes in every connection, the box 8.
    #[allow(clippy::box_collection)]
    pub topic_aliases: Option<Box<HashMap<u16, String>>>,
    pub client_max_packet: Option<u32>,
    /// The client's own PUBLISH rate (`mqtt.max_publishes_per_second_per_client`).
    pub publish_rate: TokenBucket,
    /// Topic aliases of the messages sent to this client (MQTT 5).
    pub outbound_aliases: OutboundAliases,
    /// This connection's handles on its tenant's series; counts it as open while it lives.
    pub metrics: ConnectionMetrics,
    /// A subscriber's queue that one of this client's messages found full: nothing more
    /// is read from the client until that queue has room again, or until the deadline.
    pub full_queue: Option<(Mailbox, Instant)>,
}

impl Session {
    async fn run<R, W>(&mut self, io: &mut Io<R, W>, outbound: &mut Queue, signal: &Signal) -> Close
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let keep_alive = match self.accepted.keep_alive {
            0 => None,
            // MQTT-3.1.2-24: one and a half keep alive periods without a packet.
            secs => Some(Duration::from_millis(u64::from(secs) * 1500)),
        };
        let far_future = Duration::from_secs(86400 * 365);
        let mut deadline = Instant::now() + keep_alive.unwrap_or(far_future);
        let keep_alive_timer = sleep_until(deadline);
        tokio::pin!(keep_alive_timer);
        // SPEC §4.1: a certificate that expires while connected ends the connection. One
        // timer for the connection's life, re-armed only when it fires early.
        let certificate_end = self
            .accepted
            .principal
            .certificate
            .as_ref()
            .map(|certificate| certificate.not_after);
        // Armed for certificate connections only: a password connection carries no timer.
        let mut certificate_expiry = certificate_end.map(|end| {
            let first_check =
                crate::x509::time_left(end, chrono::Utc::now()).unwrap_or(Duration::ZERO);
            Box::pin(tokio::time::sleep(first_check))
        });
        // A resumed session's subscriptions are checked against this connection's rights.
        self.recheck_subscriptions();
        // Packets the client pipelined behind its CONNECT arrived in the same read and are
        // already buffered; without this they would wait for the client's next bytes.
        if let Err(close) = Box::pin(self.handle_buffered(io)).await {
            return close;
        }
        // The futures of the events that end the connection (and of a change of rights)
        // stay registered across the loop's passes instead of registering again in every
        // pass.
        let shared = self.shared.clone();
        let live_acl = self.accepted.acl.clone();
        let acl_changed = live_acl.changed();
        tokio::pin!(acl_changed);
        let stopped = signal.stopped();
        tokio::pin!(stopped);
        let shutdown = shared.shutdown.cancelled();
        tokio::pin!(shutdown);
        loop {
            let can_send = self.outbound.has_room();
            let full_queue = self.full_queue.clone();
            tokio::select! {
                read = io.fill(), if full_queue.is_none() => {
                    match read {
                        Ok(0) => return Close::silently("closed by client"),
                        Ok(_) => {}
                        Err(why) => return Close::silently(why),
                    }
                    deadline = Instant::now() + keep_alive.unwrap_or(far_future);
                    if let Err(close) = Box::pin(self.handle_buffered(io)).await {
                        return close;
                    }
                }
                () = room(full_queue.as_ref()), if full_queue.is_some() => {
                    self.full_queue = None;
                    if let Err(close) = Box::pin(self.handle_buffered(io)).await {
                        return close;
                    }
                }
                () = outbound.ready(), if can_send => {
                    if let Err(failed) = self.send_queued(outbound, io).await {
                        return failed.into();
                    }
                }
                () = &mut keep_alive_timer, if keep_alive.is_some() => {
                    // Armed once and moved only when it fires early, rather than re-armed
                    // after every packet.
                    if Instant::now() >= deadline {
                        return Close::with(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep alive timeout");
                    }
                    keep_alive_timer.as_mut().reset(deadline);
                }
                () = expired(certificate_expiry.as_mut()), if certificate_expiry.is_some() => {
                    match certificate_end.and_then(|end| crate::x509::time_left(end, chrono::Utc::now())) {
                        Some(left) => {
                            if let Some(timer) = certificate_expiry.as_mut() {
                                timer.as_mut().reset(Instant::now() + left);
                            }
                        }
                        // MQTT 5: 0x87, as for a revoked certificate: the credential the
                        // connection was admitted with is no longer valid.
                        None => return Close::with(ReasonCode::NOT_AUTHORIZED, "certificate expired"),
                    }
                }
                // SPEC §4.2: policies changed; subscriptions no longer granted stop here.
                () = &mut acl_changed => {
                    acl_changed.set(live_acl.changed());
                    self.recheck_subscriptions();
                }
                // SPEC §4.1: a disabled or deleted principal, or a suspended tenant, is
                // disconnected (MQTT 5: 0x87); so is a session another connection took.
                stopped = &mut stopped => return stopped.into(),
                () = &mut shutdown => {
                    return Close::with(ReasonCode::SERVER_SHUTTING_DOWN, "server shutting down");
                }
            }
        }
    }

    /// Encodes what is queued for the client, up to `SEND_BATCH` bytes and as much as the
    /// in-flight window allows, and writes it with one write: the messages are taken from
    /// the queue in batches, one lock for each. The write buffer is kept while more is
    /// queued, and let go once the queue is empty, so that an idle connection holds none.
    async fn send_queued<R, W>(
        &mut self,
        queue: &mut Queue,
        io: &mut Io<R, W>,
    ) -> Result<(), WriteFailed>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // What a publisher's direct write left unsent goes first.
        if let Some(gate) = &io.gate {
            gate.claim(&mut io.wbuf);
        }
        let mut batch = Vec::new();
        let mut left = 1;
        while left > 0 && io.wbuf.len() < SEND_BATCH {
            // Room for QoS 1/2 messages in the window: each message taken can be sent.
            let room = self.outbound.room();
            if room == 0 {
                break;
            }
            left = queue.take(&mut batch, room.min(TAKE_BATCH));
            let size: usize = batch
                .iter()
                .map(|outgoing| outgoing.message.topic.len() + outgoing.message.payload.len() + 8)
                .sum();
            io.wbuf.reserve(size);
            for outgoing in batch.drain(..) {
                self.send_outgoing(outgoing, io);
            }
        }
        io.flush_keeping(left > 0).await?;
        if left == 0 {
            // A client that receives messages: from now on publishers write QoS 0 ones to
            // it directly while it has nothing queued.
            if let Some(fd) = io.direct {
                queue.attach(|| self.direct_writes(fd, io));
            }
        }
        Ok(())
    }

    /// What publishers need to write to this client directly; `None` where its messages
    /// need the connection's own state (MQTT 5 topic aliases).
    fn direct_writes<R, W>(&self, fd: RawFd, io: &Io<R, W>) -> Option<mailbox::Direct> {
        if self.outbound_aliases.enabled() {
            return None;
        }
        Some(mailbox::Direct::new(
            fd,
            self.version,
            self.client_max_packet,
            self.metrics.message_out_counter(0)?,
            io.bytes.as_ref().map(|(_, sent)| sent.clone()),
        ))
    }

    /// Handles every whole packet in the read buffer and flushes the answers.
    async fn handle_buffered<R, W>(&mut self, io: &mut Io<R, W>) -> Result<(), Close>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let max_packet = self.shared.config.max_packet_size as usize;
        // Back-pressure: once a message found a subscriber's queue full, the packets behind
        // it wait in the read buffer until that queue has room.
        while self.full_queue.is_none() {
            match decode(&mut io.rbuf, self.version, max_packet) {
                Ok(Some(packet)) => self.handle(packet, io).await?,
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(error = %e, "malformed packet");
                    return Err(Close::with(e.reason_code(), "malformed packet"));
                }
            }
        }
        io.flush().await.map_err(Close::from)
    }

    async fn handle<R, W>(&mut self, packet: Packet, io: &mut Io<R, W>) -> Result<(), Close>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, io).await,
            Packet::PubRel(rel) => {
                self.on_pubrel(rel, io);
                Ok(())
            }
            Packet::PubAck(ack) => self.on_puback(ack),
            Packet::PubRec(rec) => self.on_pubrec(rec, io),
            Packet::PubComp(comp) => self.on_pubcomp(comp),
            Packet::Subscribe(subscribe) => {
                // MQTT-3.8.3-4: No Local on a shared subscription is a protocol error.
                if subscribe
                    .filters
                    .iter()
                    .any(|(filter, options)| options.no_local && filter.starts_with("$share/"))
                {
                    return Err(Close::with(
                        ReasonCode::PROTOCOL_ERROR,
                        "No Local on a shared subscription",
                    ));
                }
                self.on_subscribe(subscribe, io);
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.on_unsubscribe(unsubscribe, io);
                Ok(())
            }
            Packet::PingReq => {
                self.reply(&Packet::PingResp, io);
                Ok(())
            }
            Packet::Disconnect(disconnect) => Err(Close {
                reason: None,
                why: CLIENT_DISCONNECT,
                publish_will: disconnect.reason == ReasonCode::DISCONNECT_WITH_WILL,
                session_expiry: disconnect.properties.session_expiry_interval,
            }),
            Packet::Auth(_) => Err(Close::with(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without authentication method",
            )),
            // MQTT-3.1.0-2: a second CONNECT is a protocol violation.
            Packet::Connect(_) => Err(Close::with(ReasonCode::PROTOCOL_ERROR, "second CONNECT")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Close::with(
                    ReasonCode::PROTOCOL_ERROR,
                    "server-to-client packet from client",
                ))
            }
        }
    }

    /// Queues a control packet for the client (acks, responses); flushed with the batch.
    pub fn reply<R, W>(&self, packet: &Packet, io: &mut Io<R, W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let _ = io.send(packet, self.version, self.client_max_packet);
    }

    /// Parks a persistent session for its client to resume; otherwise removes every trace
    /// of it from the shared state.
    fn end(self, queue: Queue, connection: ConnectionId, signal: &Signal) {
        let namespace = &self.accepted.principal.namespace;
        let client_id = &self.accepted.client_id;
        self.shared
            .sessions
            .release(namespace, client_id, connection);
        let expiry = session_expiry(&self.accepted);
        let state = SessionState {
            id: self.id,
            routes: self.routes,
            mailbox: self.mailbox,
            queue,
            subscriptions: self.subscriptions,
            outbound: self.outbound,
            incoming_qos2: self.incoming_qos2,
        };
        if expiry.is_zero() {
            state.discard();
        } else {
            self.shared
                .sessions
                .park(namespace, client_id, signal, state, expiry);
        }
    }
}

/// Resolves when the certificate timer fires; never without one.
async fn expired(timer: Option<&mut std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the full queue has room again, or at its deadline.
async fn room(full_queue: Option<&(Mailbox, Instant)>) {
    if let Some((mailbox, deadline)) = full_queue {
        // Boxed: only a publisher held back waits here, and the wait (a timer among
        // others) would otherwise take room in every connection's task for its whole life.
        Box::pin(mailbox.room(*deadline)).await;
    }
}

/// The id the connection authenticated as (a device, registry or virtual broker id).
fn principal_id(accepted: &Accepted) -> &str {
    use iotcore_store::auth::PrincipalKind;
    match &accepted.principal.kind {
        PrincipalKind::Device { device_id, .. } => device_id.as_str(),
        PrincipalKind::Registry { registry_id } => registry_id.as_str(),
        PrincipalKind::Broker { broker_id } => broker_id.as_str(),
    }
}

/// What the live connection is recorded under, to find it again when its credential is
/// revoked: the principal id, with the certificate when it authenticated with one.
fn principal_key(accepted: &Accepted) -> String {
    let id = principal_id(accepted);
    match &accepted.principal.certificate {
        Some(certificate) => certificate.session_key(id),
        None => id.to_owned(),
    }
}

fn session_expiry(accepted: &Accepted) -> Duration {
    Duration::from_secs(u64::from(accepted.session_expiry))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `serve` returns, without making one.
    fn future_size<A, B, C, D, E, F>(_: impl FnOnce(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection's task is, for the most part, this future: it is allocated at
    /// its largest size for the connection's whole life, so what it holds across its
    /// waits is memory every idle connection pays for.
    #[test]
    fn an_idle_connection_keeps_a_small_future() {
        const MAX: usize = 1_700;
        let size = future_size(serve::<&mut tokio::net::TcpStream>);
        assert!(
            size <= MAX,
            "the connection's future is {size} bytes, more than {MAX}: something large is \
             held across an await (box what only some connections or rare moments need)"
        );
    }
}
