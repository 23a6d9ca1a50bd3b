//! A raw-socket MQTT client: packets encoded by the codec (or bytes written by hand where
//! the point is that they are malformed), and every reason code the broker answers with
//! visible to the test. Client libraries hide failure reason codes behind errors that end
//! their connection; this one does not.

use crate::mqtt::WAIT;
use crate::Device;
use bytes::BytesMut;
use iotcore_codec::{
    decode, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client that writes raw bytes and reads packets.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
    packet_id: u16,
}

impl Raw {
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        Raw {
            stream,
            buf: BytesMut::new(),
            version,
            packet_id: 0,
        }
    }

    /// Connects as `device`, with its id as client id, and expects success.
    pub async fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        device: &Device,
        keep_alive: u16,
    ) -> Raw {
        Raw::connect_as(addr, version, &device.id, device, keep_alive).await
    }

    /// Connects with the credential of `device` and another client id.
    pub async fn connect_as(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
        device: &Device,
        keep_alive: u16,
    ) -> Raw {
        let connect = Raw::connect_packet(version, client_id, device, keep_alive);
        let (raw, connack) = Raw::handshake(addr, connect).await;
        match connack {
            Some(Packet::ConnAck(connack)) => assert_eq!(connack.code, 0, "CONNACK"),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    /// A CONNECT for `device` (clean start, no will), for tests to adjust.
    pub fn connect_packet(
        version: ProtocolVersion,
        client_id: &str,
        device: &Device,
        keep_alive: u16,
    ) -> Connect {
        Connect {
            protocol: version,
            clean_start: true,
            keep_alive,
            client_id: client_id.to_owned(),
            will: None,
            username: Some(device.id.clone()),
            password: Some(device.password.clone().into_bytes().into()),
            properties: Properties::default(),
        }
    }

    /// Sends `connect` and returns the connection with the broker's answer (`None` when
    /// it closed without one).
    pub async fn handshake(addr: SocketAddr, connect: Connect) -> (Raw, Option<Packet>) {
        let mut raw = Raw::open(addr, connect.protocol).await;
        raw.send(&Packet::Connect(connect)).await;
        let answer = raw.packet().await;
        (raw, answer)
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out).expect("encode");
        self.write(&out).await;
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, or `None` when the broker closed the connection.
    pub async fn packet(&mut self) -> Option<Packet> {
        loop {
            if let Ok(Some(packet)) = decode(&mut self.buf, self.version, 1 << 20) {
                return Some(packet);
            }
            match tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("the broker neither answered nor closed the connection"),
            }
        }
    }
}

impl Raw {
    /// Publishes at QoS 1 and returns the PUBACK's reason code.
    pub async fn publish_qos1(&mut self, topic: &str, payload: &[u8]) -> ReasonCode {
        self.publish_qos1_with(topic, payload, false).await
    }

    /// Publishes a retained message at QoS 1 and returns the PUBACK's reason code.
    pub async fn publish_qos1_retained(&mut self, topic: &str, payload: &[u8]) -> ReasonCode {
        self.publish_qos1_with(topic, payload, true).await
    }

    async fn publish_qos1_with(&mut self, topic: &str, payload: &[u8], retain: bool) -> ReasonCode {
        self.packet_id = self.packet_id.wrapping_add(1).max(1);
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain,
            topic: topic.to_owned(),
            packet_id: Some(self.packet_id),
            payload: bytes::Bytes::copy_from_slice(payload),
            properties: Properties::default(),
        });
        self.send(&publish).await;
        loop {
            match self.packet().await {
                Some(Packet::PubAck(ack)) if ack.packet_id == self.packet_id => return ack.reason,
                Some(_) => continue,
                None => panic!("connection closed while waiting for PUBACK"),
            }
        }
    }

    /// Subscribes to one filter at QoS 1 and returns the SUBACK's reason code.
    pub async fn subscribe_qos1(&mut self, filter: &str) -> ReasonCode {
        self.packet_id = self.packet_id.wrapping_add(1).max(1);
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        };
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: self.packet_id,
            filters: vec![(filter.to_owned(), options)],
            properties: Properties::default(),
        });
        self.send(&subscribe).await;
        loop {
            match self.packet().await {
                Some(Packet::SubAck(ack)) if ack.packet_id == self.packet_id => {
                    return ack.reasons.first().copied().unwrap_or(ReasonCode(0xff))
                }
                Some(_) => continue,
                None => panic!("connection closed while waiting for SUBACK"),
            }
        }
    }
}
