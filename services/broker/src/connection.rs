//! One MQTT connection: bytes ↔ packets, and each packet applied to the session.
//!
//! The task owns its socket, its read and write buffers, its subscriptions and its
//! in-flight window. A PUBLISH flows one way: socket → codec → ACL (decided at CONNECT) →
//! router (this namespace's trie) → subscribers' bounded mailboxes, and beside the router,
//! rule matches → durable queue. Nothing here blocks on another connection.

use crate::acl::Acl;
use crate::broker::Shared;
use crate::handshake::{self, Accepted};
use crate::router::{ConnectionId, Mailbox, Message, NamespaceRoutes, Outgoing, Subscriber};
use crate::rules::deliveries_for;
use bytes::BytesMut;
use iotcore_codec::{
    decode, Disconnect, Packet, Properties, ProtocolVersion, PubAck, PubComp, PubRec, Publish, QoS,
    ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use iotcore_topic::{Subscription, TopicFilter, TopicName};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

/// Why a connection ends; MQTT 5 clients are told with a DISCONNECT when there is a reason.
#[derive(Debug)]
struct Close {
    reason: Option<ReasonCode>,
    why: &'static str,
}

impl Close {
    fn with(reason: ReasonCode, why: &'static str) -> Close {
        Close {
            reason: Some(reason),
            why,
        }
    }
    fn silently(why: &'static str) -> Close {
        Close { reason: None, why }
    }
}

/// Serves one accepted connection until it ends.
pub async fn serve<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connection_id = shared.router.next_connection_id();
    let span = tracing::info_span!(
        "mqtt",
        connection_id,
        %peer,
        tenant_id = tracing::field::Empty,
        client_id = tracing::field::Empty,
    );
    async move {
        let (reader, writer) = tokio::io::split(stream);
        let mut io = Io {
            reader,
            writer,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
        };
        let connect_timeout = Duration::from_secs(shared.config.connect_timeout_secs);
        let connect = match tokio::time::timeout(connect_timeout, io.read_connect(&shared)).await {
            Ok(Ok(connect)) => connect,
            Ok(Err(why)) => {
                tracing::debug!(why, "connection closed before CONNECT");
                return;
            }
            Err(_) => {
                tracing::debug!("no CONNECT in time");
                return;
            }
        };
        let version = connect.protocol;
        let accepted = match handshake::accept(&shared, &connect).await {
            Ok(accepted) => accepted,
            Err(refused) => {
                tracing::info!(reason = refused.reason, "CONNECT refused");
                let _ = io.send(&handshake::refusal(&refused, version), version, None);
                let _ = io.flush().await;
                return;
            }
        };
        let span = tracing::Span::current();
        span.record(
            "tenant_id",
            tracing::field::display(&accepted.principal.tenant_id),
        );
        span.record("client_id", accepted.client_id.as_str());
        if connect.will.is_some() {
            tracing::debug!("will message accepted but not published in this version");
        }
        let routes = shared.routes_for(&accepted.principal).await;
        let (mailbox, outbound) = mpsc::channel(shared.config.outbound_queue.max(1));
        let takeover = shared.sessions.claim(
            &accepted.principal.namespace,
            &accepted.client_id,
            connection_id,
        );
        if io
            .send(
                &handshake::connack(&shared, version, &accepted),
                version,
                None,
            )
            .is_err()
            || io.flush().await.is_err()
        {
            shared.sessions.release(
                &accepted.principal.namespace,
                &accepted.client_id,
                connection_id,
            );
            return;
        }
        tracing::info!(protocol = ?version, "connected");
        let client_max_packet = connect.properties.maximum_packet_size;
        let mut session = Session {
            id: connection_id,
            version,
            acl: Acl::for_principal(&accepted.principal),
            accepted,
            routes,
            shared: shared.clone(),
            mailbox,
            subscriptions: HashMap::new(),
            inflight: HashMap::new(),
            next_packet_id: 0,
            incoming_qos2: HashSet::new(),
            client_max_packet,
        };
        let close = session.run(&mut io, outbound, takeover).await;
        tracing::info!(why = close.why, "disconnected");
        if version == ProtocolVersion::V5 {
            if let Some(reason) = close.reason {
                let packet = Packet::Disconnect(Disconnect {
                    reason,
                    properties: Properties::default(),
                });
                if io.send(&packet, version, client_max_packet).is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), io.flush()).await;
                }
            }
        }
        session.end();
    }
    .instrument(span)
    .await
}

