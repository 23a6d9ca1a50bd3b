//! `iotcore serve` and `iotcore migrate`: connecting to PostgreSQL, and supervising the
//! selected services as tasks that share one shutdown token.
//!
//! The process lives as long as every service does: a signal cancels the token, and so does
//! any service that stops on its own (an error, or a return nobody asked for), after which
//! the others get [`STOP_GRACE`] to finish.

use crate::config::{redact_url, Config, DatabaseConfig};
use anyhow::{anyhow, bail, Context};
use iotcore_store::{Store, StoreError};
use std::collections::BTreeMap;
use std::fmt;
use std::io::ErrorKind;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

/// How long `serve` and `migrate` wait for a PostgreSQL that refuses connections (one that
/// is still starting, typically) before giving up.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(500);

/// How long the services get to finish once shutdown has begun.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// One of the services `serve` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Service {
    Broker,
    Api,
    Rules,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Broker, Service::Api, Service::Rules];
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Broker => "broker",
            Service::Api => "api",
            Service::Rules => "rules",
        })
    }
}

/// What `serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The services to start; never empty, no duplicates.
    pub services: Vec<Service>,
    /// Apply pending migrations before starting them.
    pub migrate: bool,
}

/// Runs the selected services until a signal or a failure, then stops them.
pub async fn serve(config: Config, options: ServeOptions) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone())?;
    let store = connect(&config.database, &shutdown).await?;
    if options.migrate {
        migrate(&store).await?;
    }
    count_pool_connections(&store);
    // With the API, its port serves the probes and metrics; without it, this one does.
    let probes = match config.telemetry.listen.trim() {
        listen if !listen.is_empty() && !options.services.contains(&Service::Api) => {
            Some(crate::probes::bind(listen).await?)
        }
        _ => None,
    };

    let mut tasks = JoinSet::new();
    let mut running = BTreeMap::new();
    for service in &options.services {
        let (store, token) = (store.clone(), shutdown.clone());
        let span = tracing::info_span!("service", name = %service);
        let handle = match service {
            Service::Broker => {
                let mut mqtt = config.mqtt.clone();
                // One set of quota defaults: the API shows what the broker enforces.
                let quotas = &config.api.quotas;
                mqtt.tenant_quotas = iotcore_broker::TenantQuotaDefaults {
                    max_devices: quotas.max_devices,
                    max_connections: quotas.max_connections,
                    max_messages_per_second: quotas.max_messages_per_second,
                    max_bytes_per_second: quotas.max_bytes_per_second,
                    max_retained_messages: quotas.max_retained_messages,
                };
                let config = mqtt;
                tasks.spawn(
                    async move { Ok(iotcore_broker::run(config, store, token).await?) }
                        .instrument(span),
                )
            }
            Service::Api => {
                let mut api = config.api.clone();
                api.allow_private_destinations = config.rules.allow_private_destinations;
                let config = api;
                tasks.spawn(
                    async move { Ok(iotcore_api::run(config, store, token).await?) }
                        .instrument(span),
                )
            }
            Service::Rules => {
                let config = config.rules.clone();
                tasks.spawn(
                    async move { Ok(iotcore_rules::run(config, store, token).await?) }
                        .instrument(span),
                )
            }
        };
        running.insert(handle.id(), service.to_string());
    }
    if let Some(listener) = probes {
        let (store, token) = (store.clone(), shutdown.clone());
        let span = tracing::info_span!("service", name = "telemetry");
        let handle = tasks.spawn(crate::probes::serve(listener, store, token).instrument(span));
        running.insert(handle.id(), "telemetry".to_owned());
    }
    let names: Vec<String> = options.services.iter().map(Service::to_string).collect();
    info!(services = %names.join(","), profile = ?config.profile, "iotcore is running");

    let mut failures = Vec::new();
    tokio::select! {
        () = shutdown.cancelled() => {}
        Some(joined) = tasks.join_next_with_id() => {
            // Unless a signal just asked every service to stop (a quick one, such as the
            // probes listener, can end before this select sees the cancellation), nothing
            // asked this service to stop, so even a clean return is a failure.
            let unexpected = !shutdown.is_cancelled();
            failures.extend(finished(joined, &mut running, unexpected));
            shutdown.cancel();
        }
    }
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while let Some(joined) = tasks.join_next_with_id().await {
            failures.extend(finished(joined, &mut running, false));
        }
    })
    .await;
    if drained.is_err() {
        let stuck: Vec<String> = running.values().cloned().collect();
        tasks.abort_all();
        failures.push(anyhow!(
            "{} did not stop within {} s",
            stuck.join(", "),
            STOP_GRACE.as_secs()
        ));
    }
    // Connections are returned by now; closing tells PostgreSQL goodbye instead of dropping them.
    let _ = tokio::time::timeout(Duration::from_secs(2), store.pool().close()).await;

    let mut failures = failures.into_iter();
    match failures.next() {
        None => {
            info!("iotcore stopped");
            Ok(())
        }
        Some(first) => {
            for other in failures {
                error!("{other:#}");
            }
            Err(first)
        }
    }
}

