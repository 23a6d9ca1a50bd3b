//! Command-line options, with the bounds that keep every run finite.

use crate::stream::{Connector, Tls};
use crate::template::Ids;
use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use iotcore_codec::ProtocolVersion;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Load generator for MQTT brokers on this machine: throughput, end-to-end latency, idle
/// connections, connect rate and reconnect storms. Targets must be loopback addresses.
#[derive(Parser, Debug)]
#[command(name = "iotcore-load", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Publishers and subscribers in a pattern: throughput and end-to-end latency.
    Run(RunArgs),
    /// Publishers whose messages a rule forwards to a webhook receiver that this process
    /// runs: messages per second from MQTT publish to webhook 2xx, and end-to-end latency.
    Rules(RulesArgs),
    /// Opens and holds idle connections (over several processes): connect rate, connect
    /// latency, and the broker's memory per connection.
    Idle(IdleArgs),
    /// One process's share of an idle run (started by `idle`).
    #[command(hide = true)]
    IdleWorker(IdleWorkerArgs),
    /// Reconnect storms: all clients connect at once (cold), then drop their connections
    /// at once and reconnect at once (warm), `--storms` times; per phase: connect rate,
    /// latency, failures, the broker's CPU time and a counter read by `--probe`.
    Storm(StormArgs),
    /// One process's share of a storm (started by `storm`).
    #[command(hide = true)]
    StormWorker(IdleWorkerArgs),
}

/// Strings that may hold `{i}` (client index), `{id}` and `{secret}` (fields of line `i` of
/// `--ids`) are templates.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Broker address; loopback only.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// MQTT version: 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1", value_parser = ["3.1.1", "5"])]
    pub mqtt: String,
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
    #[arg(long, default_value_t = 30)]
    pub connect_timeout_secs: u64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    pub connect_concurrency: usize,
    /// Spread connections over this many source addresses 127.0.0.1 … 127.0.0.N.
    #[arg(long, default_value_t = 1)]
    pub sources: u8,
    /// File of `id secret` lines for the `{id}` and `{secret}` template fields.
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Connect over TLS, trusting this CA (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    #[arg(long, default_value = "localhost")]
    pub tls_server_name: String,
    /// Client certificate chain (PEM file template) to present over TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<String>,
    /// Client private key (PEM file template).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<String>,
    /// Process id of the broker, to report its CPU and memory.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

impl ConnArgs {
    pub fn version(&self) -> ProtocolVersion {
        if self.mqtt == "5" {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        }
    }

    pub fn check(&self) -> Result<()> {
        if !self.broker.ip().is_loopback() {
            bail!("--broker must be a loopback address, not {}", self.broker);
        }
        if self.sources == 0 || self.sources > 250 {
            bail!("--sources must be 1..=250");
        }
        if !(1..=10_000).contains(&self.connect_concurrency) {
            bail!("--connect-concurrency must be 1..=10000");
        }
        if !(1..=600).contains(&self.connect_timeout_secs) {
            bail!("--connect-timeout-secs must be 1..=600");
        }
        if self.tls_cert.is_some() && self.tls_ca.is_none() {
            bail!("--tls-cert needs --tls-ca");
        }
        Ok(())
    }

    pub fn ids(&self) -> Result<Ids> {
        match &self.ids {
            Some(path) => Ids::load(path),
            None => Ok(Ids::default()),
        }
    }

    pub fn connector(&self) -> Result<Connector> {
        let tls = match &self.tls_ca {
            Some(ca) => Some(Arc::new(Tls::new(ca, &self.tls_server_name)?)),
            None => None,
        };
        Ok(Connector {
            addr: self.broker,
            sources: self.sources,
            tls,
            client_cert: self.tls_cert.clone().zip(self.tls_key.clone()),
            version: self.version(),
            keep_alive: self.keep_alive,
            timeout: Duration::from_secs(self.connect_timeout_secs),
            send_buffer: None,
        })
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Publisher i → subscriber i, each pair on its own topic.
    Pairs,
    /// Many publishers → one subscriber on a wildcard filter.
    FanIn,
    /// One publisher → many subscribers of its topic.
    FanOut,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Pairs => "pairs",
            Pattern::FanIn => "fan-in",
            Pattern::FanOut => "fan-out",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[arg(long, value_enum, default_value = "pairs")]
    pub pattern: Pattern,
    /// Pairs, publishers (fan-in) or subscribers (fan-out).
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes (at least 12: the send time and the run tag).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Messages per second per publisher; 0 sends as fast as the broker accepts.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Longest wait for late messages and acknowledgements after publishing stops.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    #[arg(long, default_value = "load-pub-{i}")]
    pub pub_client_id: String,
    #[arg(long)]
    pub pub_username: Option<String>,
    #[arg(long)]
    pub pub_password: Option<String>,
    /// Topic of publisher i.
    #[arg(long, default_value = "load/{i}")]
    pub topic: String,
    #[arg(long, default_value = "load-sub-{i}")]
    pub sub_client_id: String,
    #[arg(long)]
    pub sub_username: Option<String>,
    #[arg(long)]
    pub sub_password: Option<String>,
    /// Filter of subscriber i; by default the topic (pairs), `load/+` (fan-in) or
    /// publisher 0's topic (fan-out).
    #[arg(long)]
    pub filter: Option<String>,
}

impl RunArgs {
    pub fn check(&self) -> Result<()> {
        self.conn.check()?;
        if !(1..=100_000).contains(&self.clients) {
            bail!("--clients must be 1..=100000");
        }
        if !(12..=1_000_000).contains(&self.payload) {
            bail!("--payload must be 12..=1000000 bytes");
        }
        if !(0.0..=1_000_000.0).contains(&self.rate) {
            bail!("--rate must be 0..=1000000 (0: unlimited)");
        }
        for (name, value) in [
            ("--duration", self.duration),
            ("--warmup", self.warmup),
            ("--drain", self.drain),
        ] {
            if !(0.0..=3600.0).contains(&value) {
                bail!("{name} must be 0..=3600 seconds");
            }
        }
        if self.duration <= 0.0 {
            bail!("--duration must be positive");
        }
        if !(1..=65_535).contains(&self.inflight) {
            bail!("--inflight must be 1..=65535");
        }
        Ok(())
    }
}

#[derive(Args, Debug, Clone)]
pub struct RulesArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Where the webhook receiver listens (loopback only); the rule's URL points here.
    #[arg(long, default_value = "127.0.0.1:9800")]
    pub receiver: SocketAddr,
    /// Publishers.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes: a JSON object with the send time and the run tag, padded to this size
    /// (at least 60).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Messages per second per publisher; 0 sends as fast as the broker accepts.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Longest wait for the webhook to receive what was published, after publishing stops.
    #[arg(long, default_value_t = 30.0)]
    pub drain: f64,
    /// The wait ends early once nothing new arrived for this many seconds.
    #[arg(long, default_value_t = 3.0)]
    pub quiet: f64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    #[arg(long, default_value = "load-pub-{i}")]
    pub pub_client_id: String,
    #[arg(long)]
    pub pub_username: Option<String>,
    #[arg(long)]
    pub pub_password: Option<String>,
    /// Topic of publisher i.
    #[arg(long, default_value = "load/{i}")]
    pub topic: String,
    /// Process id of the PostgreSQL server (postmaster), to report the CPU of it and its
    /// backends.
    #[arg(long)]
    pub postgres_pid: Option<u32>,
}

impl RulesArgs {
    pub fn check(&self) -> Result<()> {
        self.conn.check()?;
        if !self.receiver.ip().is_loopback() {
            bail!(
                "--receiver must be a loopback address, not {}",
                self.receiver
            );
        }
        if !(1..=100_000).contains(&self.clients) {
            bail!("--clients must be 1..=100000");
        }
        if !(12..=1_000_000).contains(&self.payload) {
            bail!("--payload must be 12..=1000000 bytes");
        }
        if !(0.0..=1_000_000.0).contains(&self.rate) {
            bail!("--rate must be 0..=1000000 (0: unlimited)");
        }
        for (name, value) in [
            ("--duration", self.duration),
            ("--warmup", self.warmup),
            ("--drain", self.drain),
            ("--quiet", self.quiet),
        ] {
            if !(0.0..=600.0).contains(&value) {
                bail!("{name} must be 0..=600 seconds");
            }
        }
        if self.duration <= 0.0 {
            bail!("--duration must be positive");
        }
        if !(1..=65_535).contains(&self.inflight) {
            bail!("--inflight must be 1..=65535");
        }
        Ok(())
    }
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connections per process (a process may open at most 20,000 descriptors here).
    #[arg(long, default_value_t = 10_000)]
    pub per_process: usize,
    /// New connections per second over all processes; 0 opens them as fast as they go.
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Seconds to wait, once every connection is open, before reading the broker's memory;
    /// the broker's CPU over this time is what it spends on idle connections.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    #[arg(long, default_value = "load-idle-{i}")]
    pub client_id: String,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long)]
    pub password: Option<String>,
}