/// The socket halves and their buffers.
struct Io<R, W> {
    reader: R,
    writer: W,
    rbuf: BytesMut,
    wbuf: BytesMut,
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
    async fn fill(&mut self) -> Result<usize, &'static str> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(4096);
        }
        self.reader
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|_| "read error")
    }

    /// Encodes `packet` into the write buffer. A packet larger than the client's Maximum
    /// Packet Size is not sent (MQTT-3.1.2-25) and `Err` is returned.
    fn send(
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

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.writer.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            self.writer.flush().await?;
        }
        // Do not keep a large buffer around on an idle connection.
        if self.wbuf.capacity() > 64 * 1024 {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }
}

/// The state of one connected client.
struct Session {
    id: ConnectionId,
    version: ProtocolVersion,
    accepted: Accepted,
    acl: Acl,
    routes: Arc<NamespaceRoutes>,
    shared: Arc<Shared>,
    /// Our own mailbox, for retained messages sent on subscribe.
    mailbox: Mailbox,
    subscriptions: HashMap<String, TopicFilter>,
    /// Outbound QoS 1 messages awaiting PUBACK, by packet id.
    inflight: HashMap<u16, Outgoing>,
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids between PUBREC and PUBREL; a PUBLISH that repeats one is
    /// not routed again (MQTT-4.3.3-9 / exactly once).
    incoming_qos2: HashSet<u16>,
    client_max_packet: Option<u32>,
}

