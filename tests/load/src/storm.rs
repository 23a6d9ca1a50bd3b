//! Reconnect storms: every client connects at once (cold: the broker has never seen their
//! credentials), all of them drop their connections at once, and all reconnect at once
//! (warm: the broker has checked these credentials before), possibly several times.
//!
//! The connections are spread over worker processes (this same binary, `storm-worker`), as
//! in `idle`. The parent drives the phases over the workers' stdin (`drop`, `reconnect`, then
//! end of file) and reads one JSON line per phase from each worker's stdout. Around every
//! phase it reads the broker's CPU time and, with `--probe`, runs a command whose output is
//! a counter (the statements the broker's database executed, say), so that each phase
//! reports what it cost.

use crate::cli::{IdleWorkerArgs, StormArgs};
use crate::client::histogram;
use crate::report::{self, Percentiles};
use crate::stream::{Connector, Identity, Stream};
use crate::template::{expand, expand_opt, Ids};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a worker reports after each phase.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerPhase {
    /// Connections open at the end of the phase (0 after a drop).
    connected: usize,
    /// Connections that failed to open, or that were closed by a drop.
    failed: usize,
    closed: usize,
    first_error: Option<String>,
    elapsed_s: f64,
    latencies_us: Vec<u64>,
}

/// One phase as seen by the parent: its connections and what the broker spent on them.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// `cold`, `drop`, `storm 1`, `storm 2` …
    pub name: String,
    pub connections: usize,
    pub connected: usize,
    pub failed: usize,
    pub closed: usize,
    pub first_error: Option<String>,
    /// From the first connection attempt to the last CONNACK (or the last close), over all
    /// processes.
    pub connect_s: f64,
    pub connects_per_s: f64,
    pub connect_latency_us: Percentiles,
    /// From the probe before the phase to the probe after it, settle time included.
    pub wall_s: f64,
    /// The broker's CPU time (user + system) over `wall_s`.
    pub broker_cpu_s: Option<f64>,
    /// The difference of the probe's counter over `wall_s`.
    pub probe_delta: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct StormReport {
    pub connections: usize,
    pub processes: usize,
    /// A quiet window before anything connects: what the broker spends when nobody does
    /// anything, to compare each phase against.
    pub background: Phase,
    pub phases: Vec<Phase>,
}

/// Reads the broker's CPU time and the probe's counter at a phase boundary.
struct Mark {
    at: Instant,
    cpu: Option<Duration>,
    probe: Option<i64>,
}

async fn mark(args: &StormArgs, label: &str) -> Result<Mark> {
    let probe = match &args.probe {
        Some(command) => Some(run_probe(command, label).await?),
        None => None,
    };
    Ok(Mark {
        at: Instant::now(),
        cpu: args.idle.conn.broker_pid.and_then(report::process_cpu),
        probe,
    })
}

/// Runs `sh -c COMMAND probe LABEL` (so the command sees the boundary's name as `$1`) and
/// reads the integer it prints.
async fn run_probe(command: &str, label: &str) -> Result<i64> {
    let run = Command::new("sh")
        .arg("-c")
        .arg(command)
        .arg("probe")
        .arg(label)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .context("the probe did not finish within 60 s")?
        .context("running the probe")?;
    if !output.status.success() {
        bail!("the probe failed ({}) at {label}", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let text = text.trim();
    text.parse()
        .with_context(|| format!("the probe printed {text:?} at {label}, not an integer"))
}

fn phase(
    name: &str,
    connections: usize,
    before: &Mark,
    after: &Mark,
    reports: Vec<WorkerPhase>,
) -> Phase {
    let mut latency = histogram();
    let mut p = Phase {
        name: name.to_owned(),
        connections,
        connected: 0,
        failed: 0,
        closed: 0,
        first_error: None,
        connect_s: 0.0,
        connects_per_s: 0.0,
        connect_latency_us: Percentiles::default(),
        wall_s: after.at.saturating_duration_since(before.at).as_secs_f64(),
        broker_cpu_s: match (before.cpu, after.cpu) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b).as_secs_f64()),
            _ => None,
        },
        probe_delta: match (before.probe, after.probe) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        },
    };
    for report in reports {
        p.connected += report.connected;
        p.failed += report.failed;
        p.closed += report.closed;
        if p.first_error.is_none() {
            p.first_error = report.first_error;
        }
        p.connect_s = p.connect_s.max(report.elapsed_s);
        for micros in report.latencies_us {
            latency.saturating_record(micros.max(1));
        }
    }
    p.connect_latency_us = Percentiles::of(&latency);
    if !latency.is_empty() {
        p.connects_per_s = p.connected as f64 / p.connect_s.max(1e-9);
    }
    p
}

