//! PUBLISH from a client: topic aliases, the ACL, QoS 1/2 acknowledgement after the
//! message is safely routed (SPEC §3.1, §4.2, §5).

use crate::connection::{Close, Io, Session};
use crate::limits::Refusal;
use crate::publish;
use crate::router::Writes;
use iotcore_codec::{
    Packet, Properties, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish, QoS, ReasonCode,
};
use iotcore_telemetry::metrics::mqtt;
use iotcore_topic::TopicName;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};

impl Session {
    pub async fn on_publish<R, W>(
        &mut self,
        mut publish: Publish,
        io: &mut Io<R, W>,
    ) -> Result<(), Close>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        self.metrics.message_in(publish.qos as u8);
        // MQTT-3.3.4-6: Subscription Identifiers are for the server to send.
        if !publish.properties.subscription_identifiers.is_empty() {
            return Err(Close::with(
                ReasonCode::PROTOCOL_ERROR,
                "subscription identifier in a PUBLISH from the client",
            ));
        }
        self.resolve_topic_alias(&mut publish)?;
        TopicName::check(&publish.topic, self.shared.limits)
            .map_err(|_| Close::with(ReasonCode::TOPIC_NAME_INVALID, "invalid topic name"))?;
        let packet_id = publish.packet_id.unwrap_or(0);
        if publish.qos == QoS::ExactlyOnce {
            if self.incoming_qos2.contains(&packet_id) {
                // A retransmission of a QoS 2 message already routed: acknowledge only.
                self.ack(publish.qos, packet_id, ReasonCode::SUCCESS, io);
                return Ok(());
            }
            // MQTT-3.3.4-7: the client may not exceed the Receive Maximum we announced.
            if self.incoming_qos2.len() >= usize::from(self.shared.config.inflight_window.max(1)) {
                return Err(Close::with(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "too many QoS 2 messages in flight",
                ));
            }
        }
        if let Err(refusal) = self.charge_rates(publish.topic.len() + publish.payload.len()) {
            let tenant = self.accepted.slot.tenant();
            tenant.refused(refusal);
            return match (refusal, self.version, publish.qos) {
                // One client sending too fast is told so and disconnected (MQTT 5 0x96 is a
                // DISCONNECT reason), whatever the QoS.
                (Refusal::ClientPublishRate, ..) => {
                    Err(Close::with(refusal.reason_code(), refusal.as_str()))
                }
                // At a tenant quota there is nothing to answer to QoS 0; it is dropped.
                (_, _, QoS::AtMostOnce) => {
                    tenant.dropped_quota.inc();
                    Ok(())
                }
                (_, ProtocolVersion::V5, qos) => {
                    self.ack(qos, packet_id, refusal.reason_code(), io);
                    Ok(())
                }
                // MQTT 3.1.1 has no way to say "not accepted": the connection is closed, so
                // the client sends the message again after reconnecting instead of losing it.
                _ => Err(Close::silently(refusal.as_str())),
            };
        }
        let principal = &self.accepted.principal;
        let acl = self.accepted.acl.current();
        if !publish::allowed(&self.shared, principal, &acl, &publish.topic).await {
            tracing::debug!(topic = publish.topic, "publish denied");
            self.metrics.dropped(mqtt::DROP_NOT_AUTHORIZED);
            // SPEC §4.2: a client that keeps publishing where it may not is disconnected.
            self.accepted.denied_publishes = self.accepted.denied_publishes.saturating_add(1);
            let max = self.shared.config.max_denied_publishes;
            if max > 0 && self.accepted.denied_publishes >= max {
                return Err(Close::with(
                    ReasonCode::NOT_AUTHORIZED,
                    "too many denied publishes",
                ));
            }
            self.ack(publish.qos, packet_id, ReasonCode::NOT_AUTHORIZED, io);
            return Ok(());
        }
        let message = publish::message_from(
            publish.topic,
            publish.payload,
            publish.qos,
            publish.retain,
            publish.properties,
            Some(self.id),
            principal,
        );
        let qos = message.qos;
        // A message read together with more packets is part of a burst: it goes through the
        // subscribers' queues, whose tasks write many messages with one write.
        let writes = if io.rbuf.is_empty() {
            Writes::Direct
        } else {
            Writes::Queued
        };
        match publish::publish_with(
            &self.shared,
            &self.routes,
            Some(principal),
            Arc::new(message),
            writes,
        )
        .await
        {
            Ok(outcome) => {
                if let (None, Some(full)) = (&self.full_queue, outcome.full) {
                    // Back-pressure (SPEC §3.1 still holds: what did not fit was dropped
                    // and counted): read no more from this client until the subscriber
                    // made room, or for a short while.
                    let deadline = tokio::time::Instant::now() + crate::mailbox::ROOM_WAIT;
                    self.full_queue = Some((full, deadline));
                }
                if qos == QoS::ExactlyOnce {
                    self.incoming_qos2.insert(packet_id);
                    self.journal_incoming_qos2();
                }
                self.ack(qos, packet_id, ReasonCode::SUCCESS, io);
                Ok(())
            }
            // Not acknowledged as a success: the client must send it again.
            Err(e) => {
                tracing::warn!(error = %e, "publish not accepted");
                match self.version {
                    ProtocolVersion::V5 => {
                        self.ack(
                            qos,
                            packet_id,
                            ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                            io,
                        );
                        Ok(())
                    }
                    _ => Err(Close::silently("rule matches could not be stored")),
                }
            }
        }
    }

    /// Charges one PUBLISH of `bytes` bytes to the client's and its tenant's rates
    /// (SPEC §3.5, §7.3).
    fn charge_rates(&mut self, bytes: usize) -> Result<(), Refusal> {
        let now = Instant::now();
        let rate = self.shared.config.max_publishes_per_second_per_client;
        if !self.publish_rate.take(rate, 1, now) {
            return Err(Refusal::ClientPublishRate);
        }
        self.accepted.slot.tenant().charge_publish(bytes, now)
    }

    /// MQTT 5 topic aliases from the client: an alias with a topic sets it, an alias alone
    /// uses it (MQTT-3.3.2-10..12). Bounded by the Topic Alias Maximum we announced.
    fn resolve_topic_alias(&mut self, publish: &mut Publish) -> Result<(), Close> {
        let Some(alias) = publish.properties.topic_alias.take() else {
            return Ok(());
        };
        if alias == 0 || alias > self.shared.config.topic_alias_maximum {
            return Err(Close::with(
                ReasonCode::TOPIC_ALIAS_INVALID,
                "topic alias out of range",
            ));
        }
        if publish.topic.is_empty() {
            match self
                .topic_aliases
                .as_ref()
                .and_then(|known| known.get(&alias))
            {
                Some(topic) => publish.topic = topic.clone(),
                None => {
                    return Err(Close::with(
                        ReasonCode::PROTOCOL_ERROR,
                        "unknown topic alias",
                    ))
                }
            }
        } else {
            self.topic_aliases
                .get_or_insert_with(Box::default)
                .insert(alias, publish.topic.clone());
        }
        Ok(())
    }

    pub fn on_pubrel<R, W>(&mut self, rel: PubRel, io: &mut Io<R, W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let reason = if self.incoming_qos2.remove(&rel.packet_id) {
            self.journal_incoming_qos2();
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        let properties = Properties::default();
        self.reply(
            &Packet::PubComp(PubComp {
                packet_id: rel.packet_id,
                reason,
                properties,
            }),
            io,
        );
    }

    /// A persistent session keeps its incoming QoS 2 packet ids across a restart, so a
    /// retransmitted PUBLISH is still not routed twice (MQTT-4.3.3-10).
    fn journal_incoming_qos2(&self) {
        if let Some(journal) = self.mailbox.journal() {
            journal.incoming_qos2(&self.incoming_qos2);
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
}
