//! The JSON envelope a webhook receives for one message (SPEC §5).
//!
//! ```json
//! {"id": "msg_…", "rule_id": "rul_…", "tenant_id": "tnt_…", "registry_id": "reg_…",
//!  "device_id": "dev_…", "topic": "$devices/dev_…/events/t", "qos": 1, "retain": false,
//!  "received_at": "2026-01-02T03:04:05.123456Z",
//!  "payload": {"celsius": 31.5},
//!  "content_type": "application/json",
//!  "user_properties": [["unit", "C"], ["unit", "K"]]}
//! ```
//!
//! - `payload` is the message itself, embedded verbatim, when its bytes are valid JSON
//!   (any JSON value, so `23.5` or `"on"` too); otherwise the envelope has
//!   `payload_base64` (standard alphabet, padded) instead. Exactly one of them is present.
//! - `registry_id`, `device_id` and `content_type` are `null` when absent.
//! - `user_properties` is an array of `[key, value]` pairs, not an object: MQTT 5 allows a
//!   key to appear more than once and their order is meaningful, and an object keeps
//!   neither.
//! - The body depends only on the queued message, so every retry sends identical bytes.
//! - A rule with `batch.max_messages` above 1 sends a JSON array of these envelopes.

use base64::Engine;
use chrono::SecondsFormat;
use iotcore_store::deliveries::ClaimedDelivery;
use iotcore_store::{DeviceId, MessageId, RegistryId, RuleId, TenantId};
use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a MessageId,
    rule_id: &'a RuleId,
    tenant_id: &'a TenantId,
    registry_id: Option<&'a RegistryId>,
    device_id: Option<&'a DeviceId>,
    topic: &'a str,
    qos: u8,
    retain: bool,
    received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    content_type: Option<&'a str>,
    user_properties: &'a [(String, String)],
}

/// The request body for `delivery` alone: one envelope.
pub fn body(delivery: &ClaimedDelivery) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&envelope(delivery))
}

/// The request body for a batch: a JSON array of the envelopes of `deliveries`, in order.
/// A rule that batches always gets an array, even of one envelope, so that its receiver
/// handles one shape.
pub fn batch_body(deliveries: &[ClaimedDelivery]) -> Result<Vec<u8>, serde_json::Error> {
    let envelopes: Vec<Envelope<'_>> = deliveries.iter().map(envelope).collect();
    serde_json::to_vec(&envelopes)
}

fn envelope(delivery: &ClaimedDelivery) -> Envelope<'_> {
    // Parsing is bounded by the payload size (which the broker limits) and serde_json's
    // nesting limit, so a hostile payload cannot exhaust memory or the stack here.
    let json = serde_json::from_slice::<&RawValue>(&delivery.payload).ok();
    let payload_base64 = match json {
        Some(_) => None,
        None => Some(base64::engine::general_purpose::STANDARD.encode(&delivery.payload)),
    };
    Envelope {
        id: &delivery.id,
        rule_id: &delivery.rule_id,
        tenant_id: &delivery.tenant_id,
        registry_id: delivery.registry_id.as_ref(),
        device_id: delivery.device_id.as_ref(),
        topic: &delivery.topic,
        qos: delivery.qos,
        retain: delivery.retain,
        received_at: delivery
            .received_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        payload: json,
        payload_base64,
        content_type: delivery.content_type.as_deref(),
        user_properties: &delivery.user_properties,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use iotcore_store::deliveries::Webhook;
    use serde_json::{json, Value};

    fn delivery(payload: &[u8]) -> ClaimedDelivery {
        ClaimedDelivery {
            id: MessageId::generate(),
            tenant_id: TenantId::generate(),
            rule_id: RuleId::generate(),
            registry_id: Some(RegistryId::generate()),
            device_id: None,
            topic: "$devices/d/events/t".into(),
            qos: 1,
            retain: true,
            payload: payload.to_vec(),
            content_type: Some("application/json".into()),
            user_properties: vec![("k".into(), "1".into()), ("k".into(), "2".into())],
            received_at: Utc
                .timestamp_opt(1_700_000_000, 123_456_000)
                .single()
                .unwrap_or_default(),
            attempts: 0,
            webhook: Webhook {
                url: "http://example.com".into(),
                headers: Vec::new(),
                secret: None,
                timeout_ms: 1000,
                max_in_flight: 1,
                batch_max_messages: 1,
                batch_max_wait_ms: 0,
            },
        }
    }

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    }

    #[test]
    fn json_payload_is_embedded_as_a_value() {
        let d = delivery(br#" {"celsius": 31.5, "big": 123456789012345678901234567890} "#);
        let body = body(&d).unwrap_or_default();
        let v = parse(&body);
        assert_eq!(v["payload"]["celsius"], json!(31.5));
        assert!(v.get("payload_base64").is_none());
        // Embedded verbatim: numbers beyond f64 precision are not rounded.
        let text = String::from_utf8(body).unwrap_or_default();
        assert!(text.contains("123456789012345678901234567890"), "{text}");
    }

    #[test]
    fn scalar_json_payload_is_embedded() {
        let v = parse(&body(&delivery(b"23.5")).unwrap_or_default());
        assert_eq!(v["payload"], json!(23.5));
    }

    #[test]
    fn non_json_payload_is_base64() {
        for payload in [&b"\x00\xffbinary"[..], b"not json", b"{\"a\":", b"", b"1 2"] {
            let v = parse(&body(&delivery(payload)).unwrap_or_default());
            assert!(v.get("payload").is_none(), "{payload:?}");
            let encoded = v["payload_base64"].as_str().unwrap_or("?");
            let decoded = base64::engine::general_purpose::STANDARD.decode(encoded);
            assert_eq!(decoded.ok().as_deref(), Some(payload));
        }
    }

    #[test]
    fn envelope_has_every_field_of_the_spec() {
        let d = delivery(b"{}");
        let v = parse(&body(&d).unwrap_or_default());
        assert_eq!(v["id"], json!(d.id.as_str()));
        assert_eq!(v["rule_id"], json!(d.rule_id.as_str()));
        assert_eq!(v["tenant_id"], json!(d.tenant_id.as_str()));
        assert_eq!(
            v["registry_id"],
            json!(d.registry_id.as_ref().map(|r| r.as_str()))
        );
        assert_eq!(v["device_id"], Value::Null);
        assert!(v.as_object().is_some_and(|o| o.contains_key("device_id")));
        assert_eq!(v["topic"], json!("$devices/d/events/t"));
        assert_eq!(v["qos"], json!(1));
        assert_eq!(v["retain"], json!(true));
        assert_eq!(v["received_at"], json!("2023-11-14T22:13:20.123456Z"));
        assert_eq!(v["content_type"], json!("application/json"));
        assert_eq!(v["user_properties"], json!([["k", "1"], ["k", "2"]]));
    }

    #[test]
    fn a_batch_is_an_array_of_the_single_envelopes_in_order() {
        let batch = [delivery(b"{\"n\":1}"), delivery(b"\xff")];
        let v = parse(&batch_body(&batch).unwrap_or_default());
        let singles: Vec<Value> = batch
            .iter()
            .map(|d| parse(&body(d).unwrap_or_default()))
            .collect();
        assert_eq!(v, Value::Array(singles));
        let one = parse(&batch_body(&batch[..1]).unwrap_or_default());
        assert_eq!(one.as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn the_same_delivery_always_has_the_same_body() {
        let d = delivery(b"\x01\x02");
        assert_eq!(body(&d).ok(), body(&d).ok());
    }
}
