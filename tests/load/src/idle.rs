//! Idle connections: open many, hold them, and see what each costs the broker.
//!
//! One process may hold at most 20,000 descriptors here, so the connections are spread over
//! worker processes (this same binary, `idle-worker`), each connecting its share and
//! reporting one JSON line when done; the parent then reads the broker's resident memory and
//! closes the workers' stdin to let them go.

use crate::cli::{IdleArgs, IdleWorkerArgs};
use crate::report::{self, CpuUse, Percentiles};
use crate::worker::{self, Share, Totals, Workers};
use anyhow::Result;
use serde::Serialize;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

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
    let started = Instant::now();
    let cpu_before = report::own_cpu();
    let mut workers = Workers::spawn("idle-worker", "an idle worker", &args)?;
    let processes = workers.processes();
    let reports = workers.collect().await?;
    let connect_wall = started.elapsed();
    let idle_from = (Instant::now(), pid.and_then(report::process_cpu));
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_after = pid.and_then(report::process_rss_kib);
    let broker_idle_cpu = match (idle_from.1, pid.and_then(report::process_cpu)) {
        (Some(before), Some(after)) => Some(CpuUse::over(before, after, idle_from.0.elapsed())),
        _ => None,
    };
    workers.finish().await;
    let load_cpu = CpuUse::over(cpu_before, report::own_cpu(), started.elapsed());

    let totals = Totals::of(reports);
    let connect_s = if totals.elapsed_s == 0.0 {
        connect_wall.as_secs_f64()
    } else {
        totals.elapsed_s
    };
    let connected = totals.connected;
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
        failed: totals.failed,
        first_error: totals.first_error,
        connect_s,
        connects_per_s: connected as f64 / connect_s.max(1e-9),
        connect_latency_us: totals.connect_latency_us,
        broker_rss_before_kib: rss_before,
        broker_rss_after_kib: rss_after,
        broker_bytes_per_connection: per_connection,
        broker_idle_cpu,
        load_cpu,
    })
}

/// One worker: opens its share of the connections, reports, holds them until its stdin
/// closes (or `hold_secs` pass), then closes them.
pub async fn worker(args: IdleWorkerArgs) -> Result<()> {
    let mut share = Share::new(args)?;
    worker::send(&share.connect_all().await?).await?;

    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(share.hold(), async {
        while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    drop(share);
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
