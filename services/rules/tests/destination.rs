//! The SSRF guard at delivery time, against a real HTTP server on loopback.

use axum::routing::post;
use axum::Router;
use iotcore_rules::deliver::{Deliverer, Outcome};
use iotcore_store::deliveries::{ClaimedDelivery, Webhook};
use iotcore_store::{MessageId, RuleId, TenantId};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A webhook on 127.0.0.1 that counts the requests it receives.
async fn loopback_webhook() -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = Router::new().route(
        "/hook",
        post(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, hits)
}

fn delivery(url: String) -> ClaimedDelivery {
    ClaimedDelivery {
        id: MessageId::generate(),
        tenant_id: TenantId::generate(),
        rule_id: RuleId::generate(),
        registry_id: None,
        device_id: None,
        topic: "t".into(),
        qos: 1,
        retain: false,
        payload: b"{}".to_vec(),
        content_type: None,
        user_properties: Vec::new(),
        received_at: chrono::Utc::now(),
        attempts: 0,
        webhook: Webhook {
            url,
            headers: Vec::new(),
            secret: None,
            timeout_ms: 5000,
            max_in_flight: 1,
            batch_max_messages: 1,
            batch_max_wait_ms: 0,
        },
    }
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let (port, hits) = loopback_webhook().await;
    let guarded = Deliverer::new(false).unwrap();
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
    ] {
        let outcome = guarded.deliver(&delivery(url.clone())).await;
        assert!(
            matches!(&outcome, Outcome::Reject { error } if error.contains("not a public address")),
            "{url}: {outcome:?}"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the webhook"
    );

    let open = Deliverer::new(true).unwrap();
    let outcome = open
        .deliver(&delivery(format!("http://localhost:{port}/hook")))
        .await;
    assert_eq!(outcome, Outcome::Delivered);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
