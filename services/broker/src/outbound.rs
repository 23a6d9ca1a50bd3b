//! Messages to a client: packet ids, the in-flight window (the client's Receive Maximum)
//! and the QoS 1 and QoS 2 acknowledgement flows (MQTT 4.3).

use crate::connection::{Close, Io, Session};
use crate::router::Outgoing;
pub use crate::session_store::Awaiting;
use crate::topic_aliases::AliasUse;
use iotcore_codec::{
    Packet, Properties, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, PublishRef, QoS,
    ReasonCode,
};
use iotcore_telemetry::metrics::mqtt;
use std::collections::HashMap;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};

/// The outbound in-flight window of one connection.
pub struct Outbound {
    inflight: HashMap<u16, (Awaiting, Outgoing)>,
    next_packet_id: u16,
    window: usize,
}

impl Outbound {
    pub fn new(window: usize) -> Outbound {
        Outbound {
            inflight: HashMap::new(),
            next_packet_id: 0,
            window: window.max(1),
        }
    }

    /// Puts back an in-flight message of a session read from the store.
    pub fn restore(&mut self, packet_id: u16, awaiting: Awaiting, outgoing: Outgoing) {
        self.inflight.insert(packet_id, (awaiting, outgoing));
    }

    /// A resumed session's new client may accept a different number of messages.
    pub fn set_window(&mut self, window: usize) {
        self.window = window.max(1);
    }

    /// Whether another QoS 1/2 message may be sent (MQTT-4.9.0-2: at most Receive Maximum
    /// unacknowledged PUBLISH packets).
    pub fn has_room(&self) -> bool {
        self.inflight.len() < self.window
    }

    /// How many more QoS 1/2 messages may be sent now; any number of QoS 0 ones may.
    pub fn room(&self) -> usize {
        self.window.saturating_sub(self.inflight.len())
    }

    fn allocate(&mut self) -> u16 {
        // The window is at most 65,535 wide, so a free id always exists.
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id != 0 && !self.inflight.contains_key(&self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }
}

impl Session {
    /// The properties of the PUBLISH that carries `outgoing` to this client: none before
    /// MQTT 5.
    fn publish_properties(&self, outgoing: &Outgoing, now: Instant) -> Properties {
        let mut properties = Properties::default();
        if self.version == ProtocolVersion::V5 {
            let message = &outgoing.message;
            let passed = &message.properties;
            properties.payload_format_indicator = passed.payload_format_indicator;
            properties.content_type = passed.content_type.clone();
            properties.response_topic = passed.response_topic.clone();
            properties.correlation_data = passed.correlation_data.clone();
            properties.user_properties = passed.user_properties.clone();
            properties.message_expiry_interval = message.remaining_expiry(now);
            properties.subscription_identifiers = outgoing.subscription_ids.clone();
        }
        properties
    }

    /// Encodes the PUBLISH that carries `outgoing` into the write buffer, with the topic as
    /// an MQTT 5 topic alias where the client accepts them (the topic and its new alias the
    /// first time, the alias and an empty topic afterwards). The message's topic and payload
    /// are written from where they are, not copied per client. `Err` when the packet is
    /// larger than the client accepts (MQTT-3.1.2-25): nothing was written.
    fn write_publish<R, W>(
        &mut self,
        outgoing: &Outgoing,
        packet_id: Option<u16>,
        dup: bool,
        now: Instant,
        io: &mut Io<R, W>,
    ) -> Result<(), ()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let message = &outgoing.message;
        let mut properties = self.publish_properties(outgoing, now);
        let mut topic = message.topic.as_str();
        let alias = if self.version == ProtocolVersion::V5 {
            self.outbound_aliases.assign(topic)
        } else {
            AliasUse::None
        };
        match alias {
            AliasUse::None => {}
            AliasUse::New(alias) => properties.topic_alias = Some(alias),
            AliasUse::Known(alias) => {
                properties.topic_alias = Some(alias);
                topic = "";
            }
        }
        let publish = PublishRef {
            dup,
            qos: outgoing.qos,
            retain: outgoing.retain,
            topic,
            packet_id,
            payload: &message.payload,
            properties: &properties,
        };
        let written = io.send_publish(&publish, self.version, self.client_max_packet);
        if written.is_err() {
            if let AliasUse::New(alias) = alias {
                self.outbound_aliases.forget(alias);
            }
        }
        written
    }