struct Worker {
    child: Child,
    lines: Lines<BufReader<tokio::io::Take<ChildStdout>>>,
}

/// Reads every worker's report of the phase that is under way.
async fn collect(workers: &mut [Worker], patience: Duration) -> Result<Vec<WorkerPhase>> {
    let mut reports = Vec::with_capacity(workers.len());
    for worker in workers.iter_mut() {
        match tokio::time::timeout(patience, worker.lines.next_line()).await {
            Ok(Ok(Some(line))) => reports.push(
                serde_json::from_str::<WorkerPhase>(&line).context("reading a worker's report")?,
            ),
            Ok(Ok(None)) => bail!("a storm worker exited without a report"),
            Ok(Err(e)) => bail!("reading a storm worker: {e}"),
            Err(_) => bail!("a storm worker did not finish its phase within {patience:?}"),
        }
    }
    Ok(reports)
}

/// Tells every worker to start the next phase, as close together as the pipes allow.
async fn tell(workers: &mut [Worker], word: &str) -> Result<()> {
    for worker in workers.iter_mut() {
        let stdin = worker.child.stdin.as_mut().context("worker stdin")?;
        stdin.write_all(format!("{word}\n").as_bytes()).await?;
        stdin.flush().await?;
    }
    Ok(())
}

pub async fn storm(args: StormArgs) -> Result<StormReport> {
    args.check()?;
    let idle = &args.idle;
    let settle = Duration::from_secs_f64(idle.settle);
    let processes = idle.connections.div_ceil(idle.per_process);
    let exe = std::env::current_exe().context("finding this program")?;

    let quiet_start = mark(&args, "background-start").await?;
    tokio::time::sleep(settle).await;
    let quiet_end = mark(&args, "background").await?;
    let background = phase("background", 0, &quiet_start, &quiet_end, Vec::new());

    let mut workers = Vec::with_capacity(processes);
    for p in 0..processes {
        let first = p * idle.per_process;
        let count = idle.per_process.min(idle.connections - first);
        let mut argv = crate::idle::worker_argv(idle, first, count, processes);
        argv[0] = "storm-worker".into();
        let mut child = Command::new(&exe)
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a storm worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let lines = BufReader::new(stdout.take(256 << 20)).lines();
        workers.push(Worker { child, lines });
    }
    // A worker that hangs is bounded by its own connect timeouts; this is the backstop.
    let patience = Duration::from_secs(idle.conn.connect_timeout_secs)
        + Duration::from_secs_f64(if idle.connect_rate > 0.0 {
            idle.connections as f64 / idle.connect_rate
        } else {
            0.0
        })
        + Duration::from_secs(600);

    let mut phases = Vec::new();
    let mut before = quiet_end;
    let outcome: Result<()> = async {
        let reports = collect(&mut workers, patience).await?;
        tokio::time::sleep(settle).await;
        let after = mark(&args, "cold").await?;
        phases.push(phase("cold", idle.connections, &before, &after, reports));
        before = after;
        for n in 1..=args.storms {
            tell(&mut workers, "drop").await?;
            let reports = collect(&mut workers, patience).await?;
            tokio::time::sleep(Duration::from_secs_f64(args.pause)).await;
            let label = format!("drop {n}");
            let after = mark(&args, &label).await?;
            phases.push(phase(&label, idle.connections, &before, &after, reports));
            before = after;

            tell(&mut workers, "reconnect").await?;
            let reports = collect(&mut workers, patience).await?;
            tokio::time::sleep(settle).await;
            let label = format!("storm {n}");
            let after = mark(&args, &label).await?;
            phases.push(phase(&label, idle.connections, &before, &after, reports));
            before = after;
        }
        Ok(())
    }
    .await;

    for worker in &mut workers {
        // Closing stdin tells the worker to close its connections and exit.
        drop(worker.child.stdin.take());
    }
    for worker in &mut workers {
        if tokio::time::timeout(Duration::from_secs(30), worker.child.wait())
            .await
            .is_err()
        {
            let _ = worker.child.kill().await;
        }
    }
    outcome?;
    Ok(StormReport {
        connections: idle.connections,
        processes,
        background,
        phases,
    })
}

