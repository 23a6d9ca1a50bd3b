//! The load generator against a real iotcore (PostgreSQL, devices and a registry client
//! created through the API, passwords checked, ACLs on): short runs whose counts must add
//! up. Nothing here is timed; the side-by-side benchmark does that.

use iotcore_e2e::TestApp;
use serde_json::Value;
use std::path::PathBuf;
use tokio::process::Command;

struct Setup {
    app: TestApp,
    registry: String,
    registry_password: String,
    ids_file: PathBuf,
}

async fn setup(devices: usize) -> Setup {
    let app = TestApp::spawn().await;
    let registry = app.create_registry(&app.token, "load").await;
    let mut ids = String::new();
    for i in 0..devices {
        let device = app
            .create_device(&app.token, &registry, &format!("load-{i}"))
            .await;
        ids.push_str(&format!("{} {}\n", device.id, device.password));
    }
    let (_, registry_password) = app.create_registry_password(&app.token, &registry).await;
    let ids_file = std::env::temp_dir().join(format!("iotcore-load-ids-{}", app.mqtt.port()));
    std::fs::write(&ids_file, ids).expect("writing the ids file");
    Setup {
        app,
        registry,
        registry_password,
        ids_file,
    }
}

/// Runs `iotcore-load` with `args` and returns its JSON report.
async fn load(args: &[String]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_iotcore-load"))
        .args(args)
        .arg("--json")
        .output()
        .await
        .expect("running iotcore-load");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "iotcore-load failed: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}"))
}

fn run_args(s: &Setup, pattern: &str, filter: &str) -> Vec<String> {
    [
        "run",
        "--broker",
        &s.app.mqtt.to_string(),
        "--pattern",
        pattern,
        "--clients",
        "3",
        "--qos",
        "1",
        "--rate",
        "20",
        "--warmup",
        "0.5",
        "--duration",
        "1",
        "--drain",
        "10",
        "--ids",
        &s.ids_file.display().to_string(),
        "--pub-client-id",
        "{id}",
        "--pub-username",
        "{id}",
        "--pub-password",
        "{secret}",
        "--topic",
        "$devices/{id}/events/load",
        "--sub-client-id",
        &format!("{}:load-{{i}}", s.registry),
        "--sub-username",
        &s.registry,
        "--sub-password",
        &s.registry_password,
        "--filter",
        filter,
    ]
    .map(String::from)
    .to_vec()
}

