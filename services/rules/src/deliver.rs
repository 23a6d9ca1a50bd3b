//! Sending one delivery, or one batch of a rule's deliveries, to its webhook over HTTP and
//! classifying the answer (SPEC §5).

use crate::destination::{self, DestinationError, GuardedResolver};
use crate::envelope;
use crate::signature;
use iotcore_store::deliveries::{ClaimedDelivery, Webhook};
use iotcore_store::{MessageId, RuleId};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};
use std::error::Error as _;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// Longest last-error text recorded; errors are for people, not a place to store bodies.
const MAX_ERROR_LEN: usize = 200;
/// At most this much of a response body is read (and discarded), so that the connection
/// can be reused without letting an endpoint make us buffer without bound.
const MAX_DRAINED_BODY: usize = 64 * 1024;

/// What became of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The webhook answered 2xx.
    Delivered,
    /// Worth trying again later: connection error, timeout, 408, 429 or 5xx.
    Retry {
        error: String,
        /// What the endpoint asked for with `Retry-After` (in seconds), if anything.
        retry_after: Option<Duration>,
    },
    /// Will never succeed as configured (other 4xx, redirects, a bad URL or header).
    Reject { error: String },
}

/// Sends deliveries; one per process, sharing a connection pool across rules.
#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    allow_private_destinations: bool,
}

impl Deliverer {
    /// A deliverer; unless `allow_private_destinations`, every destination address is
    /// checked by the SSRF guard ([`destination`]) right before it is connected to.
    pub fn new(allow_private_destinations: bool) -> Result<Deliverer, reqwest::Error> {
        let mut builder = reqwest::Client::builder();
        if !allow_private_destinations {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        let client = builder
            // A redirect would send the message (and its signature) somewhere the tenant did
            // not configure, and around the destination check.
            .redirect(reqwest::redirect::Policy::none())
            // Environment proxies would hide the real destination from the SSRF guard.
            .no_proxy()
            .user_agent(concat!("iotcore-rules/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer {
            client,
            allow_private_destinations,
        })
    }

    /// Makes one attempt at delivering `delivery`. Never panics; every failure is an
    /// [`Outcome`] whose error text carries neither the secret nor any request header.
    pub async fn deliver(&self, delivery: &ClaimedDelivery) -> Outcome {
        self.deliver_batch(std::slice::from_ref(delivery)).await
    }

    /// Makes one attempt at delivering `deliveries`, all of one rule, in one request: a
    /// JSON array of their envelopes when the rule batches (`batch_max_messages` above 1),
    /// otherwise the single envelope of the one delivery. The outcome is the batch's: the
    /// endpoint accepts or refuses the request as a whole.
    pub async fn deliver_batch(&self, deliveries: &[ClaimedDelivery]) -> Outcome {
        let Some(first) = deliveries.first() else {
            return Outcome::Delivered;
        };
        let webhook = &first.webhook;
        let batched = webhook.batch_max_messages > 1;
        if !batched && deliveries.len() > 1 {
            return reject("several messages for a rule that does not batch");
        }
        let url = match Url::parse(&webhook.url) {
            Ok(url) => url,
            Err(_) => return reject("webhook URL is not a valid URL"),
        };
        if !matches!(url.scheme(), "http" | "https") {
            return reject("webhook URL scheme must be http or https");
        }
        // SSRF: names are checked by the client's resolver as they are connected to; IP
        // literals never reach a resolver, so they are checked here.
        if !self.allow_private_destinations {
            let host = url.host_str().unwrap_or_default();
            if let Err(e) = destination::check_literal(host) {
                return destination_refused(e);
            }
        }
        let body = if batched {
            envelope::batch_body(deliveries)
        } else {
            envelope::body(first)
        };
        let Ok(body) = body else {
            return reject("the message could not be encoded as JSON");
        };
        let key = if batched {
            RequestKey::Batch(deliveries)
        } else {
            RequestKey::Message(&first.id)
        };
        let now = chrono::Utc::now().timestamp();
        let headers = match request_headers(webhook, &first.rule_id, key, &body, now) {
            Ok(headers) => headers,
            Err(outcome) => return outcome,
        };
        let started = std::time::Instant::now();
        let sent = self
            .client
            .post(url)
            .headers(headers)
            .timeout(Duration::from_millis(u64::from(webhook.timeout_ms)))
            .body(body)
            .send()
            .await;
        iotcore_telemetry::metrics::rules::DELIVERY_SECONDS
            .with(&[])
            .observe_duration(started.elapsed());
        match sent {
            Ok(response) => {
                let status = response.status();
                // The attempt's span (the worker's `delivery`) shows what the webhook said.
                tracing::Span::current().record("http.response.status_code", status.as_u16());
                let retry_after = retry_after(response.headers());
                drain(response).await;
                classify(status, retry_after)
            }
            Err(err) => request_error(err, webhook.timeout_ms),
        }
    }
}

/// What identifies a request to its receiver.
enum RequestKey<'a> {
    /// One envelope: its id, the same on every retry.
    Message(&'a MessageId),
    /// A batch: derived from its envelope ids in order, so a retry of the same batch
    /// carries the same key and a batch of other messages never does.
    Batch(&'a [ClaimedDelivery]),
}

/// `Idempotency-Key` of a batch: `bat_` and the hex SHA-256 of its envelope ids, each
/// followed by a newline.
fn batch_key(deliveries: &[ClaimedDelivery]) -> String {
    let mut hash = Sha256::new();
    for d in deliveries {
        hash.update(d.id.as_str().as_bytes());
        hash.update(b"\n");
    }
    let mut key = String::with_capacity(4 + 64);
    key.push_str("bat_");
    for byte in hash.finalize() {
        let _ = write!(key, "{byte:02x}");
    }
    key
}

/// A destination the guard refused will not become acceptable by retrying; one that did
/// not resolve may.
fn destination_refused(error: DestinationError) -> Outcome {
    match error {
        DestinationError::Forbidden(_) => Outcome::Reject {
            error: format!("{error} (private destinations are not allowed)"),
        },
        DestinationError::Unresolved => Outcome::Retry {
            error: error.to_string(),
            retry_after: None,
        },
    }
}

fn reject(error: &str) -> Outcome {
    Outcome::Reject {
        error: error.to_owned(),
    }
}

/// The request headers: the rule's own first, then the service's, which win, so that a
/// rule cannot forge its message id or signature.
fn request_headers(
    webhook: &Webhook,
    rule_id: &RuleId,
    key: RequestKey<'_>,
    body: &[u8],
    unix_seconds: i64,
) -> Result<HeaderMap, Outcome> {
    let mut headers = HeaderMap::new();
    for (name, value) in &webhook.headers {
        let parsed = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        );
        let (Ok(name), Ok(mut value)) = parsed else {
            return Err(Outcome::Reject {
                error: truncate(format!(
                    "webhook header {name:?} is not a valid HTTP header"
                )),
            });
        };
        if is_reserved(&name) {
            continue;
        }
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let Ok(rule) = HeaderValue::from_str(rule_id.as_str()) else {
        return Err(reject("the message has a malformed id"));
    };
    headers.insert("x-iotcore-rule-id", rule);
    match key {
        RequestKey::Message(id) => {
            let Ok(id) = HeaderValue::from_str(id.as_str()) else {
                return Err(reject("the message has a malformed id"));
            };
            headers.insert("idempotency-key", id.clone());
            headers.insert("x-iotcore-message-id", id);
        }
        RequestKey::Batch(deliveries) => {
            let Ok(key) = HeaderValue::from_str(&batch_key(deliveries)) else {
                return Err(reject("the message has a malformed id"));
            };
            headers.insert("idempotency-key", key);
            headers.insert("x-iotcore-batch-size", HeaderValue::from(deliveries.len()));
        }
    }
    if let Some(secret) = &webhook.secret {
        let signature = signature::sign(secret.as_bytes(), unix_seconds, body);
        if let Ok(value) = HeaderValue::from_str(&signature) {
            headers.insert(signature::HEADER, value);
        }
    }
    Ok(headers)
}

/// Headers a rule may not set: framing (left to the HTTP client) and the service's own.
fn is_reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "content-type"
            | "idempotency-key"
    ) || name.as_str().starts_with("x-iotcore-")
}

