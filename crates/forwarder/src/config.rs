//! Command line (every flag has an environment fallback) and its validation into [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use segment::{Destination, Limits, RetryPolicy};

use crate::app::{Config, DeliveryMode};
use crate::mapping::{MappingConfig, Profile, parse_extra_properties};

/// Default Segment endpoint when a write key is configured.
pub const DEFAULT_ENDPOINT: &str = "https://api.segment.io";

/// Seshn → Segment forwarder: verifies Seshn webhooks, maps them to Segment calls and delivers
/// them to Segment's HTTP Tracking API without losing any.
#[derive(Debug, Parser)]
#[command(
    name = "seshn-segment-forwarder",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A subcommand; without one, the forwarder runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the forwarder.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the Segment Protocols tracking plan (JSON Schema rules) of a mapping profile.
    TrackingPlan {
        /// Mapping profile.
        #[arg(long = "mapping-profile", env = "MAPPING_PROFILE", value_enum, default_value_t = Profile::Seed)]
        profile: Profile,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of the forwarder.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to listen on.
    #[arg(long, env = "FORWARDER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Webhook signing secrets, comma-separated: the first is current, the others are still
    /// accepted during a rotation.
    #[arg(
        long,
        env = "SESHN_WEBHOOK_SECRET",
        hide_env_values = true,
        conflicts_with = "webhook_secret_file"
    )]
    pub webhook_secret: Option<String>,
    /// File holding the webhook secrets (comma- or newline-separated).
    #[arg(long, env = "SESHN_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Segment write key. Without one, batches go to standard output.
    #[arg(
        long,
        env = "SEGMENT_WRITE_KEY",
        hide_env_values = true,
        conflicts_with = "segment_write_key_file"
    )]
    pub segment_write_key: Option<String>,
    /// File holding the Segment write key.
    #[arg(long, env = "SEGMENT_WRITE_KEY_FILE")]
    pub segment_write_key_file: Option<PathBuf>,

    /// Segment-compatible base URL (e.g. https://events.eu1.segmentapis.com), `file:PATH` or
    /// `-` (stdout). Default: https://api.segment.io with a write key, `-` without.
    #[arg(long, env = "SEGMENT_ENDPOINT")]
    pub segment_endpoint: Option<String>,

    /// `spooled`: 2xx once on disk; `synchronous`: 2xx once Segment accepted it.
    #[arg(long, env = "DELIVERY_MODE", value_enum, default_value_t = DeliveryMode::Spooled)]
    pub delivery_mode: DeliveryMode,
    /// Directory of the on-disk spool (created if missing).
    #[arg(long, env = "SPOOL_DIR", default_value = "spool")]
    pub spool_dir: PathBuf,
    /// Bound of the spool, e.g. 512MiB; when full, webhooks get 503 + Retry-After.
    #[arg(long, env = "SPOOL_MAX_BYTES", default_value = "512MiB", value_parser = parse_bytes)]
    pub spool_max_bytes: u64,

    /// Mapping profile: `seed` (as Seshn's handler) or `spec` (Segment naming spec).
    #[arg(long, env = "MAPPING_PROFILE", value_enum, default_value_t = Profile::Seed)]
    pub mapping_profile: Profile,
    /// Namespaces the deterministic message ids (the bridge's uid).
    #[arg(long, env = "BRIDGE_ID", default_value = "default")]
    pub bridge_id: String,
    /// Send an identify call for payloads with a contact.
    #[arg(long, env = "MAPPING_IDENTIFY", default_value_t = true, action = clap::ArgAction::Set)]
    pub mapping_identify: bool,
    /// Extra track properties copied by JSON pointer: `name=/pointer,...`, or a JSON list
    /// `[{"name": ..., "pointer": ...}]` (what the operator sets).
    #[arg(long, env = "MAPPING_EXTRA_PROPERTIES")]
    pub mapping_extra_properties: Option<String>,

    /// Largest accepted webhook body, e.g. 1MiB.
    #[arg(long, env = "MAX_BODY_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_body_bytes: u64,
    /// Time allowed to drain the spool on SIGTERM, e.g. 20s.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Synchronous mode: how long a webhook waits for Segment before 503, e.g. 10s.
    #[arg(long, env = "SYNC_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub sync_deadline: Duration,
    /// Timeout of one request to Segment.
    #[arg(long, env = "SEGMENT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub segment_timeout: Duration,
    /// First retry delay towards Segment (doubles up to --retry-max, with jitter).
    #[arg(long, env = "RETRY_BASE", default_value = "500ms", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// Longest retry delay towards Segment (a Retry-After may exceed it, up to 300 s).
    #[arg(long, env = "RETRY_MAX", default_value = "60s", value_parser = parse_duration)]
    pub retry_max: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `forwarder=debug`.
    #[arg(long, env = "LOG_FILTER", default_value = "info")]
    pub log_filter: String,
}

