//! A throughput and latency run: connect every client, then publish for the warm-up and the
//! measured window, drain, and add up what every connection counted.

use crate::cli::{Pattern, RunArgs};
use crate::client::{self, Outcome, Publishing, Timeline};
use crate::report::{self, CpuUse, Percentiles};
use crate::stream::{Connector, Identity, Session};
use crate::template::{expand, expand_opt, Ids};
use crate::wire::PublishTemplate;
use anyhow::{bail, Context, Result};
use iotcore_codec::QoS;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub pattern: String,
    pub mqtt: String,
    pub qos: u8,
    pub payload: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub rate_per_publisher: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Messages published over the whole run, and deliveries the subscriptions imply.
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    /// Messages received that an earlier run sent (not counted in `received`).
    pub foreign: u64,
    pub acked: u64,
    pub refused: u64,
    /// Published and delivered per second within the measured window.
    pub sent_per_s: f64,
    pub received_per_s: f64,
    pub latency_us: Percentiles,
    pub connect_s: f64,
    pub connection_errors: usize,
    pub first_error: Option<String>,
    pub load_cpu: CpuUse,
    pub broker_cpu: Option<CpuUse>,
    pub broker_rss_kib: Option<u64>,
}

pub(crate) struct Client {
    pub index: usize,
    pub identity: Identity,
    pub publishes: Option<String>,
}

pub async fn run(args: RunArgs) -> Result<RunReport> {
    args.check()?;
    let ids = Arc::new(args.conn.ids()?);
    let mut connector = args.conn.connector()?;
    if args.rate == 0.0 {
        // Unlimited publishers would otherwise park megabytes per connection in socket
        // buffers that the broker works through long after the run.
        connector.send_buffer = Some(SEND_BUFFER);
    }
    let connector = Arc::new(connector);
    if let Some(pid) = args.conn.broker_pid {
        wait_until_idle(pid).await;
    }
    let (publishers, subscribers) = match args.pattern {
        Pattern::Pairs => (args.clients, args.clients),
        Pattern::FanIn => (args.clients, 1),
        Pattern::FanOut => (1, args.clients),
    };
    let qos = QoS::from_u8(args.qos).unwrap_or(QoS::AtMostOnce);
    let filter_template = match (&args.filter, args.pattern) {
        (Some(filter), _) => filter.clone(),
        (None, Pattern::Pairs) => args.topic.clone(),
        (None, Pattern::FanIn) => "load/+".into(),
        (None, Pattern::FanOut) => expand(&args.topic, 0, &ids)?,
    };

    let mut subs = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        subs.push(Client {
            index: i,
            identity: Identity {
                client_id: expand(&args.sub_client_id, i, &ids)?,
                username: expand_opt(&args.sub_username, i, &ids)?,
                password: expand_opt(&args.sub_password, i, &ids)?,
                subscribe: Some((expand(&filter_template, i, &ids)?, qos)),
            },
            publishes: None,
        });
    }
    let mut pubs = Vec::with_capacity(publishers);
    for i in 0..publishers {
        pubs.push(Client {
            // Publishers come after subscribers in the spread over source addresses.
            index: subscribers + i,
            identity: Identity {
                client_id: expand(&args.pub_client_id, i, &ids)?,
                username: expand_opt(&args.pub_username, i, &ids)?,
                password: expand_opt(&args.pub_password, i, &ids)?,
                subscribe: None,
            },
            publishes: Some(expand(&args.topic, i, &ids)?),
        });
    }

    // Subscribers first, so that nothing published is missed.
    let connect_started = Instant::now();
    let concurrency = args.conn.connect_concurrency;
    let (sub_sessions, mut errors) = connect_all(subs, &connector, &ids, concurrency).await;
    let (pub_sessions, pub_errors) = connect_all(pubs, &connector, &ids, concurrency).await;
    errors.extend(pub_errors);
    let connect_s = connect_started.elapsed().as_secs_f64();
    if !errors.is_empty() {
        bail!(
            "{} of {} connections failed; first: {}",
            errors.len(),
            publishers + subscribers,
            errors[0]
        );
    }

    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let publish_until = measure_from + Duration::from_secs_f64(args.duration);
    let timeline = Arc::new(Timeline {
        start,
        measure_from,
        publish_until,
        drain_until: publish_until + Duration::from_secs_f64(args.drain),
        quiet: Duration::from_millis(500).min(Duration::from_secs_f64(args.drain)),
        tag: run_tag(),
    });
    let v5 = args.conn.version().is_v5();
    let rate = (args.rate > 0.0).then_some(args.rate);
    let mut tasks = JoinSet::new();
    for (client, session) in sub_sessions.into_iter().chain(pub_sessions) {
        let publishing = match &client.publishes {
            Some(topic) => Some(Publishing {
                template: PublishTemplate::new(topic, args.qos, args.payload, v5, timeline.tag)?,
                qos: args.qos,
                rate,
                inflight: args.inflight,
            }),
            None => None,
        };
        let subscribed = client.identity.subscribe.is_some();
        let timeline = timeline.clone();
        tasks.spawn(async move {
            client::drive(
                session.stream,
                session.read_buf,
                v5,
                publishing,
                subscribed,
                &timeline,
            )
            .await
        });
    }

    tokio::time::sleep_until(measure_from).await;
    let cpu_before = report::own_cpu();
    let broker_before = args.conn.broker_pid.and_then(report::process_cpu);
    tokio::time::sleep_until(publish_until).await;
    let window = publish_until.saturating_duration_since(measure_from);
    let load_cpu = CpuUse::over(cpu_before, report::own_cpu(), window);
    let broker_after = args.conn.broker_pid.and_then(report::process_cpu);
    let broker_cpu = broker_before
        .zip(broker_after)
        .map(|(before, after)| CpuUse::over(before, after, window));
    let broker_rss_kib = args.conn.broker_pid.and_then(report::process_rss_kib);

    let mut outcomes = Vec::with_capacity(publishers + subscribers);
    while let Some(joined) = tasks.join_next().await {
        outcomes.push(joined.context("a connection task panicked")?);
    }
    let mut totals = Totals::new();
    for outcome in outcomes {
        totals.add(outcome);
    }
    let expected = match args.pattern {
        Pattern::FanOut => totals.sent * subscribers as u64,
        Pattern::Pairs | Pattern::FanIn => totals.sent,
    };
    let seconds = window.as_secs_f64();
    Ok(RunReport {
        pattern: args.pattern.name().into(),
        mqtt: args.conn.mqtt.clone(),
        qos: args.qos,
        payload: args.payload,
        publishers,
        subscribers,
        rate_per_publisher: args.rate,
        warmup_s: args.warmup,
        duration_s: args.duration,
        sent: totals.sent,
        expected,
        received: totals.received,
        foreign: totals.foreign,
        acked: totals.acked,
        refused: totals.refused,
        sent_per_s: totals.sent_measured as f64 / seconds,
        received_per_s: totals.received_measured as f64 / seconds,
        latency_us: Percentiles::of(&totals.latency),
        connect_s,
        connection_errors: totals.errors,
        first_error: totals.first_error,
        load_cpu,
        broker_cpu,
        broker_rss_kib,
    })
}

