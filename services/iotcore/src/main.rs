//! The `iotcore` binary: `serve` runs the broker, the control plane and the rules service
//! (all, or a subset), `migrate` applies the database migrations, `token` mints a
//! control-plane JWT.
//!
//! Exit codes: 0 success, 1 a runtime failure, 2 bad usage or configuration.

mod config;
mod logging;
mod otlp;
mod probes;
mod serve;
mod token;

use clap::{Args, Parser, Subcommand};
use config::{Config, Flags, Loaded};
use serve::{ServeOptions, Service};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use token::{RoleArg, TokenCommandError, TokenRequest};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// How long tasks still running when `serve` returns (blocking ones, mostly) get before
/// the process goes on to exit without them.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

/// iotcore: a multi-tenant MQTT broker, REST control plane and webhook rules service.
///
/// Configuration comes from built-in defaults, then a TOML file (--config or
/// IOTCORE_CONFIG), then IOTCORE_* environment variables (IOTCORE_ + the key path with `.`
/// as `_`, uppercased: IOTCORE_DATABASE_URL, IOTCORE_MQTT_TCP_LISTEN), then flags.
#[derive(Debug, Parser)]
#[command(name = "iotcore", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, global = true, env = "IOTCORE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Set one key, overriding the file and the environment (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY.PATH=VALUE")]
    set: Vec<String>,
    /// Shorthand for --set database.url=URL.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Shorthand for --set api.listen=ADDR.
    #[arg(long, global = true, value_name = "ADDR")]
    api_listen: Option<String>,
    /// Shorthand for --set mqtt.tcp_listen=ADDR (plain MQTT over TCP; empty turns it off).
    #[arg(long, global = true, value_name = "ADDR")]
    mqtt_listen: Option<String>,
}

impl ConfigArgs {
    fn flags(&self) -> Flags {
        Flags {
            file: self.config.clone(),
            set: self.set.clone(),
            database_url: self.database_url.clone(),
            api_listen: self.api_listen.clone(),
            mqtt_listen: self.mqtt_listen.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the services (all three unless --only is given) until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Apply the database migrations and exit.
    Migrate,
    /// Print a control-plane JWT signed with the configured HS256 secret.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Run only this service (repeatable).
    #[arg(long, value_enum, value_name = "SERVICE")]
    only: Vec<Service>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
    /// Do not apply migrations on start (overrides database.migrate_on_start).
    #[arg(long)]
    no_migrate: bool,
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[arg(long, value_enum)]
    role: RoleArg,
    /// The tenant a tenant role acts in (required for admin, editor and viewer).
    #[arg(long, value_name = "TENANT_ID")]
    tenant: Option<String>,
    /// The token's `sub` claim.
    #[arg(long, default_value = "iotcore-cli")]
    subject: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
}

fn main() -> ExitCode {
    return_large_blocks_to_the_system();
    let cli = Cli::parse();
    let Loaded { config, warnings } = match Config::load(&cli.config.flags()) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("iotcore: invalid configuration: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Serve(args) if args.print_config => match config.to_redacted_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("iotcore: cannot print the configuration: {err}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Command::Token(args) => {
            let request = TokenRequest {
                role: args.role,
                tenant: args.tenant,
                subject: args.subject,
                ttl: Duration::from_secs(args.ttl_secs),
            };
            for warning in &warnings {
                eprintln!("iotcore: warning: {warning}");
            }
            match token::mint(&config, &request) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(err @ TokenCommandError::Usage(_)) => {
                    eprintln!("iotcore: {err}");
                    ExitCode::from(EXIT_USAGE)
                }
                Err(err) => {
                    eprintln!("iotcore: {err}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Command::Serve(args) => {
            let mut services = if args.only.is_empty() {
                Service::ALL.to_vec()
            } else {
                args.only
            };
            services.sort();
            services.dedup();
            let options = ServeOptions {
                services,
                migrate: config.database.migrate_on_start && !args.no_migrate,
            };
            let names: Vec<String> = options.services.iter().map(Service::to_string).collect();
            let exports = Some(names.join(","));
            run_async(
                &config,
                &warnings,
                exports,
                serve::serve(config.clone(), options),
            )
        }
        Command::Migrate => run_async(&config, &warnings, None, async {
            let store = serve::connect(&config.database, &CancellationToken::new()).await?;
            serve::migrate(&store).await?;
            store.pool().close().await;
            Ok(())
        }),
    }
}

/// Starts OTLP export (when `exports` names the services of a `serve` and an endpoint
/// is configured), logging and the runtime, then runs `work` to completion, and flushes
/// what OTLP has not sent yet.
fn run_async(
    config: &Config,
    warnings: &[String],
    exports: Option<String>,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    // Before the runtime: the exporters' blocking HTTP clients must not start inside it.
    let otlp = match exports.map(|services| otlp::Otlp::start(&config.telemetry, &services)) {
        Some(Ok(otlp)) => otlp,
        Some(Err(err)) => {
            eprintln!("iotcore: {err:#}");
            return ExitCode::from(EXIT_FAILURE);
        }
        None => None,
    };
    if let Err(err) = logging::init(&config.log, otlp.as_ref().map(otlp::Otlp::tracer)) {
        eprintln!("iotcore: {err:#}");
        return ExitCode::from(EXIT_FAILURE);
    }
    for warning in warnings {
        warn!("{warning}");
    }
    tracing::debug!(config = ?config, "effective configuration");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            error!("cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let outcome = runtime.block_on(work);
    // Ends what is still running (and so closes its spans) before the last export.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    if let Some(otlp) = otlp {
        otlp.shutdown();
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Every password CONNECT runs argon2id, which allocates a 19 MiB block and frees it.
/// glibc raises its mmap threshold to the size of a freed mmapped block, so from the
/// second verification on these blocks come from the heaps of its arenas, which keep them:
/// a few hundred CONNECTs left gigabytes resident (14.7 MB per idle connection was
/// measured). A fixed threshold keeps blocks of 1 MiB and more in their own mappings,
/// returned to the system when freed.
fn return_large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator setting; it is called before any other
    // thread exists, and M_MMAP_THRESHOLD with a value below its maximum (32 MiB on 64-bit)
    // is a documented use.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}