/// Opens connections `first .. first + count` with at most `connect_concurrency` handshakes
/// in flight (and at the worker's share of `--connect-rate`).
async fn connect_all(
    args: &IdleWorkerArgs,
    connector: &Arc<Connector>,
    ids: &Arc<Ids>,
    streams: &mut Vec<Stream>,
) -> Result<WorkerPhase> {
    let idle = &args.idle;
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
            client_id: expand(&idle.client_id, index, ids)?,
            username: expand_opt(&idle.username, index, ids)?,
            password: expand_opt(&idle.password, index, ids)?,
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
    let mut report = WorkerPhase {
        connected: 0,
        failed: 0,
        closed: 0,
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
    Ok(report)
}

async fn send(report: &WorkerPhase) -> Result<()> {
    let mut line = serde_json::to_string(report)?;
    line.push('\n');
    let mut stdout = tokio::io::stdout();
    stdout.write_all(line.as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}

/// One worker: connects its share, then on each `drop` line from its parent closes every
/// connection at once (as clients that restart do: no DISCONNECT), and on each `reconnect`
/// line opens them all again; reports after each; stops at end of input (or when no
/// instruction came for `hold_secs`).
pub async fn worker(args: IdleWorkerArgs) -> Result<()> {
    let idle = &args.idle;
    idle.check()?;
    if args.count > idle.per_process {
        bail!("--count is larger than --per-process");
    }
    let ids = Arc::new(idle.conn.ids()?);
    let connector = Arc::new(idle.conn.connector()?);
    let mut streams: Vec<Stream> = Vec::with_capacity(args.count);
    send(&connect_all(&args, &connector, &ids, &mut streams).await?).await?;

    let hold = Duration::from_secs(args.hold_secs);
    let mut input = BufReader::new(tokio::io::stdin().take(1 << 20)).lines();
    loop {
        let line = match tokio::time::timeout(hold, input.next_line()).await {
            Ok(Ok(Some(line))) => line,
            _ => break,
        };
        match line.trim() {
            "drop" => {
                let started = Instant::now();
                let closed = streams.len();
                streams.clear();
                send(&WorkerPhase {
                    connected: 0,
                    failed: 0,
                    closed,
                    first_error: None,
                    elapsed_s: started.elapsed().as_secs_f64(),
                    latencies_us: Vec::new(),
                })
                .await?;
            }
            "reconnect" => {
                streams.clear();
                send(&connect_all(&args, &connector, &ids, &mut streams).await?).await?;
            }
            other => bail!("unknown instruction from the parent: {other:?}"),
        }
    }
    drop(streams);
    Ok(())
}

impl StormReport {
    /// The report for people.
    pub fn print(&self) {
        eprintln!(
            "storm: {} connections over {} processes",
            self.connections, self.processes
        );
        let quiet = &self.background;
        eprintln!(
            "  background over {:.1} s: broker CPU {}, probe {}",
            quiet.wall_s,
            seconds(quiet.broker_cpu_s),
            delta(quiet.probe_delta)
        );
        for p in &self.phases {
            if p.connect_latency_us.count > 0 {
                eprintln!(
                    "  {}: {} connected, {} failed, {:.1}/s over {:.2} s; latency {}",
                    p.name,
                    p.connected,
                    p.failed,
                    p.connects_per_s,
                    p.connect_s,
                    p.connect_latency_us.line()
                );
            } else {
                eprintln!("  {}: {} closed, {} failed", p.name, p.closed, p.failed);
            }
            if let Some(error) = &p.first_error {
                eprintln!("    first error: {error}");
            }
            eprintln!(
                "    over {:.1} s: broker CPU {}, probe {}",
                p.wall_s,
                seconds(p.broker_cpu_s),
                delta(p.probe_delta)
            );
        }
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "—".into(), |s| format!("{s:.2} s"))
}

fn delta(value: Option<i64>) -> String {
    value.map_or_else(|| "—".into(), |d| format!("+{d}"))
}