/// Socket send buffer of each connection when publishers are unlimited.
pub(crate) const SEND_BUFFER: u32 = 256 * 1024;

/// Waits (up to 30 s) until the broker uses less than a tenth of a core, so that a run does
/// not measure the tail of the one before.
pub(crate) async fn wait_until_idle(pid: u32) {
    let step = Duration::from_millis(500);
    for _ in 0..60 {
        let Some(before) = report::process_cpu(pid) else {
            return;
        };
        tokio::time::sleep(step).await;
        let Some(after) = report::process_cpu(pid) else {
            return;
        };
        if CpuUse::over(before, after, step).cores < 0.1 {
            return;
        }
    }
    eprintln!("the broker is still busy after 30 s; measuring anyway");
}

/// A tag that tells this run's messages from an earlier run's.
pub(crate) fn run_tag() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
}

/// Opens every client's session, `concurrency` at a time.
pub(crate) async fn connect_all(
    clients: Vec<Client>,
    connector: &Arc<Connector>,
    ids: &Arc<Ids>,
    concurrency: usize,
) -> (Vec<(Client, Session)>, Vec<String>) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for client in clients {
        let (permits, connector, ids) = (permits.clone(), connector.clone(), ids.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let session = connector.open(client.index, &client.identity, &ids).await;
            (client, session)
        });
    }
    let mut sessions = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((client, Ok(session))) => sessions.push((client, session)),
            Ok((_, Err(e))) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("connect task: {e}")),
        }
    }
    (sessions, errors)
}

struct Totals {
    sent: u64,
    sent_measured: u64,
    received: u64,
    received_measured: u64,
    foreign: u64,
    acked: u64,
    refused: u64,
    errors: usize,
    first_error: Option<String>,
    latency: hdrhistogram::Histogram<u64>,
}

impl Totals {
    fn new() -> Totals {
        Totals {
            sent: 0,
            sent_measured: 0,
            received: 0,
            received_measured: 0,
            foreign: 0,
            acked: 0,
            refused: 0,
            errors: 0,
            first_error: None,
            latency: client::histogram(),
        }
    }

    fn add(&mut self, outcome: Outcome) {
        self.sent += outcome.sent;
        self.sent_measured += outcome.sent_measured;
        self.received += outcome.received;
        self.received_measured += outcome.received_measured;
        self.foreign += outcome.foreign;
        self.acked += outcome.acked;
        self.refused += outcome.refused;
        if let Some(error) = outcome.error {
            self.errors += 1;
            self.first_error.get_or_insert(error);
        }
        if let Some(latency) = outcome.latency {
            // Both histograms have the same bounds, so adding cannot fail.
            let _ = self.latency.add(&latency);
        }
    }
}

impl RunReport {
    /// The report for people.
    pub fn print(&self) {
        let ratio = if self.expected == 0 {
            0.0
        } else {
            self.received as f64 / self.expected as f64 * 100.0
        };
        eprintln!(
            "{} mqtt {} qos {} payload {} B: {} publishers, {} subscribers, rate {}/s each, \
             {} s measured after {} s warm-up",
            self.pattern,
            self.mqtt,
            self.qos,
            self.payload,
            self.publishers,
            self.subscribers,
            if self.rate_per_publisher > 0.0 {
                self.rate_per_publisher.to_string()
            } else {
                "unlimited".into()
            },
            self.duration_s,
            self.warmup_s
        );
        eprintln!(
            "  sent {} (acked {}, refused {}), received {} of {} expected ({ratio:.2} %){}",
            self.sent,
            self.acked,
            self.refused,
            self.received,
            self.expected,
            if self.foreign > 0 {
                format!(", and {} from an earlier run", self.foreign)
            } else {
                String::new()
            }
        );
        eprintln!(
            "  measured: {:.0} msg/s published, {:.0} msg/s delivered",
            self.sent_per_s, self.received_per_s
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
        eprintln!(
            "  load generator CPU: {:.2} cores{}",
            self.load_cpu.cores,
            match (&self.broker_cpu, self.broker_rss_kib) {
                (Some(cpu), Some(rss)) =>
                    format!("; broker CPU {:.2} cores, RSS {} KiB", cpu.cores, rss),
                _ => String::new(),
            }
        );
    }
}
