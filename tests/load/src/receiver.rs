//! The webhook receiver of a rules benchmark: a real HTTP server on loopback that answers
//! every `POST` with 200 at once and counts what it got — requests, bytes, and the envelopes
//! of single and batched deliveries (SPEC §5), de-duplicated by envelope id, with the
//! end-to-end latency from the send time a publisher stamped into the payload
//! ([`crate::wire::PublishTemplate::json`]).

use crate::client::{self, Timeline};
use crate::wire;
use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::Router;
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest request body accepted: a batch of 100 envelopes with payloads of up to 1 MiB
/// together (the rules service's bound) fits with room to spare.
const MAX_BODY: usize = 8 << 20;
/// Envelope ids remembered for de-duplication; past this many, further ids are counted
/// without the check (a run long enough to reach it is no benchmark of ours).
const MAX_TRACKED_IDS: usize = 20_000_000;

/// What the receiver counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub requests: u64,
    pub bytes: u64,
    /// Envelopes, duplicates and other runs' messages included.
    pub envelopes: u64,
    /// Envelopes of this run seen for the first time.
    pub delivered: u64,
    /// Of those, how many arrived within the measured window.
    pub delivered_measured: u64,
    /// Envelopes whose id had been received before (at-least-once redeliveries).
    pub duplicates: u64,
    /// Envelopes whose payload carries no stamp of this run (an earlier run's backlog).
    pub foreign: u64,
    /// Requests whose body was not an envelope or an array of envelopes.
    pub malformed: u64,
}

struct Tally {
    counts: Counts,
    /// Hashes of the envelope ids seen (64 bits: a collision in a few million ids has a
    /// probability below one in a million).
    seen: HashSet<u64>,
    latency: Histogram<u64>,
    last_delivery: Option<Instant>,
}

/// The running receiver, shared by its connections.
pub struct Receiver {
    timeline: Timeline,
    hasher: RandomState,
    tally: Mutex<Tally>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Stamp<'a> {
    #[serde(borrow)]
    sent_ns: Cow<'a, str>,
    #[serde(borrow)]
    run: Cow<'a, str>,
}

impl Receiver {
    /// Binds `addr` (loopback only) now, so that a port in use fails before anything is
    /// published; serves once [`Receiver::serve`] is called.
    pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "--receiver must be a loopback address, not {addr}"
        );
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} for the webhook"))
    }

    /// Serves `listener` until `stop` is cancelled.
    pub fn serve(
        listener: TcpListener,
        timeline: Timeline,
        stop: CancellationToken,
    ) -> Arc<Receiver> {
        let receiver = Arc::new(Receiver {
            timeline,
            hasher: RandomState::new(),
            tally: Mutex::new(Tally {
                counts: Counts::default(),
                seen: HashSet::new(),
                latency: client::histogram(),
                last_delivery: None,
            }),
        });
        let app = Router::new()
            .fallback(receive)
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(receiver.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                eprintln!("iotcore-load: the webhook receiver stopped: {e}");
            }
        });
        receiver
    }

    /// The counts so far, and when the last new envelope of this run arrived.
    pub fn counts(&self) -> (Counts, Option<Instant>) {
        let tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        (tally.counts, tally.last_delivery)
    }

    /// End-to-end latency of the messages sent within the measured window.
    pub fn latency(&self) -> Histogram<u64> {
        let tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        tally.latency.clone()
    }

    /// Counts one request's body received at `now`.
    fn record(&self, body: &[u8], now: Instant) {
        let timeline = &self.timeline;
        let now_nanos = nanos_since(timeline.start, now);
        let measure_from = nanos_since(timeline.start, timeline.measure_from);
        let measure_until = nanos_since(timeline.start, timeline.publish_until);
        let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
        let envelopes: Option<Vec<Envelope<'_>>> = if batch {
            serde_json::from_slice(body).ok()
        } else {
            serde_json::from_slice(body).ok().map(|e| vec![e])
        };
        let hashes: Vec<u64> = envelopes
            .iter()
            .flatten()
            .map(|e| self.hasher.hash_one(e.id.as_ref()))
            .collect();

        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        let tally = &mut *tally;
        tally.counts.requests += 1;
        tally.counts.bytes += body.len() as u64;
        let Some(envelopes) = envelopes else {
            tally.counts.malformed += 1;
            return;
        };
        for (envelope, hash) in envelopes.iter().zip(hashes) {
            tally.counts.envelopes += 1;
            let stamp = envelope
                .payload
                .and_then(|raw| serde_json::from_str::<Stamp<'_>>(raw.get()).ok())
                .and_then(|s| wire::json_stamp(&s.sent_ns, &s.run));
            let sent = match stamp {
                Some((sent, tag)) if tag == timeline.tag => sent,
                _ => {
                    tally.counts.foreign += 1;
                    continue;
                }
            };
            if tally.seen.len() < MAX_TRACKED_IDS && !tally.seen.insert(hash) {
                tally.counts.duplicates += 1;
                continue;
            }
            tally.counts.delivered += 1;
            tally.last_delivery = Some(now);
            if (measure_from..measure_until).contains(&now_nanos) {
                tally.counts.delivered_measured += 1;
            }
            if (measure_from..measure_until).contains(&sent) {
                let micros = now_nanos.saturating_sub(sent) / 1000;
                tally.latency.saturating_record(micros.max(1));
            }
        }
    }
}

