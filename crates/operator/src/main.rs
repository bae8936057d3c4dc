//! `seshn-segment-operator`: `run` the controller, or print the `crd`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use operator::{Config, LeaderElectionConfig, Metrics, duration};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// Kubernetes operator for SeshnSegmentBridge: runs a forwarder per bridge and registers its
/// URL as a Seshn webhook.
#[derive(Debug, Parser)]
#[command(name = "seshn-segment-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (in-cluster config, or KUBECONFIG).
    Run(Box<RunArgs>),
    /// Print the SeshnSegmentBridge CRD as YAML.
    Crd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Forwarder image for bridges that do not set spec.forwarder.image.
    #[arg(long, env = "FORWARDER_IMAGE")]
    forwarder_image: String,
    /// Seshn API base URL for bridges that do not set spec.seshn.apiUrl.
    #[arg(long, env = "SESHN_API_URL", default_value = bridge_api::DEFAULT_SESHN_API_URL)]
    seshn_api_url: String,
    /// Drift check interval for healthy bridges (jittered by up to +10%).
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "10m", value_parser = duration::parse)]
    resync_interval: Duration,
    /// Bridges reconciled in parallel (per watched namespace).
    #[arg(long, env = "CONCURRENCY", default_value_t = operator::config::DEFAULT_CONCURRENCY)]
    concurrency: u16,
    /// How long a deleted bridge retries deleting its webhook when Seshn cannot be reached with
    /// its credentials, before giving up with a WebhookOrphaned event.
    #[arg(long, env = "CLEANUP_DEADLINE", default_value = "1h", value_parser = duration::parse)]
    cleanup_deadline: Duration,
    /// Namespaces to watch, comma-separated; empty = all namespaces.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    watch_namespaces: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease so several replicas never act at once.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the Lease (default: POD_NAMESPACE, else "default").
    #[arg(long, env = "LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "seshn-segment-operator")]
    lease_name: String,
    /// Lease validity without renewal.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = duration::parse)]
    lease_duration: Duration,
    /// This instance's name in Events and the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// Namespace the operator runs in (fallback for the Lease namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Seshn requests per second, shared by all bridges.
    #[arg(long, env = "SESHN_RATE_LIMIT", default_value_t = 20)]
    seshn_rate_limit: u32,
    /// Burst of the Seshn rate limiter.
    #[arg(long, env = "SESHN_RATE_BURST", default_value_t = 40)]
    seshn_rate_burst: u32,
    /// Timeout of one Seshn request.
    #[arg(long, env = "SESHN_TIMEOUT", default_value = "10s", value_parser = duration::parse)]
    seshn_timeout: Duration,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn run(args: RunArgs) -> ExitCode {
    init_tracing(args.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let instance = args
        .instance
        .clone()
        .unwrap_or_else(|| format!("seshn-segment-operator-{}", std::process::id()));
    let mut config = Config::new(args.forwarder_image);
    config.default_seshn_api_url = args.seshn_api_url;
    config.resync_interval = args.resync_interval;
    config.concurrency = args.concurrency.max(1);
    config.cleanup_deadline = args.cleanup_deadline;
    config.watch_namespaces = match operator::config::watch_namespaces(&args.watch_namespaces) {
        Ok(namespaces) => namespaces,
        Err(e) => {
            error!(error = %e, "invalid configuration");
            return ExitCode::FAILURE;
        }
    };
    config.seshn_rate_per_second = args.seshn_rate_limit;
    config.seshn_rate_burst = args.seshn_rate_burst;
    config.seshn_timeout = args.seshn_timeout;
    config.instance = instance;
    if args.leader_election {
        let duration = args.lease_duration.max(Duration::from_secs(3));
        config.leader_election = Some(LeaderElectionConfig {
            namespace: args
                .lease_namespace
                .or(args.pod_namespace)
                .unwrap_or_else(|| "default".to_owned()),
            name: args.lease_name,
            lease_duration: duration,
            renew_interval: duration / 3,
        });
    }

    // Bind before anything else: an operator without its probes and metrics would be restarted
    // by its liveness probe forever, with the reason buried; say it and stop instead.
    let listener = match tokio::net::TcpListener::bind(args.metrics_addr).await {
        Ok(l) => l,
        Err(e) => {
            error!(metrics_addr = %args.metrics_addr, error = %e, "cannot listen on the metrics address (--metrics-addr)");
            return ExitCode::FAILURE;
        }
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot build a Kubernetes client");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Arc::new(Metrics::new());
    let server = tokio::spawn(operator::metrics::serve(listener, metrics.clone()));
    info!(metrics_addr = %args.metrics_addr, "starting");
    let result = operator::run(client, config, metrics, shutdown_signal()).await;
    server.abort();
    match result {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "operator stopped");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match operator::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => run(*args).await,
    }
}
