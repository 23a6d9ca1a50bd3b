//! Reconnect storms: every client connects at once (cold: the broker has never seen their
//! credentials), all of them drop their connections at once, and all reconnect at once
//! (warm: the broker has checked these credentials before), possibly several times.
//!
//! The connections are spread over worker processes (this same binary, `storm-worker`;
//! `crate::worker`), as in `idle`. The parent drives the phases over the workers' stdin (`drop`, `reconnect`, then
//! end of file) and reads one JSON line per phase from each worker's stdout. Around every
//! phase it reads the broker's CPU time and, with `--probe`, runs a command whose output is
//! a counter (the statements the broker's database executed, say), so that each phase
//! reports what it cost.

use crate::cli::{IdleWorkerArgs, StormArgs};
use crate::report::{self, Percentiles};
use crate::worker::{self, Share, Totals, WorkerReport, Workers};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

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
    reports: Vec<WorkerReport>,
) -> Phase {
    let totals = Totals::of(reports);
    Phase {
        name: name.to_owned(),
        connections,
        connected: totals.connected,
        failed: totals.failed,
        closed: totals.closed,
        first_error: totals.first_error,
        connect_s: totals.elapsed_s,
        connects_per_s: if totals.timed {
            totals.connected as f64 / totals.elapsed_s.max(1e-9)
        } else {
            0.0
        },
        connect_latency_us: totals.connect_latency_us,
        wall_s: after.at.saturating_duration_since(before.at).as_secs_f64(),
        broker_cpu_s: match (before.cpu, after.cpu) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b).as_secs_f64()),
            _ => None,
        },
        probe_delta: match (before.probe, after.probe) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        },
    }
}

pub async fn storm(args: StormArgs) -> Result<StormReport> {
    args.check()?;
    let idle = &args.idle;
    let settle = Duration::from_secs_f64(idle.settle);

    let quiet_start = mark(&args, "background-start").await?;
    tokio::time::sleep(settle).await;
    let quiet_end = mark(&args, "background").await?;
    let background = phase("background", 0, &quiet_start, &quiet_end, Vec::new());

    let mut workers = Workers::spawn("storm-worker", "a storm worker", idle)?;
    let processes = workers.processes();
    let mut phases = Vec::new();
    let mut before = quiet_end;
    let outcome: Result<()> = async {
        let reports = workers.collect().await?;
        tokio::time::sleep(settle).await;
        let after = mark(&args, "cold").await?;
        phases.push(phase("cold", idle.connections, &before, &after, reports));
        before = after;
        for n in 1..=args.storms {
            workers.tell("drop").await?;
            let reports = workers.collect().await?;
            tokio::time::sleep(Duration::from_secs_f64(args.pause)).await;
            let label = format!("drop {n}");
            let after = mark(&args, &label).await?;
            phases.push(phase(&label, idle.connections, &before, &after, reports));
            before = after;

            workers.tell("reconnect").await?;
            let reports = workers.collect().await?;
            tokio::time::sleep(settle).await;
            let label = format!("storm {n}");
            let after = mark(&args, &label).await?;
            phases.push(phase(&label, idle.connections, &before, &after, reports));
            before = after;
        }
        Ok(())
    }
    .await;
    workers.finish().await;
    outcome?;
    Ok(StormReport {
        connections: idle.connections,
        processes,
        background,
        phases,
    })
}

/// One worker: connects its share, then on each `drop` line from its parent closes every
/// connection at once (as clients that restart do: no DISCONNECT), and on each `reconnect`
/// line opens them all again; reports after each; stops at end of input (or when no
/// instruction came for `hold_secs`).
pub async fn worker(args: IdleWorkerArgs) -> Result<()> {
    let mut share = Share::new(args)?;
    worker::send(&share.connect_all().await?).await?;

    let hold = share.hold();
    let mut input = BufReader::new(tokio::io::stdin().take(1 << 20)).lines();
    loop {
        let line = match tokio::time::timeout(hold, input.next_line()).await {
            Ok(Ok(Some(line))) => line,
            _ => break,
        };
        match line.trim() {
            "drop" => {
                let started = Instant::now();
                let closed = share.streams.len();
                share.streams.clear();
                worker::send(&WorkerReport {
                    closed,
                    elapsed_s: started.elapsed().as_secs_f64(),
                    ..WorkerReport::default()
                })
                .await?;
            }
            "reconnect" => {
                share.streams.clear();
                worker::send(&share.connect_all().await?).await?;
            }
            other => bail!("unknown instruction from the parent: {other:?}"),
        }
    }
    drop(share);
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
