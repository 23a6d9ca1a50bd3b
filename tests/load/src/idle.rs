//! Idle connections: open many, hold them, and see what each costs the broker.
//!
//! One process may hold at most 20,000 descriptors here, so the connections are spread over
//! worker processes (this same binary, `idle-worker`), each connecting its share and
//! reporting one JSON line when done; the parent then reads the broker's resident memory and
//! closes the workers' stdin to let them go.

use crate::cli::{IdleArgs, IdleWorkerArgs};
use crate::client::histogram;
use crate::report::{self, CpuUse, Percentiles};
use crate::stream::{Identity, Stream};
use crate::template::{expand, expand_opt};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What one worker process reports once its connections are open.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerReport {
    connected: usize,
    failed: usize,
    first_error: Option<String>,
    elapsed_s: f64,
    latencies_us: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub connections: usize,
    pub processes: usize,
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// From the first connection attempt to the last CONNACK, over all processes.
    pub connect_s: f64,
    pub connects_per_s: f64,
    pub connect_latency_us: Percentiles,
    pub broker_rss_before_kib: Option<u64>,
    pub broker_rss_after_kib: Option<u64>,
    /// Growth of the broker's resident memory per open connection.
    pub broker_bytes_per_connection: Option<f64>,
    /// The broker's CPU while every connection is open and idle (over `--settle`).
    pub broker_idle_cpu: Option<CpuUse>,
    pub load_cpu: CpuUse,
}

pub async fn idle(args: IdleArgs) -> Result<IdleReport> {
    args.check()?;
    let pid = args.conn.broker_pid;
    let rss_before = pid.and_then(report::process_rss_kib);
    let processes = args.connections.div_ceil(args.per_process);
    let exe = std::env::current_exe().context("finding this program")?;
    let started = Instant::now();
    let cpu_before = report::own_cpu();
    let mut workers = Vec::with_capacity(processes);
    for p in 0..processes {
        let first = p * args.per_process;
        let count = args.per_process.min(args.connections - first);
        let child = Command::new(&exe)
            .args(worker_argv(&args, first, count, processes))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting an idle worker")?;
        workers.push(child);
    }
    // A worker that hangs is bounded by its own connect timeouts; this is the backstop.
    let patience = Duration::from_secs(args.conn.connect_timeout_secs)
        + Duration::from_secs_f64(if args.connect_rate > 0.0 {
            args.connections as f64 / args.connect_rate
        } else {
            0.0
        })
        + Duration::from_secs(600);
    let mut reports = Vec::with_capacity(processes);
    for worker in &mut workers {
        let stdout = worker.stdout.take().context("worker stdout")?;
        let mut line = String::new();
        let mut reader = BufReader::new(stdout).take(64 << 20);
        match tokio::time::timeout(patience, reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => reports.push(
                serde_json::from_str::<WorkerReport>(&line).context("reading a worker's report")?,
            ),
            Ok(Ok(_)) => bail!("an idle worker exited without a report"),
            Ok(Err(e)) => bail!("reading an idle worker: {e}"),
            Err(_) => bail!("an idle worker did not finish connecting within {patience:?}"),
        }
    }
    let connect_wall = started.elapsed();
    let idle_from = (Instant::now(), pid.and_then(report::process_cpu));
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_after = pid.and_then(report::process_rss_kib);
    let broker_idle_cpu = match (idle_from.1, pid.and_then(report::process_cpu)) {
        (Some(before), Some(after)) => Some(CpuUse::over(before, after, idle_from.0.elapsed())),
        _ => None,
    };

    for worker in &mut workers {
        // Closing stdin tells the worker to close its connections and exit.
        if let Some(mut stdin) = worker.stdin.take() {
            let _ = stdin.shutdown().await;
        }
    }
    for worker in &mut workers {
        if tokio::time::timeout(Duration::from_secs(30), worker.wait())
            .await
            .is_err()
        {
            let _ = worker.kill().await;
        }
    }
    let load_cpu = CpuUse::over(cpu_before, report::own_cpu(), started.elapsed());

    let mut latency = histogram();
    let (mut connected, mut failed, mut first_error, mut connect_s) = (0, 0, None, 0f64);
    for report in reports {
        connected += report.connected;
        failed += report.failed;
        if first_error.is_none() {
            first_error = report.first_error;
        }
        connect_s = connect_s.max(report.elapsed_s);
        for micros in report.latencies_us {
            latency.saturating_record(micros.max(1));
        }
    }
    if connect_s == 0.0 {
        connect_s = connect_wall.as_secs_f64();
    }
    let per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) if connected > 0 => {
            Some(after.saturating_sub(before) as f64 * 1024.0 / connected as f64)
        }
        _ => None,
    };
    Ok(IdleReport {
        connections: args.connections,
        processes,
        connected,
        failed,
        first_error,
        connect_s,
        connects_per_s: connected as f64 / connect_s.max(1e-9),
        connect_latency_us: Percentiles::of(&latency),
        broker_rss_before_kib: rss_before,
        broker_rss_after_kib: rss_after,
        broker_bytes_per_connection: per_connection,
        broker_idle_cpu,
        load_cpu,
    })
}