/// A configuration problem. Texts never contain secret values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No webhook secret.
    #[error(
        "a webhook secret is required (--webhook-secret / SESHN_WEBHOOK_SECRET or --webhook-secret-file)"
    )]
    NoWebhookSecret,
    /// A secret file could not be read.
    #[error("reading {path}: {kind}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        kind: std::io::ErrorKind,
    },
    /// Bad endpoint.
    #[error("--segment-endpoint: {0}")]
    Endpoint(#[from] segment::DestinationError),
    /// Bad extra property.
    #[error("--mapping-extra-properties: {0}")]
    Mapping(#[from] crate::mapping::ConfigError),
    /// A size that does not fit in memory.
    #[error("--max-body-bytes is too large")]
    BodyLimit,
}

/// What [`RunArgs::into_config`] decided, with warnings to log once logging is up.
#[derive(Debug)]
pub struct Resolved {
    /// The configuration.
    pub config: Config,
    /// True when no write key was set and the endpoint defaulted to stdout.
    pub stdout_default: bool,
}

impl RunArgs {
    /// Validates the arguments and reads the secret files.
    pub fn into_config(self) -> Result<Resolved, ConfigError> {
        let secrets_text = match (&self.webhook_secret, &self.webhook_secret_file) {
            (Some(value), _) => value.clone(),
            (None, Some(path)) => read_secret_file(path)?,
            (None, None) => return Err(ConfigError::NoWebhookSecret),
        };
        let webhook_secrets: Vec<String> = secrets_text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if webhook_secrets.is_empty() {
            return Err(ConfigError::NoWebhookSecret);
        }
        let write_key = match (&self.segment_write_key, &self.segment_write_key_file) {
            (Some(value), _) => value.trim().to_owned(),
            (None, Some(path)) => read_secret_file(path)?,
            (None, None) => String::new(),
        };
        let (destination, stdout_default) = match &self.segment_endpoint {
            Some(endpoint) => (endpoint.parse::<Destination>()?, false),
            None if write_key.is_empty() => (Destination::Stdout, true),
            None => (DEFAULT_ENDPOINT.parse::<Destination>()?, false),
        };
        let extra_properties = match &self.mapping_extra_properties {
            Some(list) => parse_extra_properties(list)?,
            None => Vec::new(),
        };
        let max_body_bytes =
            usize::try_from(self.max_body_bytes).map_err(|_| ConfigError::BodyLimit)?;
        let config = Config {
            listen: self.listen,
            webhook_secrets,
            destination,
            write_key,
            mode: self.delivery_mode,
            spool_dir: self.spool_dir,
            spool_max_bytes: self.spool_max_bytes,
            mapping: MappingConfig {
                profile: self.mapping_profile,
                bridge_id: self.bridge_id,
                identify: self.mapping_identify,
                extra_properties,
            },
            max_body_bytes,
            shutdown_grace: self.shutdown_grace,
            sync_deadline: self.sync_deadline,
            segment_timeout: self.segment_timeout,
            limits: Limits::default(),
            retry: RetryPolicy {
                base: self.retry_base,
                max: self.retry_max,
            },
        };
        Ok(Resolved {
            config,
            stdout_default,
        })
    }
}

fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| ConfigError::ReadFile {
            path: path.to_path_buf(),
            kind: e.kind(),
        })
}