fn count(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

#[tokio::test]
async fn load_runs_against_iotcore_deliver_every_message_exactly_as_counted() {
    let s = setup(3).await;

    let pairs = load(&run_args(&s, "pairs", "$devices/{id}/events/load")).await;
    assert!(count(&pairs, "sent") > 0, "{pairs}");
    assert_eq!(count(&pairs, "acked"), count(&pairs, "sent"), "{pairs}");
    assert_eq!(count(&pairs, "refused"), 0, "{pairs}");
    assert_eq!(count(&pairs, "expected"), count(&pairs, "sent"), "{pairs}");
    assert_eq!(count(&pairs, "received"), count(&pairs, "sent"), "{pairs}");
    assert_eq!(count(&pairs, "connection_errors"), 0, "{pairs}");
    assert!(count(&pairs["latency_us"], "count") > 0, "{pairs}");

    // Three devices into one registry client on a wildcard.
    let fan_in = load(&run_args(&s, "fan-in", "$devices/+/events/#")).await;
    assert!(count(&fan_in, "sent") > 0, "{fan_in}");
    assert_eq!(
        count(&fan_in, "received"),
        count(&fan_in, "sent"),
        "{fan_in}"
    );

    // Device 0 to three registry clients: each gets every message.
    let device0 = std::fs::read_to_string(&s.ids_file).unwrap_or_default();
    let device0 = device0.split_whitespace().next().unwrap_or_default();
    let filter = format!("$devices/{device0}/events/load");
    let fan_out = load(&run_args(&s, "fan-out", &filter)).await;
    assert!(count(&fan_out, "sent") > 0, "{fan_out}");
    assert_eq!(count(&fan_out, "expected"), 3 * count(&fan_out, "sent"));
    assert_eq!(count(&fan_out, "received"), count(&fan_out, "expected"));

    // Idle connections of the registry client over two worker processes and two sources.
    let idle = load(
        &[
            "idle",
            "--broker",
            &s.app.mqtt.to_string(),
            "--connections",
            "6",
            "--per-process",
            "3",
            "--sources",
            "2",
            "--settle",
            "0",
            "--client-id",
            &format!("{}:idle-{{i}}", s.registry),
            "--username",
            &s.registry,
            "--password",
            &s.registry_password,
        ]
        .map(String::from),
    )
    .await;
    assert_eq!(count(&idle, "connected"), 6, "{idle}");
    assert_eq!(count(&idle, "failed"), 0, "{idle}");
    assert_eq!(count(&idle, "processes"), 2, "{idle}");

    let _ = std::fs::remove_file(&s.ids_file);
    s.app.stop().await;
}

#[tokio::test]
async fn a_storm_connects_drops_and_reconnects_every_device_and_counts_each_phase() {
    let s = setup(3).await;
    // The three devices, then one whose password is wrong: refused in every phase.
    let mut ids = std::fs::read_to_string(&s.ids_file).expect("reading the ids file");
    let device0 = ids.split_whitespace().next().unwrap_or_default().to_owned();
    ids.push_str(&format!("{device0} not-its-password\n"));
    let storm_ids = s.ids_file.with_extension("storm");
    std::fs::write(&storm_ids, ids).expect("writing the ids file");
    // The probe appends the boundary's name to a file and prints how many it has seen.
    let marks = s.ids_file.with_extension("marks");
    let probe = format!(
        "echo \"$1\" >> '{}' && wc -l < '{}'",
        marks.display(),
        marks.display()
    );

    let storm = load(
        &[
            "storm",
            "--broker",
            &s.app.mqtt.to_string(),
            "--connections",
            "4",
            "--per-process",
            "2",
            "--sources",
            "2",
            "--settle",
            "0",
            "--pause",
            "0.2",
            "--storms",
            "2",
            "--ids",
            &storm_ids.display().to_string(),
            "--client-id",
            "{id}",
            "--username",
            "{id}",
            "--password",
            "{secret}",
            "--probe",
            &probe,
        ]
        .map(String::from),
    )
    .await;
    assert_eq!(count(&storm, "processes"), 2, "{storm}");
    let phases = storm["phases"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = phases.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["cold", "drop 1", "storm 1", "drop 2", "storm 2"]);
    for phase in &phases {
        if phase["name"]
            .as_str()
            .unwrap_or_default()
            .starts_with("drop")
        {
            assert_eq!(count(phase, "closed"), 3, "{phase}");
            assert_eq!(count(phase, "connected"), 0, "{phase}");
        } else {
            assert_eq!(count(phase, "connected"), 3, "{phase}");
            assert_eq!(count(phase, "failed"), 1, "{phase}");
            assert_eq!(count(&phase["connect_latency_us"], "count"), 3, "{phase}");
            let error = phase["first_error"].as_str().unwrap_or_default();
            assert!(error.contains("CONNACK refused"), "{phase}");
        }
        assert_eq!(phase["probe_delta"].as_i64(), Some(1), "{phase}");
    }
    assert_eq!(storm["background"]["probe_delta"].as_i64(), Some(1));
    let seen = std::fs::read_to_string(&marks).expect("reading the probe's marks");
    let seen: Vec<&str> = seen.lines().collect();
    assert_eq!(
        seen,
        [
            "background-start",
            "background",
            "cold",
            "drop 1",
            "storm 1",
            "drop 2",
            "storm 2"
        ]
    );

    for file in [&storm_ids, &marks, &s.ids_file] {
        let _ = std::fs::remove_file(file);
    }
    s.app.stop().await;
}

#[tokio::test]
async fn rules_run_counts_every_published_message_once_at_its_own_webhook() {
    let s = setup(3).await;
    // A free loopback port for the receiver that iotcore-load starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let batch = serde_json::json!({"max_messages": 10, "max_wait_ms": 20});
    let rule = s
        .app
        .ok(
            "POST",
            "/v1/rules",
            serde_json::json!({
                "name": "load", "topic_filter": "$devices/+/events/load",
                "webhook": {"url": format!("http://127.0.0.1:{port}/hook"), "batch": batch},
            }),
        )
        .await;
    let rule = rule["id"].as_str().unwrap_or_default().to_owned();
    let report = load(
        &[
            "rules",
            "--broker",
            &s.app.mqtt.to_string(),
            "--receiver",
            &format!("127.0.0.1:{port}"),
            "--clients",
            "3",
            "--qos",
            "1",
            "--rate",
            "20",
            "--warmup",
            "0.5",
            "--duration",
            "1",
            "--drain",
            "60",
            "--quiet",
            "30",
            "--ids",
            &s.ids_file.display().to_string(),
            "--pub-client-id",
            "{id}",
            "--pub-username",
            "{id}",
            "--pub-password",
            "{secret}",
            "--topic",
            "$devices/{id}/events/load",
        ]
        .map(String::from),
    )
    .await;
    let published = count(&report, "published");
    assert!(published > 0, "{report}");
    assert_eq!(count(&report, "accepted"), published, "{report}");
    assert_eq!(count(&report, "delivered"), published, "{report}");
    assert_eq!(count(&report, "undelivered"), 0, "{report}");
    assert_eq!(count(&report, "foreign"), 0, "{report}");
    assert_eq!(count(&report, "malformed"), 0, "{report}");
    assert_eq!(
        count(&report, "envelopes"),
        published + count(&report, "duplicates"),
        "{report}"
    );
    assert!(count(&report, "requests") <= count(&report, "envelopes"));
    assert!(count(&report["latency_us"], "count") > 0, "{report}");
    s.app
        .wait_for_rule_stats(&rule, |stats| {
            stats["delivered"].as_u64() == Some(published)
        })
        .await;
    let _ = std::fs::remove_file(&s.ids_file);
    s.app.stop().await;
}

#[tokio::test]
async fn a_wrong_password_fails_the_run_with_the_broker_answer() {
    let s = setup(3).await;
    let mut args = run_args(&s, "pairs", "$devices/{id}/events/load");
    if let Some(password) = args.iter().position(|a| a == "{secret}") {
        args[password] = "not-the-password".into();
    }
    let output = Command::new(env!("CARGO_BIN_EXE_iotcore-load"))
        .args(&args)
        .output()
        .await
        .expect("running iotcore-load");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("CONNACK refused"), "{stderr}");
    let _ = std::fs::remove_file(&s.ids_file);
    s.app.stop().await;
}
