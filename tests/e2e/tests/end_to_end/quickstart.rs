//! The README's quickstart, step by step: tenant, registry, device, password, rule; the
//! device publishes; the webhook receives the envelope of SPEC §5. The last test runs the
//! README's own commands.

use base64::Engine;
use iotcore_e2e::mqtt::WAIT;
use iotcore_e2e::webhook::Webhook;
use iotcore_e2e::{binary, free_port, TestApp};
use serde_json::json;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::timeout;

#[tokio::test]
async fn device_message_reaches_the_webhook_as_published() {
    let app = TestApp::spawn().await;
    let mut webhook = Webhook::start().await;
    let registry = app.create_registry(&app.token, "sensors").await;
    let device = app
        .create_device(&app.token, &registry, "thermometer-1")
        .await;
    let rule = app
        .create_rule(
            &app.token,
            "temperature",
            "$devices/+/events/#",
            &webhook.url,
        )
        .await;

    let mut mqtt = app.mqtt_v311(&device).await.expect("device connects");
    let topic = format!("$devices/{}/events/temperature", device.id);
    let payload = br#"{"celsius":21.5}"#;
    mqtt.client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
        .await
        .expect("publish");
    mqtt.puback().await;

    let request = webhook
        .next(WAIT)
        .await
        .expect("the webhook receives the message");
    assert_eq!(request.header("content-type"), Some("application/json"));
    let envelope = request.json();
    let id = envelope["id"].as_str().expect("envelope id");
    assert!(id.starts_with("msg_"), "{envelope}");
    assert_eq!(request.header("idempotency-key"), Some(id));
    assert_eq!(request.header("x-iotcore-message-id"), Some(id));
    assert_eq!(request.header("x-iotcore-rule-id"), Some(rule.as_str()));
    assert_eq!(envelope["rule_id"], json!(rule));
    assert_eq!(envelope["tenant_id"], json!(app.tenant_id));
    assert_eq!(envelope["registry_id"], json!(registry));
    assert_eq!(envelope["device_id"], json!(device.id));
    assert_eq!(envelope["topic"], json!(topic));
    assert_eq!(envelope["qos"], json!(1));
    assert_eq!(envelope["retain"], json!(false));
    assert_eq!(envelope["payload"], json!({ "celsius": 21.5 }));
    assert!(envelope.get("payload_base64").is_none(), "{envelope}");
    assert!(
        envelope["received_at"]
            .as_str()
            .is_some_and(|t| t.contains('T')),
        "{envelope}"
    );
    app.stop().await;
}

#[tokio::test]
async fn binary_payload_arrives_base64_encoded_over_mqtt5() {
    let app = TestApp::spawn().await;
    let mut webhook = Webhook::start().await;
    let registry = app.create_registry(&app.token, "cameras").await;
    let device = app.create_device(&app.token, &registry, "camera-1").await;
    app.create_rule(
        &app.token,
        "frames",
        "$devices/+/events/frame",
        &webhook.url,
    )
    .await;

    let mqtt = app.mqtt_v5(&device).await.expect("device connects");
    let payload = vec![0xff, 0x00, 0x01, b'{'];
    let topic = format!("$devices/{}/events/frame", device.id);
    mqtt.client
        .publish(
            &topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            payload.clone(),
        )
        .await
        .expect("publish");

    let envelope = webhook
        .next(WAIT)
        .await
        .expect("the webhook receives the message")
        .json();
    let encoded = envelope["payload_base64"].as_str().expect("payload_base64");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64"),
        payload
    );
    assert!(envelope.get("payload").is_none(), "{envelope}");
    app.stop().await;
}

