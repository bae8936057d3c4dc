//! `seshn-segment-forwarder`: see `docs/forwarder.md`.

use std::process::ExitCode;

use clap::Parser;
use forwarder::config::{Cli, Command, LogFormat};
use forwarder::mapping::tracking_plan::tracking_plan;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::TrackingPlan { profile }) => {
            let plan = tracking_plan(profile);
            return match serde_json::to_string_pretty(&plan) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::DeadLetters { spool_dir }) => {
            let mut out = std::io::stdout().lock();
            return match forwarder::spool::dump_dead_letters(&spool_dir, &mut out) {
                Ok(count) => {
                    eprintln!("{count} dead letter(s)");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    init_logging(cli.run.log_format, &cli.run.log_filter);
    let resolved = match cli.run.into_config() {
        Ok(resolved) => resolved,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    // One worker per available core (taskset-aware); the spool writer has its own thread.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("forwarder")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "starting the runtime failed");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(resolved))
}

async fn run(resolved: forwarder::config::Resolved) -> ExitCode {
    let config = resolved.config;
    if resolved.stdout_default {
        tracing::warn!(
            "NO SEGMENT WRITE KEY SET: batches are written to standard output and NOT sent to \
             Segment. Set SEGMENT_WRITE_KEY (or --segment-write-key-file) to deliver."
        );
    }
    tracing::info!(
        listen = %config.listen,
        destination = ?config.destination,
        mode = ?config.mode,
        profile = config.mapping.profile.as_str(),
        secrets = config.webhook_secrets.len(),
        spool_dir = %config.spool_dir.display(),
        spool_max_bytes = config.spool_max_bytes,
        "starting seshn-segment-forwarder {}",
        env!("CARGO_PKG_VERSION")
    );
    let running = match forwarder::app::start(config).await {
        Ok(running) => running,
        Err(e) => {
            tracing::error!(error = %e, "start failed");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %running.addr(), "listening");
    wait_for_signal().await;
    running.shutdown();
    match running.wait().await {
        Ok(outcome) => {
            tracing::info!(drained = ?outcome.drained, "bye");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "shutdown failed");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the forwarder");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout may carry the batches (`--segment-endpoint -`).
    // Colours only for a terminal: escape codes would garble log files and collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
