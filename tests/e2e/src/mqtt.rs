//! Real MQTT clients (rumqttc) for 3.1.1 and 5.0, each with its event loop polled in a
//! task whose events tests read from a channel.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long tests wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// An MQTT 3.1.1 client.
pub struct V311 {
    pub client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::Packet, String>>,
    /// The CONNACK's Session Present flag.
    pub session_present: bool,
}

/// The options the connect helpers use: a credential and a 30 s keep alive.
pub fn options_v311(
    addr: SocketAddr,
    client_id: &str,
    username: &str,
    password: &str,
) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_credentials(username, password);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// Connects with MQTT 3.1.1; `Err` carries the CONNACK return code of a refusal.
pub async fn connect_v311(
    addr: SocketAddr,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<V311, rumqttc::ConnectReturnCode> {
    connect_v311_with(options_v311(addr, client_id, username, password)).await
}

/// Connects with MQTT 3.1.1 and `options` (e.g. Clean Session 0).
pub async fn connect_v311_with(
    options: rumqttc::MqttOptions,
) -> Result<V311, rumqttc::ConnectReturnCode> {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
    let session_present = loop {
        match tokio::time::timeout(WAIT, eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => {
                break ack.session_present
            }
            Ok(Ok(_)) => continue,
            Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => return Err(code),
            Ok(Err(e)) => panic!("MQTT 3.1.1 connect failed: {e}"),
            Err(_) => panic!("MQTT 3.1.1 connect timed out"),
        }
    };
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(packet)) => {
                    if tx.send(Ok(packet)).is_err() {
                        return;
                    }
                }
                Ok(rumqttc::Event::Outgoing(_)) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    Ok(V311 {
        client,
        events,
        session_present,
    })
}

impl V311 {
    /// The next incoming packet, or `None` after `wait`, or `Err` when the connection ended.
    pub async fn next(&mut self, wait: Duration) -> Option<Result<rumqttc::Packet, String>> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next PUBLISH within `wait`, skipping other packets.
    pub async fn next_publish(&mut self, wait: Duration) -> Option<rumqttc::Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Ok(rumqttc::Packet::Publish(publish)) => return Some(publish),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Subscribes to `filter` and waits for the SUBACK.
    pub async fn subscribe(
        &mut self,
        filter: impl Into<String>,
        qos: rumqttc::QoS,
    ) -> rumqttc::SubAck {
        let filter = filter.into();
        if let Err(e) = self.client.subscribe(filter.as_str(), qos).await {
            panic!("subscribe to {filter}: {e}");
        }
        self.suback().await
    }

    /// The next SUBACK within [`WAIT`].
    pub async fn suback(&mut self) -> rumqttc::SubAck {
        loop {
            match self.next(WAIT).await {
                Some(Ok(rumqttc::Packet::SubAck(suback))) => return suback,
                Some(Ok(_)) => continue,
                other => panic!("no SUBACK: {other:?}"),
            }
        }
    }

    /// The next PUBACK within [`WAIT`].
    pub async fn puback(&mut self) -> rumqttc::PubAck {
        loop {
            match self.next(WAIT).await {
                Some(Ok(rumqttc::Packet::PubAck(puback))) => return puback,
                Some(Ok(_)) => continue,
                other => panic!("no PUBACK: {other:?}"),
            }
        }
    }
}

pub use rumqttc::v5::mqttbytes::v5 as v5packets;

/// An MQTT 5 client.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<v5packets::Packet, String>>,
    /// The CONNACK the broker sent.
    pub connack: v5packets::ConnAck,
}

/// The options the MQTT 5 connect helpers use: a credential and a 30 s keep alive.
pub fn options_v5(
    addr: SocketAddr,
    client_id: &str,
    username: &str,
    password: &str,
) -> rumqttc::v5::MqttOptions {
    let mut options = rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_credentials(username, password);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// Connects with MQTT 5; `Err` carries the CONNACK reason code of a refusal.
pub async fn connect_v5(
    addr: SocketAddr,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<V5, v5packets::ConnectReturnCode> {
    connect_v5_with(options_v5(addr, client_id, username, password)).await
}

/// Connects with MQTT 5 and `options` (e.g. a Session Expiry Interval).
pub async fn connect_v5_with(
    options: rumqttc::v5::MqttOptions,
) -> Result<V5, v5packets::ConnectReturnCode> {
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 64);
    let connack = loop {
        match tokio::time::timeout(WAIT, eventloop.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(v5packets::Packet::ConnAck(connack)))) => {
                break connack
            }
            Ok(Ok(_)) => continue,
            Ok(Err(rumqttc::v5::ConnectionError::ConnectionRefused(code))) => return Err(code),
            Ok(Err(e)) => panic!("MQTT 5 connect failed: {e}"),
            Err(_) => panic!("MQTT 5 connect timed out"),
        }
    };
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(packet)) => {
                    if tx.send(Ok(packet)).is_err() {
                        return;
                    }
                }
                Ok(rumqttc::v5::Event::Outgoing(_)) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    Ok(V5 {
        client,
        events,
        connack,
    })
}

impl V5 {
    pub async fn next(&mut self, wait: Duration) -> Option<Result<v5packets::Packet, String>> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    pub async fn next_publish(&mut self, wait: Duration) -> Option<v5packets::Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Ok(v5packets::Packet::Publish(publish)) => return Some(publish),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Subscribes to `filter` and waits for the SUBACK.
    pub async fn subscribe(
        &mut self,
        filter: impl Into<String>,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> v5packets::SubAck {
        let filter = filter.into();
        if let Err(e) = self.client.subscribe(filter.as_str(), qos).await {
            panic!("subscribe to {filter}: {e}");
        }
        self.suback().await
    }

    pub async fn suback(&mut self) -> v5packets::SubAck {
        loop {
            match self.next(WAIT).await {
                Some(Ok(v5packets::Packet::SubAck(suback))) => return suback,
                Some(Ok(_)) => continue,
                other => panic!("no SUBACK: {other:?}"),
            }
        }
    }

    pub async fn puback(&mut self) -> v5packets::PubAck {
        loop {
            match self.next(WAIT).await {
                Some(Ok(v5packets::Packet::PubAck(puback))) => return puback,
                Some(Ok(_)) => continue,
                other => panic!("no PUBACK: {other:?}"),
            }
        }
    }
}