fn nanos_since(start: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
}

/// Every request, whatever its method and path: counted, then answered 200.
async fn receive(State(receiver): State<Arc<Receiver>>, body: Bytes) -> StatusCode {
    receiver.record(&body, Instant::now());
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn timeline(tag: u32) -> Timeline {
        let start = Instant::now();
        Timeline {
            start,
            measure_from: start,
            publish_until: start + Duration::from_secs(3600),
            drain_until: start + Duration::from_secs(3600),
            quiet: Duration::from_millis(500),
            tag,
        }
    }

    fn envelope(id: &str, sent: u64, run: &str) -> String {
        format!(
            r#"{{"id":"{id}","rule_id":"rul_1","topic":"t","payload":{{"sent_ns":"{sent:020}","run":"{run}","pad":"x"}},"user_properties":[]}}"#
        )
    }

    #[tokio::test]
    async fn counts_single_and_batched_envelopes_once_each() {
        let listener = Receiver::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let receiver = Receiver::serve(listener, timeline(0xab), stop.clone());
        let now = Instant::now();
        receiver.record(envelope("msg_a", 1, "000000ab").as_bytes(), now);
        let batch = format!(
            "[{}, {}, {}]",
            envelope("msg_b", 2, "000000ab"),
            envelope("msg_a", 1, "000000ab"),
            envelope("msg_c", 3, "00000001"),
        );
        receiver.record(batch.as_bytes(), now);
        receiver.record(br#"{"id": "msg_d", "payload_base64": "AQI="}"#, now);
        receiver.record(b"not json", now);
        receiver.record(b"[{\"no\": \"id\"}]", now);
        let (counts, last) = receiver.counts();
        assert_eq!(counts.requests, 5);
        assert_eq!(counts.envelopes, 5);
        assert_eq!(counts.delivered, 2);
        assert_eq!(counts.delivered_measured, 2);
        assert_eq!(counts.duplicates, 1);
        assert_eq!(counts.foreign, 2);
        assert_eq!(counts.malformed, 2);
        assert_eq!(last, Some(now));
        assert_eq!(receiver.latency().len(), 2);
        stop.cancel();
    }

    #[tokio::test]
    async fn answers_200_over_http() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = Receiver::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let receiver = Receiver::serve(listener, timeline(7), stop.clone());
        let body = envelope("msg_x", 5, "00000007");
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST /hook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(receiver.counts().0.delivered, 1);
        assert!(Receiver::bind("10.0.0.1:80".parse().unwrap())
            .await
            .is_err());
        stop.cancel();
    }
}
