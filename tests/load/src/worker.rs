//! Worker processes for `idle` and `storm`: one process may hold at most 20,000 descriptors
//! here, so their connections are spread over child processes (this same binary, with the
//! `idle-worker` or `storm-worker` command). The parent spawns one per `--per-process`
//! connections, reads one JSON line per phase from each worker's stdout, may send them
//! instructions (one word a line) over their stdin, and lets them go by closing it.

use crate::cli::{IdleArgs, IdleWorkerArgs};
use crate::client::histogram;
use crate::report::Percentiles;
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

/// What a worker reports after each phase (connecting its share, or dropping it).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Connections open at the end of the phase (0 after a drop).
    pub connected: usize,
    /// Connections that failed to open.
    pub failed: usize,
    /// Connections closed by a drop.
    #[serde(default)]
    pub closed: usize,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    pub latencies_us: Vec<u64>,
}

/// The reports of every worker for one phase, added up.
pub struct Totals {
    pub connected: usize,
    pub failed: usize,
    pub closed: usize,
    pub first_error: Option<String>,
    /// The longest of the workers' phases: from the first connection attempt to the last
    /// CONNACK (or the last close), over all processes.
    pub elapsed_s: f64,
    pub connect_latency_us: Percentiles,
    /// Whether any connection was opened (and so timed).
    pub timed: bool,
}

impl Totals {
    pub fn of(reports: Vec<WorkerReport>) -> Self {
        let mut latency = histogram();
        let mut totals = Totals {
            connected: 0,
            failed: 0,
            closed: 0,
            first_error: None,
            elapsed_s: 0.0,
            connect_latency_us: Percentiles::default(),
            timed: false,
        };
        for report in reports {
            totals.connected += report.connected;
            totals.failed += report.failed;
            totals.closed += report.closed;
            if totals.first_error.is_none() {
                totals.first_error = report.first_error;
            }
            totals.elapsed_s = totals.elapsed_s.max(report.elapsed_s);
            for micros in report.latencies_us {
                latency.saturating_record(micros.max(1));
            }
        }
        totals.connect_latency_us = Percentiles::of(&latency);
        totals.timed = !latency.is_empty();
        totals
    }
}

/// One worker process as seen by its parent.
pub struct Worker {
    child: Child,
    lines: Lines<BufReader<tokio::io::Take<ChildStdout>>>,
}

/// The worker processes of one `idle` or `storm` run.
pub struct Workers {
    workers: Vec<Worker>,
    /// How the errors name a worker: "an idle worker", "a storm worker".
    what: &'static str,
    /// How long a phase may take a worker before the parent gives up: a worker that hangs is
    /// bounded by its own connect timeouts; this is the backstop.
    patience: Duration,
}

impl Workers {
    /// Starts one `command` worker (`idle-worker` or `storm-worker`) per `--per-process`
    /// connections of `args`; each starts connecting its share at once.
    pub fn spawn(command: &str, what: &'static str, args: &IdleArgs) -> Result<Self> {
        let processes = args.connections.div_ceil(args.per_process);
        let exe = std::env::current_exe().context("finding this program")?;
        let mut workers = Vec::with_capacity(processes);
        for p in 0..processes {
            let first = p * args.per_process;
            let count = args.per_process.min(args.connections - first);
            let mut child = Command::new(&exe)
                .args(argv(command, args, first, count, processes))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {what}"))?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let lines = BufReader::new(stdout.take(256 << 20)).lines();
            workers.push(Worker { child, lines });
        }
        let patience = Duration::from_secs(args.conn.connect_timeout_secs)
            + Duration::from_secs_f64(if args.connect_rate > 0.0 {
                args.connections as f64 / args.connect_rate
            } else {
                0.0
            })
            + Duration::from_secs(600);
        Ok(Workers {
            workers,
            what,
            patience,
        })
    }

    /// The number of worker processes.
    pub fn processes(&self) -> usize {
        self.workers.len()
    }