    pub fn send_outgoing<R, W>(&mut self, outgoing: Outgoing, io: &mut Io<R, W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let now = Instant::now();
        // MQTT-3.3.2-5: an expired message is not delivered.
        if outgoing.message.expired(now) {
            self.journal_done(&outgoing);
            self.metrics.dropped(mqtt::DROP_EXPIRED);
            return;
        }
        let packet_id = match outgoing.qos {
            QoS::AtMostOnce => None,
            _ => Some(self.outbound.allocate()),
        };
        if self
            .write_publish(&outgoing, packet_id, false, now, io)
            .is_err()
        {
            // MQTT-3.1.2-25: larger than the client accepts; discarded as if delivered.
            tracing::debug!(
                topic = outgoing.message.topic,
                "message larger than the client accepts; dropped"
            );
            self.journal_done(&outgoing);
            self.metrics.dropped(mqtt::DROP_TOO_LARGE);
            return;
        }
        self.metrics.message_out(outgoing.qos as u8);
        if let Some(packet_id) = packet_id {
            let stage = match outgoing.qos {
                QoS::ExactlyOnce => Awaiting::PubRec,
                _ => Awaiting::PubAck,
            };
            if let Some(journal) = self.mailbox.journal() {
                journal.sent(&outgoing, packet_id, stage);
            }
            self.outbound.inflight.insert(packet_id, (stage, outgoing));
        }
    }

    /// Records in a persistent session's journal that a message is no longer held.
    fn journal_done(&self, outgoing: &Outgoing) {
        if let Some(journal) = self.mailbox.journal() {
            journal.done(outgoing);
        }
    }

    /// Sends every unacknowledged message again, in packet id order, after a session was
    /// resumed: PUBLISH with DUP set, or PUBREL where the PUBREC had arrived (MQTT-4.4.0-1).
    pub fn redeliver<R, W>(&mut self, io: &mut Io<R, W>)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut ids: Vec<u16> = self.outbound.inflight.keys().copied().collect();
        ids.sort_unstable();
        let now = Instant::now();
        for packet_id in ids {
            let Some((awaiting, outgoing)) = self.outbound.inflight.get(&packet_id) else {
                continue;
            };
            let packet = match awaiting {
                Awaiting::PubComp => Packet::PubRel(PubRel {
                    packet_id,
                    reason: ReasonCode::SUCCESS,
                    properties: Properties::default(),
                }),
                Awaiting::PubAck | Awaiting::PubRec => {
                    let outgoing = outgoing.clone();
                    let _ = self.write_publish(&outgoing, Some(packet_id), true, now, io);
                    continue;
                }
            };
            self.reply(&packet, io);
        }
    }

    pub fn on_puback(&mut self, ack: PubAck) -> Result<(), Close> {
        match self.outbound.inflight.get(&ack.packet_id) {
            Some((Awaiting::PubAck, _)) => {
                if let Some((_, outgoing)) = self.outbound.inflight.remove(&ack.packet_id) {
                    self.journal_done(&outgoing);
                }
                Ok(())
            }
            // A PUBACK for a QoS 2 message, or for nothing we sent.
            Some(_) => Err(Close::with(
                ReasonCode::PROTOCOL_ERROR,
                "PUBACK for a QoS 2 message",
            )),
            None => Ok(()),
        }
    }

    pub fn on_pubrec<R, W>(&mut self, rec: PubRec, io: &mut Io<R, W>) -> Result<(), Close>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let properties = Properties::default();
        match self.outbound.inflight.get_mut(&rec.packet_id) {
            Some((stage @ (Awaiting::PubRec | Awaiting::PubComp), outgoing)) => {
                // MQTT 5: a PUBREC with an error code ends the exchange (MQTT-4.3.3-4).
                if rec.reason.is_error() {
                    if let Some((_, outgoing)) = self.outbound.inflight.remove(&rec.packet_id) {
                        self.journal_done(&outgoing);
                    }
                    return Ok(());
                }
                if *stage == Awaiting::PubRec {
                    if let Some(journal) = self.mailbox.journal() {
                        journal.sent(outgoing, rec.packet_id, Awaiting::PubComp);
                    }
                }
                *stage = Awaiting::PubComp;
                let rel = PubRel {
                    packet_id: rec.packet_id,
                    reason: ReasonCode::SUCCESS,
                    properties,
                };
                self.reply(&Packet::PubRel(rel), io);
                Ok(())
            }
            Some(_) => Err(Close::with(
                ReasonCode::PROTOCOL_ERROR,
                "PUBREC for a QoS 1 message",
            )),
            None => {
                let rel = PubRel {
                    packet_id: rec.packet_id,
                    reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                    properties,
                };
                self.reply(&Packet::PubRel(rel), io);
                Ok(())
            }
        }
    }

    pub fn on_pubcomp(&mut self, comp: PubComp) -> Result<(), Close> {
        if let Some((Awaiting::PubComp, _)) = self.outbound.inflight.get(&comp.packet_id) {
            if let Some((_, outgoing)) = self.outbound.inflight.remove(&comp.packet_id) {
                self.journal_done(&outgoing);
            }
        }
        Ok(())
    }
}