impl Session {
    async fn run<R, W>(
        &mut self,
        io: &mut Io<R, W>,
        mut outbound: mpsc::Receiver<Outgoing>,
        takeover: tokio_util::sync::CancellationToken,
    ) -> Close
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
        let max_packet = self.shared.config.max_packet_size as usize;
        let window = usize::from(self.shared.config.inflight_window.max(1));
        loop {
            let can_send = self.inflight.len() < window;
            tokio::select! {
                read = io.fill() => {
                    match read {
                        Ok(0) => return Close::silently("closed by client"),
                        Ok(_) => {}
                        Err(why) => return Close::silently(why),
                    }
                    deadline = Instant::now() + keep_alive.unwrap_or(far_future);
                    loop {
                        match decode(&mut io.rbuf, self.version, max_packet) {
                            Ok(Some(packet)) => {
                                if let Err(close) = self.handle(packet, io).await {
                                    return close;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::info!(error = %e, "malformed packet");
                                return Close::with(e.reason_code(), "malformed packet");
                            }
                        }
                    }
                    if io.flush().await.is_err() {
                        return Close::silently("write error");
                    }
                }
                Some(outgoing) = outbound.recv(), if can_send => {
                    self.send_outgoing(outgoing, io);
                    // Batch what is already queued into one write.
                    while self.inflight.len() < window && io.wbuf.len() < 64 * 1024 {
                        match outbound.try_recv() {
                            Ok(outgoing) => self.send_outgoing(outgoing, io),
                            Err(_) => break,
                        }
                    }
                    if io.flush().await.is_err() {
                        return Close::silently("write error");
                    }
                }
                _ = sleep_until(deadline), if keep_alive.is_some() => {
                    return Close::with(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep alive timeout");
                }
                _ = takeover.cancelled() => {
                    return Close::with(ReasonCode::SESSION_TAKEN_OVER, "session taken over");
                }
                _ = self.shared.shutdown.cancelled() => {
                    return Close::with(ReasonCode::SERVER_SHUTTING_DOWN, "server shutting down");
                }
            }
        }
    }

    async fn handle<R, W>(&mut self, packet: Packet, io: &mut Io<R, W>) -> Result<(), Close>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, io).await,
            Packet::PubAck(ack) => {
                self.inflight.remove(&ack.packet_id);
                Ok(())
            }
            Packet::PubRel(rel) => {
                let reason = if self.incoming_qos2.remove(&rel.packet_id) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                let comp = Packet::PubComp(PubComp {
                    packet_id: rel.packet_id,
                    reason,
                    properties: Properties::default(),
                });
                self.reply(&comp, io);
                Ok(())
            }
            Packet::Subscribe(subscribe) => {
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
            Packet::Disconnect(_) => Err(Close::silently("DISCONNECT from client")),
            // The broker never sends QoS 2 in this version, so PUBREC/PUBCOMP from a client
            // answer nothing of ours: a protocol error.
            Packet::PubRec(_) | Packet::PubComp(_) => Err(Close::with(
                ReasonCode::PROTOCOL_ERROR,
                "unexpected PUBREC or PUBCOMP",
            )),
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

    fn reply<R, W>(&self, packet: &Packet, io: &mut Io<R, W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let _ = io.send(packet, self.version, self.client_max_packet);
    }

    async fn on_publish<R, W>(&mut self, publish: Publish, io: &mut Io<R, W>) -> Result<(), Close>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if publish.properties.topic_alias.is_some() {
            // CONNACK announced Topic Alias Maximum 0 (MQTT-3.3.2-9).
            return Err(Close::with(
                ReasonCode::TOPIC_ALIAS_INVALID,
                "topic alias not allowed",
            ));
        }
        let topic = TopicName::parse(&publish.topic, self.shared.limits)
            .map_err(|_| Close::with(ReasonCode::TOPIC_NAME_INVALID, "invalid topic name"))?;
        let packet_id = publish.packet_id.unwrap_or(0);
        if publish.qos == QoS::ExactlyOnce && self.incoming_qos2.contains(&packet_id) {
            // A retransmission of a QoS 2 message already routed: acknowledge only.
            self.ack(publish.qos, packet_id, ReasonCode::SUCCESS, io);
            return Ok(());
        }
        if !self.may_publish(topic.as_str()).await {
            tracing::debug!(topic = topic.as_str(), "publish denied");
            self.ack(publish.qos, packet_id, ReasonCode::NOT_AUTHORIZED, io);
            return Ok(());
        }
        let message = Arc::new(Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            content_type: publish.properties.content_type,
            payload_format_indicator: publish.properties.payload_format_indicator,
            user_properties: publish.properties.user_properties,
            origin: Some(self.id),
            origin_registry: self.origin_registry(),
        });
        let durable = self.enqueue_rule_matches(&message).await;
        if durable.is_err() {
            // Not acknowledged as a success: the client must send it again.
            return match self.version {
                ProtocolVersion::V5 => {
                    self.ack(
                        message.qos,
                        packet_id,
                        ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                        io,
                    );
                    Ok(())
                }
                _ => Err(Close::silently("rule matches could not be stored")),
            };
        }
        if message.retain {
            self.routes.retain(&message);
        }
        self.routes.route(&message);
        if message.qos == QoS::ExactlyOnce {
            if self.incoming_qos2.len() >= usize::from(self.shared.config.inflight_window.max(1)) {
                return Err(Close::with(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "too many QoS 2 messages in flight",
                ));
            }
            self.incoming_qos2.insert(packet_id);
        }
        self.ack(message.qos, packet_id, ReasonCode::SUCCESS, io);
        Ok(())
    }

    /// The ACL decision for a PUBLISH, including the registry scope of registry clients.
    async fn may_publish(&self, topic: &str) -> bool {
        if !self.acl.allows_publish(topic) {
            return false;
        }
        match self.acl.scoped_device(topic) {
            None => true,
            Some(Err(())) => false,
            Some(Ok(device)) => {
                let registry = self
                    .shared
                    .store
                    .device_registry(&self.accepted.principal.tenant_id, &device)
                    .await;
                matches!(registry, Ok(Some(r)) if Some(&r) == self.acl.registry_scope.as_ref())
            }
        }
    }

    /// Makes the rule matches of `message` durable before the publish is acknowledged
    /// (QoS 1/2), or hands them to the writer without waiting (QoS 0).
    async fn enqueue_rule_matches(&self, message: &Message) -> Result<(), ()> {
        let Some(index) = self.routes.rule_index() else {
            return Ok(());
        };
        let rules = index.matching(message);
        if rules.is_empty() {
            return Ok(());
        }
        let tenant = &self.accepted.principal.tenant_id;
        let device = handshake::device_of(&self.accepted.principal);
        let deliveries = deliveries_for(tenant, device, rules, message, chrono::Utc::now());
        if message.qos == QoS::AtMostOnce {
            if !self.shared.rules.enqueue_best_effort(deliveries) {
                tracing::warn!("rule writer saturated; QoS 0 rule matches dropped");
            }
            return Ok(());
        }
        self.shared
            .rules
            .enqueue_durable(deliveries)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "publish not acknowledged");
            })
    }

    fn origin_registry(&self) -> Option<iotcore_store::RegistryId> {
        use iotcore_store::auth::PrincipalKind;
        match &self.accepted.principal.kind {
            PrincipalKind::Device { registry_id, .. } | PrincipalKind::Registry { registry_id } => {
                Some(registry_id.clone())
            }
            PrincipalKind::Broker { .. } => None,
        }
    }

    /// PUBACK or PUBREC for an inbound publish. MQTT 3.x has no reason codes: a denied
    /// publish is acknowledged and dropped (SPEC §4.2).
    fn ack<R, W>(&self, qos: QoS, packet_id: u16, reason: ReasonCode, io: &mut Io<R, W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let properties = Properties::default();
        let packet = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Packet::PubAck(PubAck {
                packet_id,
                reason,
                properties,
            }),
            QoS::ExactlyOnce => Packet::PubRec(PubRec {
                packet_id,
                reason,
                properties,
            }),
        };
        self.reply(&packet, io);
    }

    fn on_subscribe<R, W>(&mut self, subscribe: Subscribe, io: &mut Io<R, W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let v5 = self.version == ProtocolVersion::V5;
        let failure = |code: ReasonCode| if v5 { code } else { ReasonCode(0x80) };
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for (raw, options) in &subscribe.filters {
            let reason = match TopicFilter::parse_subscription(raw, self.shared.limits) {
                Err(_) => failure(ReasonCode::TOPIC_FILTER_INVALID),
                Ok(Subscription {
                    share_group: Some(_),
                    ..
                }) => failure(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED),
                Ok(Subscription { filter, .. }) if !self.acl.allows_subscribe(filter.as_str()) => {
                    failure(ReasonCode::NOT_AUTHORIZED)
                }
                Ok(Subscription { .. })
                    if !self.subscriptions.contains_key(raw)
                        && self.subscriptions.len() >= self.shared.config.max_subscriptions =>
                {
                    failure(ReasonCode::QUOTA_EXCEEDED)
                }
                Ok(Subscription { filter, .. }) => {
                    // Outbound delivery is at most QoS 1 in this version.
                    let qos = options.qos.min(QoS::AtLeastOnce);
                    let subscriber = Subscriber {
                        mailbox: self.mailbox.clone(),
                        qos,
                        no_local: options.no_local,
                        registry_scope: self.acl.registry_scope.clone(),
                    };
                    let existed = self
                        .subscriptions
                        .insert(raw.clone(), filter.clone())
                        .is_some();
                    self.routes.subscribe(&filter, self.id, subscriber);
                    // Retain Handling: 0 always, 1 only for a new subscription, 2 never.
                    if options.retain_handling == 0 || (options.retain_handling == 1 && !existed) {
                        retained.push((filter, qos));
                    }
                    ReasonCode(qos as u8)
                }
            };
            reasons.push(reason);
        }
        let suback = Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reasons,
            properties: Properties::default(),
        });
        self.reply(&suback, io);
        // MQTT-3.3.1-6: retained messages follow the SUBACK, with RETAIN set.
        for (filter, qos) in retained {
            for message in self.routes.retained_matching(filter.as_str()) {
                if let Some(scope) = &self.acl.registry_scope {
                    if message.topic.starts_with("$devices/")
                        && message.origin_registry.as_ref() != Some(scope)
                    {
                        continue;
                    }
                }
                let qos = message.qos.min(qos);
                let _ = self.mailbox.try_send(Outgoing {
                    message,
                    qos,
                    retain: true,
                });
            }
        }
    }

    fn on_unsubscribe<R, W>(&mut self, unsubscribe: Unsubscribe, io: &mut Io<R, W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for raw in &unsubscribe.filters {
            let existed = match self.subscriptions.remove(raw) {
                Some(filter) => self.routes.unsubscribe(filter.as_str(), self.id),
                None => false,
            };
            reasons.push(if existed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        if self.version != ProtocolVersion::V5 {
            reasons.clear();
        }
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reasons,
            properties: Properties::default(),
        });
        self.reply(&unsuback, io);
    }

    fn send_outgoing<R, W>(&mut self, outgoing: Outgoing, io: &mut Io<R, W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let packet_id = match outgoing.qos {
            QoS::AtMostOnce => None,
            _ => Some(self.allocate_packet_id()),
        };
        let message = &outgoing.message;
        let mut properties = Properties::default();
        if self.version == ProtocolVersion::V5 {
            properties.content_type = message.content_type.clone();
            properties.payload_format_indicator = message.payload_format_indicator;
            properties.user_properties = message.user_properties.clone();
        }
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: outgoing.qos,
            retain: outgoing.retain,
            topic: message.topic.clone(),
            packet_id,
            payload: message.payload.clone(),
            properties,
        });
        if io
            .send(&publish, self.version, self.client_max_packet)
            .is_err()
        {
            tracing::debug!(
                topic = message.topic,
                "message larger than the client accepts; dropped"
            );
            return;
        }
        if let Some(packet_id) = packet_id {
            self.inflight.insert(packet_id, outgoing);
        }
    }

    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id != 0 && !self.inflight.contains_key(&self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }

    /// Removes every trace of the connection from the shared state.
    fn end(self) {
        for filter in self.subscriptions.values() {
            self.routes.unsubscribe(filter.as_str(), self.id);
        }
        let principal = &self.accepted.principal;
        self.shared
            .sessions
            .release(&principal.namespace, &self.accepted.client_id, self.id);
    }
}