/// The worker's command line: the parent's options, its share, and its part of the rate.
pub(crate) fn worker_argv(
    args: &IdleArgs,
    first: usize,
    count: usize,
    processes: usize,
) -> Vec<String> {
    let c = &args.conn;
    let mut argv: Vec<String> = vec![
        "idle-worker".into(),
        format!("--broker={}", c.broker),
        format!("--mqtt={}", c.mqtt),
        format!("--keep-alive={}", c.keep_alive),
        format!("--connect-timeout-secs={}", c.connect_timeout_secs),
        format!("--connect-concurrency={}", c.connect_concurrency),
        format!("--sources={}", c.sources),
        format!("--tls-server-name={}", c.tls_server_name),
        format!("--connections={}", args.connections),
        format!("--per-process={}", args.per_process),
        format!("--connect-rate={}", args.connect_rate / processes as f64),
        format!("--client-id={}", args.client_id),
        format!("--first={first}"),
        format!("--count={count}"),
    ];
    let optional = [
        ("--ids", c.ids.as_ref().map(|p| p.display().to_string())),
        (
            "--tls-ca",
            c.tls_ca.as_ref().map(|p| p.display().to_string()),
        ),
        ("--tls-cert", c.tls_cert.clone()),
        ("--tls-key", c.tls_key.clone()),
        ("--username", args.username.clone()),
        ("--password", args.password.clone()),
    ];
    for (flag, value) in optional {
        if let Some(value) = value {
            argv.push(format!("{flag}={value}"));
        }
    }
    argv
}

/// One worker: opens `count` connections from index `first`, reports, holds them until its
/// stdin closes (or `hold_secs` pass), then closes them.
pub async fn worker(args: IdleWorkerArgs) -> Result<()> {
    let idle = &args.idle;
    idle.check()?;
    if args.count > idle.per_process {
        bail!("--count is larger than --per-process");
    }
    let ids = Arc::new(idle.conn.ids()?);
    let connector = Arc::new(idle.conn.connector()?);
    let permits = Arc::new(Semaphore::new(idle.conn.connect_concurrency));
    let interval =
        (idle.connect_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / idle.connect_rate));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (n, index) in (args.first..args.first + args.count).enumerate() {
        if let Some(interval) = interval {
            tokio::time::sleep_until(started + interval * n as u32).await;
        }
        let identity = Identity {
            client_id: expand(&idle.client_id, index, &ids)?,
            username: expand_opt(&idle.username, index, &ids)?,
            password: expand_opt(&idle.password, index, &ids)?,
            subscribe: None,
        };
        let permit = permits.clone().acquire_owned().await?;
        let (connector, ids) = (connector.clone(), ids.clone());
        tasks.spawn(async move {
            let session = connector.open(index, &identity, &ids).await;
            drop(permit);
            session
        });
    }
    let mut streams: Vec<Stream> = Vec::with_capacity(args.count);
    let mut report = WorkerReport {
        connected: 0,
        failed: 0,
        first_error: None,
        elapsed_s: 0.0,
        latencies_us: Vec::with_capacity(args.count),
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(session)) => {
                report.connected += 1;
                let micros = u64::try_from(session.connect_latency.as_micros()).unwrap_or(u64::MAX);
                report.latencies_us.push(micros);
                streams.push(session.stream);
            }
            Ok(Err(e)) => {
                report.failed += 1;
                report.first_error.get_or_insert(format!("{e:#}"));
            }
            Err(e) => {
                report.failed += 1;
                report
                    .first_error
                    .get_or_insert(format!("connect task: {e}"));
            }
        }
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    let mut line = serde_json::to_string(&report)?;
    line.push('\n');
    let mut stdout = tokio::io::stdout();
    stdout.write_all(line.as_bytes()).await?;
    stdout.flush().await?;

    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let hold = Duration::from_secs(args.hold_secs);
    let _ = tokio::time::timeout(hold, async {
        while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    drop(streams);
    Ok(())
}

impl IdleReport {
    /// The report for people.
    pub fn print(&self) {
        eprintln!(
            "idle: {} of {} connections open ({} failed) over {} processes",
            self.connected, self.connections, self.failed, self.processes
        );
        if let Some(error) = &self.first_error {
            eprintln!("  first error: {error}");
        }
        eprintln!(
            "  connect: {:.1} connections/s over {:.2} s; latency {}",
            self.connects_per_s,
            self.connect_s,
            self.connect_latency_us.line()
        );
        if let (Some(before), Some(after), Some(per)) = (
            self.broker_rss_before_kib,
            self.broker_rss_after_kib,
            self.broker_bytes_per_connection,
        ) {
            eprintln!("  broker RSS {before} KiB → {after} KiB: {per:.0} bytes per connection");
        }
        if let Some(cpu) = &self.broker_idle_cpu {
            eprintln!(
                "  broker CPU while idle: {:.3} s over the settle time ({:.4} cores)",
                cpu.seconds, cpu.cores
            );
        }
        eprintln!("  load generator CPU: {:.2} cores", self.load_cpu.cores);
    }
}