/// `Retry-After` in delta-seconds; the HTTP-date form is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(u64::from(u32::MAX))))
}

fn classify(status: StatusCode, retry_after: Option<Duration>) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered;
    }
    let error = format!("HTTP {status}");
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        return Outcome::Retry { error, retry_after };
    }
    if status.is_redirection() {
        return Outcome::Reject {
            error: format!("{error} (redirects are not followed)"),
        };
    }
    Outcome::Reject { error }
}

fn request_error(err: reqwest::Error, timeout_ms: u32) -> Outcome {
    if err.is_builder() {
        return reject("the request could not be built from the webhook URL");
    }
    // The guarded resolver's verdict travels inside the connection error.
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<DestinationError>() {
            return destination_refused(refused.clone());
        }
        source = cause.source();
    }
    let error = if err.is_timeout() {
        format!("timed out after {timeout_ms} ms")
    } else {
        // The URL can carry credentials (userinfo, query tokens): keep it out.
        let err = err.without_url();
        let mut text = if err.is_connect() {
            "connection failed".to_owned()
        } else {
            "request failed".to_owned()
        };
        let mut source = err.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        truncate(text)
    };
    Outcome::Retry {
        error,
        retry_after: None,
    }
}

/// Reads a bounded part of the body so that the connection can go back to the pool.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > MAX_DRAINED_BODY {
            break;
        }
    }
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_spec_says() {
        assert_eq!(classify(StatusCode::OK, None), Outcome::Delivered);
        assert_eq!(classify(StatusCode::NO_CONTENT, None), Outcome::Delivered);
        for retried in [408, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(retried).unwrap_or(StatusCode::OK);
            assert!(
                matches!(classify(status, None), Outcome::Retry { .. }),
                "{retried}"
            );
        }
        for rejected in [301, 302, 400, 401, 403, 404, 410, 422] {
            let status = StatusCode::from_u16(rejected).unwrap_or(StatusCode::OK);
            assert!(
                matches!(classify(status, None), Outcome::Reject { .. }),
                "{rejected}"
            );
        }
        assert_eq!(
            classify(StatusCode::NOT_FOUND, None),
            Outcome::Reject {
                error: "HTTP 404 Not Found".into()
            }
        );
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let short = truncate(long);
        assert!(short.len() <= MAX_ERROR_LEN + '…'.len_utf8());
        assert!(short.ends_with('…'));
    }
}