    /// Reads every worker's report of the phase under way.
    pub async fn collect(&mut self) -> Result<Vec<WorkerReport>> {
        let mut reports = Vec::with_capacity(self.workers.len());
        for worker in &mut self.workers {
            match tokio::time::timeout(self.patience, worker.lines.next_line()).await {
                Ok(Ok(Some(line))) => reports.push(
                    serde_json::from_str::<WorkerReport>(&line)
                        .context("reading a worker's report")?,
                ),
                Ok(Ok(None)) => bail!("{} exited without a report", self.what),
                Ok(Err(e)) => bail!("reading {}: {e}", self.what),
                Err(_) => bail!(
                    "{} did not finish its phase within {:?}",
                    self.what,
                    self.patience
                ),
            }
        }
        Ok(reports)
    }

    /// Tells every worker to start the next phase, as close together as the pipes allow.
    pub async fn tell(&mut self, word: &str) -> Result<()> {
        for worker in &mut self.workers {
            let stdin = worker.child.stdin.as_mut().context("worker stdin")?;
            stdin.write_all(format!("{word}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        Ok(())
    }

    /// Closes every worker's stdin, which tells it to close its connections and exit, and
    /// waits for them (at most 30 s each, then kills it).
    pub async fn finish(mut self) {
        for worker in &mut self.workers {
            drop(worker.child.stdin.take());
        }
        for worker in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(30), worker.child.wait())
                .await
                .is_err()
            {
                let _ = worker.child.kill().await;
            }
        }
    }
}

/// A worker's command line: the parent's options, its share, and its part of the rate.
fn argv(
    command: &str,
    args: &IdleArgs,
    first: usize,
    count: usize,
    processes: usize,
) -> Vec<String> {
    let c = &args.conn;
    let mut argv: Vec<String> = vec![
        command.into(),
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

/// The worker's side: its connector and the connections it holds.
pub struct Share {
    args: IdleWorkerArgs,
    connector: Arc<Connector>,
    ids: Arc<Ids>,
    pub streams: Vec<Stream>,
}

impl Share {
    pub fn new(args: IdleWorkerArgs) -> Result<Self> {
        args.idle.check()?;
        if args.count > args.idle.per_process {
            bail!("--count is larger than --per-process");
        }
        Ok(Share {
            ids: Arc::new(args.idle.conn.ids()?),
            connector: Arc::new(args.idle.conn.connector()?),
            streams: Vec::with_capacity(args.count),
            args,
        })
    }

    /// How long the worker waits for its parent's next word before it gives up.
    pub fn hold(&self) -> Duration {
        Duration::from_secs(self.args.hold_secs)
    }

    /// Opens connections `first .. first + count` with at most `connect_concurrency`
    /// handshakes in flight (and at the worker's share of `--connect-rate`), keeps those
    /// that opened.
    pub async fn connect_all(&mut self) -> Result<WorkerReport> {
        let (args, idle) = (&self.args, &self.args.idle);
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
                client_id: expand(&idle.client_id, index, &self.ids)?,
                username: expand_opt(&idle.username, index, &self.ids)?,
                password: expand_opt(&idle.password, index, &self.ids)?,
                subscribe: None,
            };
            let permit = permits.clone().acquire_owned().await?;
            let (connector, ids) = (self.connector.clone(), self.ids.clone());
            tasks.spawn(async move {
                let session = connector.open(index, &identity, &ids).await;
                drop(permit);
                session
            });
        }
        let mut report = WorkerReport {
            latencies_us: Vec::with_capacity(args.count),
            ..WorkerReport::default()
        };
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(session)) => {
                    report.connected += 1;
                    let micros =
                        u64::try_from(session.connect_latency.as_micros()).unwrap_or(u64::MAX);
                    report.latencies_us.push(micros);
                    self.streams.push(session.stream);
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
}

/// Writes one report line to the parent.
pub async fn send(report: &WorkerReport) -> Result<()> {
    let mut line = serde_json::to_string(report)?;
    line.push('\n');
    let mut stdout = tokio::io::stdout();
    stdout.write_all(line.as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}