impl IdleArgs {
    pub fn check(&self) -> Result<()> {
        self.conn.check()?;
        if !(1..=1_000_000).contains(&self.connections) {
            bail!("--connections must be 1..=1000000");
        }
        if !(1..=19_000).contains(&self.per_process) {
            bail!("--per-process must be 1..=19000 (the descriptor limit is 20000)");
        }
        if !(0.0..=1_000_000.0).contains(&self.connect_rate) {
            bail!("--connect-rate must be 0..=1000000");
        }
        if !(0.0..=600.0).contains(&self.settle) {
            bail!("--settle must be 0..=600 seconds");
        }
        Ok(())
    }
}

/// `--settle` is the wait after each connect phase before its end is read, so that what
/// the broker does right after a CONNACK is counted in that phase.
#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    #[command(flatten)]
    pub idle: IdleArgs,
    /// Drop-and-reconnect rounds after the cold connect.
    #[arg(long, default_value_t = 1)]
    pub storms: u32,
    /// Seconds between dropping every connection and reconnecting them all (time for the
    /// broker to see the connections close).
    #[arg(long, default_value_t = 2.0)]
    pub pause: f64,
    /// Shell command run at every phase boundary as `sh -c COMMAND probe LABEL`, printing
    /// an integer counter (such as the statements the broker's database executed); each
    /// phase reports its difference.
    #[arg(long)]
    pub probe: Option<String>,
}

impl StormArgs {
    pub fn check(&self) -> Result<()> {
        self.idle.check()?;
        if !(1..=100).contains(&self.storms) {
            bail!("--storms must be 1..=100");
        }
        if !(0.0..=600.0).contains(&self.pause) {
            bail!("--pause must be 0..=600 seconds");
        }
        Ok(())
    }
}

#[derive(Args, Debug, Clone)]
pub struct IdleWorkerArgs {
    #[command(flatten)]
    pub idle: IdleArgs,
    /// Index of this process's first connection.
    #[arg(long)]
    pub first: usize,
    /// Connections this process opens.
    #[arg(long)]
    pub count: usize,
    /// Longest this process holds its connections, if its parent never says stop.
    #[arg(long, default_value_t = 600)]
    pub hold_secs: u64,
}
