//! A real HTTP server that plays a tenant's webhook endpoint: it records every request and
//! answers with scripted status codes.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// One request as the webhook received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Checks `X-Iotcore-Signature: t=…,v1=…` the way a receiver would: HMAC-SHA256 of
    /// "{t}.{body}" with the shared secret, compared in constant time.
    pub fn signature_is_valid(&self, secret: &str) -> bool {
        let Some(header) = self.header("x-iotcore-signature") else {
            return false;
        };
        let (mut t, mut v1) = (None, None);
        for part in header.split(',') {
            match part.split_once('=') {
                Some(("t", value)) => t = Some(value),
                Some(("v1", value)) => v1 = Some(value),
                _ => {}
            }
        }
        let (Some(t), Some(v1)) = (t, v1) else {
            return false;
        };
        let expected: Option<Vec<u8>> = (0..v1.len())
            .step_by(2)
            .map(|i| {
                v1.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        let (Some(expected), Ok(mut mac)) =
            (expected, Hmac::<Sha256>::new_from_slice(secret.as_bytes()))
        else {
            return false;
        };
        mac.update(t.as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        mac.verify_slice(&expected).is_ok()
    }
}

#[derive(Clone)]
struct Script {
    answers: Arc<Mutex<VecDeque<u16>>>,
    received: mpsc::UnboundedSender<Received>,
}

/// A webhook receiver listening on a loopback port.
pub struct Webhook {
    pub url: String,
    answers: Arc<Mutex<VecDeque<u16>>>,
    received: mpsc::UnboundedReceiver<Received>,
}

impl Webhook {
    /// Starts a receiver that answers 200 to everything.
    pub async fn start() -> Webhook {
        let (tx, received) = mpsc::unbounded_channel();
        let answers = Arc::new(Mutex::new(VecDeque::new()));
        let script = Script {
            answers: answers.clone(),
            received: tx,
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(script);
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(e) => panic!("binding the webhook receiver: {e}"),
        };
        let url = format!(
            "http://{}/hook",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Webhook {
            url,
            answers,
            received,
        }
    }

    /// The next requests are answered with these statuses, then 200 again.
    pub fn answer_with(&self, statuses: &[u16]) {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(statuses);
    }

    /// The next request, waiting up to `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.received.recv())
            .await
            .ok()
            .flatten()
    }

    /// Whether a request arrives within `wait` (for asserting that nothing arrives).
    pub async fn nothing_within(&mut self, wait: Duration) -> bool {
        self.next(wait).await.is_none()
    }
}

async fn receive(State(script): State<Script>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = script
        .answers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front()
        .unwrap_or(200);
    let _ = script.received.send(Received {
        headers,
        body,
        status,
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}
