//! A rules run: publishers send JSON messages that a rule of the broker forwards to a
//! webhook, and this process is that webhook ([`crate::receiver`]). Measures messages per
//! second from MQTT publish to webhook 2xx, the end-to-end latency, what is left undelivered,
//! and the CPU the broker (and its PostgreSQL) spent on it.
//!
//! The rule itself is not created here: the caller (`tests/load/rules-bench.sh`) creates it
//! through the API with its URL pointing at `--receiver`, which must be free when the run
//! starts.

use crate::cli::RulesArgs;
use crate::client::{self, Outcome, Publishing, Timeline};
use crate::receiver::Receiver;
use crate::report::{self, CpuUse, Percentiles};
use crate::run::{connect_all, run_tag, wait_until_idle, Client, SEND_BUFFER};
use crate::stream::Identity;
use crate::template::{expand, expand_opt};
use crate::wire::PublishTemplate;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Everything a rules run measured.
#[derive(Debug, Serialize)]
pub struct RulesReport {
    pub mqtt: String,
    pub qos: u8,
    pub payload: usize,
    pub publishers: usize,
    pub rate_per_publisher: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Messages published over the whole run (warm-up included), acknowledged, refused.
    pub published: u64,
    pub acked: u64,
    pub refused: u64,
    /// Messages the broker took on: acknowledged and not refused (QoS 1/2), or sent (QoS 0).
    pub accepted: u64,
    /// Distinct messages of this run the webhook received, over the whole run and drain.
    pub delivered: u64,
    /// Published and delivered per second within the measured window.
    pub published_per_s: f64,
    pub delivered_per_s: f64,
    /// Published but not yet at the webhook when publishing stopped.
    pub backlog_at_stop: u64,
    /// Accepted but never received, when the wait after publishing ended.
    pub undelivered: u64,
    /// Seconds from the end of publishing to the last delivery (or to the end of the wait).
    pub drain_s: f64,
    /// Webhook requests, their body bytes, envelopes (redeliveries included), redeliveries,
    /// other runs' messages, and requests that were not envelopes.
    pub requests: u64,
    pub request_bytes: u64,
    pub envelopes: u64,
    pub duplicates: u64,
    pub foreign: u64,
    pub malformed: u64,
    /// From the send time in the payload to the webhook's receipt, for messages sent in the
    /// measured window.
    pub latency_us: Percentiles,
    pub connect_s: f64,
    pub connection_errors: usize,
    pub first_error: Option<String>,
    /// CPU of this process (publishers and receiver) over the measured window.
    pub load_cpu: CpuUse,
    /// The broker's CPU over the measured window, and its CPU seconds from the first publish
    /// to the end of the wait (what the run's deliveries cost it in all).
    pub broker_cpu: Option<CpuUse>,
    pub broker_cpu_total_s: Option<f64>,
    /// The same for PostgreSQL (its server process and backends).
    pub postgres_cpu: Option<CpuUse>,
    pub postgres_cpu_total_s: Option<f64>,
}

/// A snapshot of the CPU of the broker and of PostgreSQL.
#[derive(Clone, Copy)]
struct CpuSample {
    broker: Option<Duration>,
    postgres: Option<Duration>,
}

impl CpuSample {
    fn take(args: &RulesArgs) -> CpuSample {
        CpuSample {
            broker: args.conn.broker_pid.and_then(report::process_cpu),
            postgres: args.postgres_pid.and_then(report::tree_cpu),
        }
    }
}