/// Parses `1048576`, `64KiB`, `512MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512MiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "Ki" => 1 << 10,
        "M" | "MiB" | "Mi" => 1 << 20,
        "G" | "GiB" | "Gi" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses `250ms`, `10s`, `5m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s"))?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => return Err(format!("{s:?}: unknown unit (use ms, s, m, h)")),
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("10KB"), Ok(10_000));
        assert!(parse_bytes("x").is_err());
        assert!(parse_bytes("1TB").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1d").is_err());
    }

    #[test]
    fn defaults_and_secrets() {
        let cli = Cli::try_parse_from(["seshn-segment-forwarder", "--webhook-secret", "new, old"])
            .unwrap();
        let resolved = cli.run.into_config().unwrap();
        assert!(resolved.stdout_default);
        assert_eq!(resolved.config.destination, Destination::Stdout);
        assert_eq!(resolved.config.webhook_secrets, ["new", "old"]);
        assert_eq!(resolved.config.max_body_bytes, 1 << 20);
        assert_eq!(resolved.config.mode, DeliveryMode::Spooled);

        let cli = Cli::try_parse_from([
            "seshn-segment-forwarder",
            "--webhook-secret",
            "s",
            "--segment-write-key",
            "wk",
            "--delivery-mode",
            "synchronous",
            "--mapping-profile",
            "spec",
            "--mapping-extra-properties",
            "slotEnd=/slot/endTime,room=/room",
        ])
        .unwrap();
        let resolved = cli.run.into_config().unwrap();
        assert!(!resolved.stdout_default);
        assert!(matches!(resolved.config.destination, Destination::Http(_)));
        assert_eq!(resolved.config.mode, DeliveryMode::Synchronous);
        assert_eq!(resolved.config.mapping.profile, Profile::Spec);
        assert_eq!(resolved.config.mapping.extra_properties.len(), 2);

        // The operator's form: a JSON list, which also carries pointers with commas.
        let cli = Cli::try_parse_from([
            "seshn-segment-forwarder",
            "--webhook-secret",
            "s",
            "--mapping-extra-properties",
            r#"[{"name":"room","pointer":"/room,a"},{"name":"end","pointer":"/slot/endTime"}]"#,
        ])
        .unwrap();
        let props = cli
            .run
            .into_config()
            .unwrap()
            .config
            .mapping
            .extra_properties;
        assert_eq!(props.len(), 2);
        assert_eq!(props[0].pointer, "/room,a");
        let cli = Cli::try_parse_from([
            "seshn-segment-forwarder",
            "--webhook-secret",
            "s",
            "--mapping-extra-properties",
            r#"[{"name":"room"}]"#,
        ])
        .unwrap();
        assert!(
            cli.run.into_config().is_err(),
            "a JSON entry without a pointer is refused"
        );

        let cli = Cli::try_parse_from(["seshn-segment-forwarder"]).unwrap();
        assert!(matches!(
            cli.run.into_config(),
            Err(ConfigError::NoWebhookSecret)
        ));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "a\nb\n").unwrap();
        let cli = Cli::try_parse_from([
            "seshn-segment-forwarder",
            "--webhook-secret-file",
            file.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(
            cli.run.into_config().unwrap().config.webhook_secrets,
            ["a", "b"]
        );

        let cli = Cli::try_parse_from([
            "seshn-segment-forwarder",
            "tracking-plan",
            "--mapping-profile",
            "spec",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::TrackingPlan {
                profile: Profile::Spec
            })
        ));
    }
}