type Joined = Result<(tokio::task::Id, anyhow::Result<()>), JoinError>;

/// Accounts for a service task that ended, returning its failure if it failed.
fn finished(
    joined: Joined,
    running: &mut BTreeMap<tokio::task::Id, String>,
    unexpected: bool,
) -> Option<anyhow::Error> {
    let (id, outcome) = match joined {
        Ok((id, outcome)) => (id, outcome),
        Err(err) => {
            let what = if err.is_panic() {
                "panicked"
            } else {
                "was cancelled"
            };
            (err.id(), Err(anyhow!("{what}")))
        }
    };
    let name = running
        .remove(&id)
        .unwrap_or_else(|| "a service".to_owned());
    match outcome {
        Ok(()) if unexpected => Some(anyhow!("{name} stopped unexpectedly")),
        Ok(()) => {
            info!(service = %name, "stopped");
            None
        }
        Err(err) => Some(err.context(format!("{name} failed"))),
    }
}

/// Keeps `iotcore_db_pool_connections` current: read from the pool at each scrape, which
/// costs nothing between scrapes.
fn count_pool_connections(store: &Store) {
    use iotcore_telemetry::metrics::db::POOL_CONNECTIONS;
    let pool = store.pool().clone();
    let idle = POOL_CONNECTIONS.with(&["idle"]);
    let in_use = POOL_CONNECTIONS.with(&["in_use"]);
    iotcore_telemetry::registry().on_collect(move || {
        let size = i64::from(pool.size());
        let free = i64::try_from(pool.num_idle()).unwrap_or(size);
        idle.set(free);
        in_use.set((size - free).max(0));
    });
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second one ends the process without
/// waiting, for when a service hangs.
fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        info!("{name} received: shutting down (send another to exit at once)");
        shutdown.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        warn!("second signal received: exiting without waiting for the services");
        std::process::exit(1);
    });
    Ok(())
}

/// Connects to `database.url`, waiting up to [`CONNECT_PATIENCE`] while PostgreSQL refuses
/// connections. Other errors (a wrong password, a missing database) fail at once. Messages
/// show the URL without its password.
pub async fn connect(
    database: &DatabaseConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Store> {
    let shown = redact_url(&database.url);
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let mut waiting = false;
    loop {
        let err = match probe_then_connect(database).await {
            Ok(store) => {
                info!(database = %shown, "connected to PostgreSQL");
                return Ok(store);
            }
            Err(err) => err,
        };
        if !is_transient(&err) || Instant::now() >= deadline {
            bail!("cannot connect to PostgreSQL at {shown} (database.url): {err}");
        }
        if !waiting {
            info!(
                database = %shown, error = %err,
                "PostgreSQL is not accepting connections yet; retrying for up to {} s",
                CONNECT_PATIENCE.as_secs()
            );
            waiting = true;
        }
        tokio::select! {
            () = tokio::time::sleep(CONNECT_RETRY_DELAY) => {}
            () = shutdown.cancelled() => bail!("stopped while waiting for PostgreSQL at {shown}"),
        }
    }
}

/// Opens one connection before the pool: the pool retries refused connections internally
/// until its acquire timeout and then reports only "timed out", while a single connection
/// fails at once with the reason (refused, bad password, no such database).
async fn probe_then_connect(database: &DatabaseConfig) -> Result<Store, StoreError> {
    use sqlx::Connection;
    let options: sqlx::postgres::PgConnectOptions =
        database.url.parse().map_err(StoreError::Database)?;
    let probe = sqlx::postgres::PgConnection::connect_with(&options).await?;
    // The probe only proves the server answers; how it closes does not matter.
    let _ = probe.close().await;
    Store::connect(&database.url, database.max_connections).await
}

/// Whether a connection error is worth waiting out: nobody listening yet, the server still
/// starting (SQLSTATE 57P03), or momentarily out of connection slots (53300).
fn is_transient(err: &StoreError) -> bool {
    let StoreError::Database(err) = err else {
        return false;
    };
    match err {
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::NotFound
                | ErrorKind::TimedOut
                | ErrorKind::UnexpectedEof
        ),
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("57P03" | "53300")),
        _ => false,
    }
}

/// Applies every pending migration.
pub async fn migrate(store: &Store) -> anyhow::Result<()> {
    store
        .migrate()
        .await
        .context("cannot apply the database migrations")?;
    info!("database migrations applied");
    Ok(())
}