/// The quickstart publishes with `mosquitto_pub`, an independent MQTT client.
#[tokio::test]
async fn mosquitto_pub_as_the_device_reaches_the_webhook() {
    let app = TestApp::spawn().await;
    let mut webhook = Webhook::start().await;
    let registry = app.create_registry(&app.token, "boards").await;
    let device = app
        .create_device(&app.token, &registry, "raspberry-pi")
        .await;
    app.create_rule(
        &app.token,
        "all-events",
        "$devices/+/events/#",
        &webhook.url,
    )
    .await;

    let topic = format!("$devices/{}/events", device.id);
    let status = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &app.mqtt.port().to_string(),
            "-V",
            "mqttv311",
            "-q",
            "1",
        ])
        .args([
            "-i",
            &device.id,
            "-u",
            &device.id,
            "-P",
            &device.password,
            "-t",
            &topic,
            "-m",
            r#"{"hello":"world"}"#,
        ])
        .status()
        .await
        .expect("mosquitto_pub is installed (the test command installs mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub exited with {status}");

    let envelope = webhook
        .next(WAIT)
        .await
        .expect("the webhook receives the message")
        .json();
    assert_eq!(envelope["payload"], json!({ "hello": "world" }));
    assert_eq!(envelope["device_id"], json!(device.id));
    app.stop().await;
}

/// The shell blocks (```` ```sh ````) of the README's Quickstart section, in order.
fn quickstart_blocks(readme: &str) -> Vec<String> {
    let section = readme.split("\n## Quickstart\n").nth(1).unwrap_or_default();
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match current.as_mut() {
            None if line == "```sh" => current = Some(String::new()),
            None => {}
            Some(_) if line == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// `text` with every `from` replaced by `to`; `from` must be there.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the quickstart no longer has {from:?}:\n{text}"
    );
    text.replace(from, to)
}

/// The README's quickstart as a newcomer pastes it: terminal 3's commands and the
/// `mosquitto_pub` command run in bash word for word, with only the ports moved to this
/// test's (and `iotcore.sh` being the binary under test), while the README's webhook receiver
/// prints the delivery.
#[tokio::test]
async fn readme_quickstart_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md is readable");
    let blocks = quickstart_blocks(&readme);
    assert_eq!(
        blocks.len(),
        4,
        "the quickstart's shell blocks: {blocks:#?}"
    );
    assert_eq!(blocks[0].trim(), "./deploy/local/run.sh");
    assert_eq!(blocks[1].trim(), "./deploy/local/webhook_receiver.py 9000");

    let app = TestApp::spawn().await;
    let receiver_port = free_port();
    let mut receiver = Command::new(root.join("deploy/local/webhook_receiver.py"))
        .arg(receiver_port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the webhook receiver starts (python3)");
    let mut printed = BufReader::new(receiver.stdout.take().expect("its standard output")).lines();
    let first = timeout(WAIT, printed.next_line()).await;
    assert!(
        matches!(&first, Ok(Ok(Some(line))) if line.contains("listening on")),
        "the webhook receiver did not start: {first:?}"
    );

    let api = app.api.trim_start_matches("http://");
    let mut script = format!("set -euo pipefail\n{}{}", blocks[2], blocks[3]);
    script = substitute(&script, "localhost:8080", api);
    script = substitute(
        &script,
        "http://127.0.0.1:9000/",
        &format!("http://127.0.0.1:{receiver_port}/"),
    );
    script = substitute(&script, "-p 1883", &format!("-p {}", app.mqtt.port()));
    script = substitute(&script, "./deploy/local/iotcore.sh", "\"$IOTCORE_BIN\"");
    script.push_str("echo \"device: $DEVICE\"\n");
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&root)
        .env("IOTCORE_BIN", binary())
        .env("IOTCORE_PROFILE", "dev")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the quickstart failed ({}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    // `jq .` printed the rule as created.
    assert!(
        stdout.contains(r#""topic_filter": "$devices/+/events/#""#),
        "{stdout}"
    );
    let device = stdout
        .lines()
        .find_map(|line| line.strip_prefix("device: "))
        .unwrap_or_default()
        .to_owned();
    assert!(device.starts_with("dev_"), "{stdout}");

    // Terminal 2 prints the delivery: its headers and the envelope with the payload.
    let mut seen = String::new();
    let expected = [
        "--- POST /".to_owned(),
        "X-Iotcore-Message-Id: msg_".to_owned(),
        "X-Iotcore-Rule-Id: rul_".to_owned(),
        format!(r#""device_id": "{device}""#),
        r#""celsius": 21.5"#.to_owned(),
    ];
    while !expected.iter().all(|part| seen.contains(part.as_str())) {
        match timeout(WAIT, printed.next_line()).await {
            Ok(Ok(Some(line))) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            other => panic!("the webhook receiver printed only {seen:?} ({other:?})"),
        }
    }
    app.stop().await;
}
