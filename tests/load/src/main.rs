//! `iotcore-load`: a load generator for MQTT brokers on this machine, used to benchmark
//! iotcore side by side with Mosquitto (`tests/load/side-by-side.sh`).
//!
//! It keeps its own cost low so that the broker is what gets measured: every connection is
//! one task, messages are written from a per-publisher template into a buffer flushed once
//! per turn, and received packets are read in place without allocating. It reports its own
//! CPU use next to the broker's so that a saturated generator is visible.

mod cli;
mod client;
mod idle;
mod receiver;
mod report;
mod rules;
mod run;
mod storm;
mod stream;
mod template;
mod wire;
mod worker;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("iotcore-load: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => {
                let json = args.conn.json;
                let report = run::run(args).await?;
                report.print();
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                }
                Ok(())
            }
            Command::Rules(args) => {
                let json = args.conn.json;
                let report = rules::rules(args).await?;
                report.print();
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                }
                Ok(())
            }
            Command::Idle(args) => {
                let json = args.conn.json;
                let report = idle::idle(args).await?;
                report.print();
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                }
                Ok(())
            }
            Command::IdleWorker(args) => idle::worker(args).await,
            Command::Storm(args) => {
                let json = args.idle.conn.json;
                let report = storm::storm(args).await?;
                report.print();
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                }
                Ok(())
            }
            Command::StormWorker(args) => storm::worker(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iotcore-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