pub async fn rules(args: RulesArgs) -> Result<RulesReport> {
    args.check()?;
    let listener = Receiver::bind(args.receiver).await?;
    let ids = Arc::new(args.conn.ids()?);
    let mut connector = args.conn.connector()?;
    if args.rate == 0.0 {
        connector.send_buffer = Some(SEND_BUFFER);
    }
    let connector = Arc::new(connector);
    if let Some(pid) = args.conn.broker_pid {
        wait_until_idle(pid).await;
    }

    let mut pubs = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        pubs.push(Client {
            index: i,
            identity: Identity {
                client_id: expand(&args.pub_client_id, i, &ids)?,
                username: expand_opt(&args.pub_username, i, &ids)?,
                password: expand_opt(&args.pub_password, i, &ids)?,
                subscribe: None,
            },
            publishes: Some(expand(&args.topic, i, &ids)?),
        });
    }
    let connect_started = Instant::now();
    let (sessions, errors) =
        connect_all(pubs, &connector, &ids, args.conn.connect_concurrency).await;
    let connect_s = connect_started.elapsed().as_secs_f64();
    if !errors.is_empty() {
        bail!(
            "{} of {} connections failed; first: {}",
            errors.len(),
            args.clients,
            errors[0]
        );
    }

    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let publish_until = measure_from + Duration::from_secs_f64(args.duration);
    let drain_until = publish_until + Duration::from_secs_f64(args.drain);
    let timeline = Timeline {
        start,
        measure_from,
        publish_until,
        // Publishers wait this long at most for their last acknowledgements.
        drain_until,
        quiet: Duration::from_millis(500),
        tag: run_tag(),
    };
    let stop = CancellationToken::new();
    let receiver = Receiver::serve(listener, timeline, stop.clone());
    // The receiver stops with this function, whichever way it returns.
    let _stop = stop.drop_guard();

    let v5 = args.conn.version().is_v5();
    let rate = (args.rate > 0.0).then_some(args.rate);
    let timeline = Arc::new(timeline);
    let mut tasks = JoinSet::new();
    for (client, session) in sessions {
        let Some(topic) = &client.publishes else {
            continue;
        };
        let publishing = Publishing {
            template: PublishTemplate::json(topic, args.qos, args.payload, v5, timeline.tag)?,
            qos: args.qos,
            rate,
            inflight: args.inflight,
        };
        let timeline = timeline.clone();
        tasks.spawn(async move {
            client::drive(
                session.stream,
                session.read_buf,
                v5,
                Some(publishing),
                false,
                &timeline,
            )
            .await
        });
    }

    tokio::time::sleep_until(start).await;
    let cpu_start = CpuSample::take(&args);
    tokio::time::sleep_until(measure_from).await;
    let load_before = report::own_cpu();
    let cpu_from = CpuSample::take(&args);
    tokio::time::sleep_until(publish_until).await;
    let window = publish_until.saturating_duration_since(measure_from);
    let load_cpu = CpuUse::over(load_before, report::own_cpu(), window);
    let cpu_until = CpuSample::take(&args);
    let (at_stop, _) = receiver.counts();

    let mut totals = Totals::default();
    while let Some(joined) = tasks.join_next().await {
        totals.add(joined.context("a publisher task panicked")?);
    }
    let accepted = if args.qos == 0 {
        totals.sent
    } else {
        totals.acked.saturating_sub(totals.refused)
    };

    // Wait for the webhook to receive what the broker accepted, or for the stream to dry up.
    let quiet = Duration::from_secs_f64(args.quiet);
    let drain_end = loop {
        let now = Instant::now();
        let (counts, last) = receiver.counts();
        let last = last.unwrap_or(publish_until).max(publish_until);
        if counts.delivered >= accepted {
            break last;
        }
        if now >= drain_until || now.saturating_duration_since(last) >= quiet {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cpu_end = CpuSample::take(&args);
    let (counts, _) = receiver.counts();

    let seconds = window.as_secs_f64();
    let over = |before: Option<Duration>, after: Option<Duration>| {
        before
            .zip(after)
            .map(|(before, after)| CpuUse::over(before, after, window))
    };
    let total = |before: Option<Duration>, after: Option<Duration>| {
        before
            .zip(after)
            .map(|(before, after)| after.saturating_sub(before).as_secs_f64())
    };
    Ok(RulesReport {
        mqtt: args.conn.mqtt.clone(),
        qos: args.qos,
        payload: args.payload.max(crate::wire::JSON_MIN_LEN),
        publishers: args.clients,
        rate_per_publisher: args.rate,
        warmup_s: args.warmup,
        duration_s: args.duration,
        published: totals.sent,
        acked: totals.acked,
        refused: totals.refused,
        accepted,
        delivered: counts.delivered,
        published_per_s: totals.sent_measured as f64 / seconds,
        delivered_per_s: at_stop.delivered_measured as f64 / seconds,
        backlog_at_stop: totals.sent.saturating_sub(at_stop.delivered),
        undelivered: accepted.saturating_sub(counts.delivered),
        drain_s: drain_end
            .saturating_duration_since(publish_until)
            .as_secs_f64(),
        requests: counts.requests,
        request_bytes: counts.bytes,
        envelopes: counts.envelopes,
        duplicates: counts.duplicates,
        foreign: counts.foreign,
        malformed: counts.malformed,
        latency_us: Percentiles::of(&receiver.latency()),
        connect_s,
        connection_errors: totals.errors,
        first_error: totals.first_error,
        load_cpu,
        broker_cpu: over(cpu_from.broker, cpu_until.broker),
        broker_cpu_total_s: total(cpu_start.broker, cpu_end.broker),
        postgres_cpu: over(cpu_from.postgres, cpu_until.postgres),
        postgres_cpu_total_s: total(cpu_start.postgres, cpu_end.postgres),
    })
}

#[derive(Default)]
struct Totals {
    sent: u64,
    sent_measured: u64,
    acked: u64,
    refused: u64,
    errors: usize,
    first_error: Option<String>,
}

impl Totals {
    fn add(&mut self, outcome: Outcome) {
        self.sent += outcome.sent;
        self.sent_measured += outcome.sent_measured;
        self.acked += outcome.acked;
        self.refused += outcome.refused;
        if let Some(error) = outcome.error {
            self.errors += 1;
            self.first_error.get_or_insert(error);
        }
    }
}

impl RulesReport {
    /// The report for people.
    pub fn print(&self) {
        eprintln!(
            "rules mqtt {} qos {} payload {} B: {} publishers, rate {}/s each, {} s measured after {} s warm-up",
            self.mqtt,
            self.qos,
            self.payload,
            self.publishers,
            if self.rate_per_publisher > 0.0 {
                self.rate_per_publisher.to_string()
            } else {
                "unlimited".into()
            },
            self.duration_s,
            self.warmup_s
        );
        eprintln!(
            "  published {} (acked {}, refused {}), delivered to the webhook {} of {} accepted; \
             {} undelivered after {:.1} s",
            self.published,
            self.acked,
            self.refused,
            self.delivered,
            self.accepted,
            self.undelivered,
            self.drain_s
        );
        eprintln!(
            "  measured: {:.0} msg/s published, {:.0} msg/s delivered; backlog when publishing stopped: {}",
            self.published_per_s, self.delivered_per_s, self.backlog_at_stop
        );
        eprintln!(
            "  webhook: {} requests, {} bytes, {} envelopes ({:.1} per request), {} redelivered, {} from earlier runs, {} malformed",
            self.requests,
            self.request_bytes,
            self.envelopes,
            if self.requests == 0 {
                0.0
            } else {
                self.envelopes as f64 / self.requests as f64
            },
            self.duplicates,
            self.foreign,
            self.malformed
        );
        eprintln!("  latency: {}", self.latency_us.line());
        eprintln!(
            "  connect: {:.2} s; connection errors during the run: {}{}",
            self.connect_s,
            self.connection_errors,
            self.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        let cpu = |name: &str, window: &Option<CpuUse>, total: Option<f64>| match (window, total) {
            (Some(window), Some(total)) => format!(
                "; {name} {:.2} cores, {:.2} CPU s in all ({:.1} µs per delivered message)",
                window.cores,
                total,
                if self.delivered == 0 {
                    0.0
                } else {
                    total * 1e6 / self.delivered as f64
                }
            ),
            _ => String::new(),
        };
        eprintln!(
            "  CPU: load generator {:.2} cores{}{}",
            self.load_cpu.cores,
            cpu("broker", &self.broker_cpu, self.broker_cpu_total_s),
            cpu("PostgreSQL", &self.postgres_cpu, self.postgres_cpu_total_s),
        );
    }
}
