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

/// Debug-prints a secret as whether it is set, never its value.
pub struct Redacted<'a>(pub &'a str);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

/// Debug-prints an optional secret.
struct RedactedOpt<'a>(&'a Option<String>);

impl std::fmt::Debug for RedactedOpt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(value) => Redacted(value).fmt(f),
            None => f.write_str("None"),
        }
    }
}

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
    /// Print the spool's dead letters as JSON lines, oldest first (the forwarder must be
    /// stopped: the spool is opened read-only).
    DeadLetters {
        /// Directory of the spool.
        #[arg(long = "spool-dir", env = "SPOOL_DIR", default_value = "spool")]
        spool_dir: PathBuf,
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

/// Options of the forwarder. `Debug` redacts the secrets.
#[derive(Args)]
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
    /// Budget of webhook body bytes buffered by all requests in flight together (each reserves
    /// its Content-Length, or --max-body-bytes without one); beyond it, 503 + Retry-After.
    #[arg(long, env = "MAX_INFLIGHT_BODY_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub max_inflight_body_bytes: u64,
    /// How long a request may take to send its body before it is answered 408, e.g. 10s.
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Bound of the dead-letter table, e.g. 64MiB; the oldest dead letters are deleted beyond
    /// it. Default: a tenth of --spool-max-bytes.
    #[arg(long, env = "DEAD_LETTER_MAX_BYTES", value_parser = parse_bytes)]
    pub dead_letter_max_bytes: Option<u64>,
    /// On SIGTERM, how long to keep serving webhooks with readiness already false (so
    /// Kubernetes can remove the pod from the endpoints first), e.g. 5s.
    #[arg(long, env = "SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
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
    #[error("--max-body-bytes is too large (at most 4GiB)")]
    BodyLimit,
    /// The in-flight budget cannot hold even one body of the largest size.
    #[error("--max-inflight-body-bytes must be at least --max-body-bytes")]
    InflightBudget,
    /// An http(s) endpoint without a write key (Segment would refuse every batch).
    #[error(
        "an http(s) Segment endpoint needs a write key (--segment-write-key / SEGMENT_WRITE_KEY \
         or --segment-write-key-file)"
    )]
    MissingWriteKey,
    /// A write key with whitespace or control characters inside.
    #[error("the write key contains whitespace or control characters")]
    InvalidWriteKey,
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
        if matches!(destination, Destination::Http(_)) {
            // Checked here so that it is a configuration error (exit 2), not a start failure.
            if write_key.is_empty() {
                return Err(ConfigError::MissingWriteKey);
            }
            if write_key
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::InvalidWriteKey);
            }
        }
        // Bodies are reserved in the in-flight budget as u32 permits.
        let max_body_bytes =
            u32::try_from(self.max_body_bytes).map_err(|_| ConfigError::BodyLimit)? as usize;
        let max_inflight_body_bytes = usize::try_from(self.max_inflight_body_bytes)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        if max_inflight_body_bytes < max_body_bytes {
            return Err(ConfigError::InflightBudget);
        }
        let dead_letter_max_bytes = self
            .dead_letter_max_bytes
            .unwrap_or(self.spool_max_bytes / 10);
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
            max_inflight_body_bytes,
            body_read_timeout: self.body_read_timeout,
            dead_letter_max_bytes,
            shutdown_delay: self.shutdown_delay,
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

impl std::fmt::Debug for RunArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunArgs")
            .field("listen", &self.listen)
            .field("webhook_secret", &RedactedOpt(&self.webhook_secret))
            .field("webhook_secret_file", &self.webhook_secret_file)
            .field("segment_write_key", &RedactedOpt(&self.segment_write_key))
            .field("segment_write_key_file", &self.segment_write_key_file)
            .field("segment_endpoint", &self.segment_endpoint)
            .field("delivery_mode", &self.delivery_mode)
            .field("spool_dir", &self.spool_dir)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("mapping_profile", &self.mapping_profile)
            .field("bridge_id", &self.bridge_id)
            .field("mapping_identify", &self.mapping_identify)
            .field("mapping_extra_properties", &self.mapping_extra_properties)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_inflight_body_bytes", &self.max_inflight_body_bytes)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("dead_letter_max_bytes", &self.dead_letter_max_bytes)
            .field("shutdown_delay", &self.shutdown_delay)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("sync_deadline", &self.sync_deadline)
            .field("segment_timeout", &self.segment_timeout)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("log_format", &self.log_format)
            .field("log_filter", &self.log_filter)
            .finish()
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

    /// Extra arguments and the error they must cause.
    type ErrorCase<'a> = (&'a [&'a str], fn(&ConfigError) -> bool);

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

    #[test]
    fn debug_output_redacts_every_secret() {
        let cli = Cli::try_parse_from([
            "seshn-segment-forwarder",
            "--webhook-secret",
            "whsec_CURRENT_s3cr3t,whsec_PREVIOUS_s3cr3t",
            "--segment-write-key",
            "wk_WRITE_KEY_s3cr3t",
        ])
        .unwrap();
        for text in [format!("{cli:?}"), format!("{:?}", cli.run)] {
            assert!(!text.contains("s3cr3t"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
            assert!(text.contains("listen"), "{text}");
        }
        let config = cli.run.into_config().unwrap().config;
        let text = format!("{config:?}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("<2 redacted>"), "{text}");
        assert!(text.contains("write_key: <redacted>"), "{text}");
        assert!(text.contains("api.segment.io"), "{text}");
        // Without a key it says so, still without guessing anything.
        let cli =
            Cli::try_parse_from(["seshn-segment-forwarder", "--webhook-secret", "x"]).unwrap();
        assert!(format!("{:?}", cli.run.into_config().unwrap().config).contains("<empty>"));
    }

    #[test]
    fn write_key_file_new_flags_and_their_checks() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("write-key");
        // A Kubernetes Secret volume file usually ends with a newline.
        std::fs::write(&key, "wk_from_file\n").unwrap();
        let cli = Cli::try_parse_from([
            "seshn-segment-forwarder",
            "--webhook-secret",
            "s",
            "--segment-write-key-file",
            key.to_str().unwrap(),
            "--spool-max-bytes",
            "100MiB",
        ])
        .unwrap();
        let resolved = cli.run.into_config().unwrap();
        assert_eq!(resolved.config.write_key, "wk_from_file");
        assert!(!resolved.stdout_default);
        assert!(matches!(resolved.config.destination, Destination::Http(_)));
        // Defaults of the new flags.
        assert_eq!(resolved.config.max_inflight_body_bytes, 16 << 20);
        assert_eq!(resolved.config.body_read_timeout, Duration::from_secs(10));
        assert_eq!(resolved.config.shutdown_delay, Duration::ZERO);
        assert_eq!(resolved.config.dead_letter_max_bytes, (100 << 20) / 10);

        let cli = Cli::try_parse_from([
            "seshn-segment-forwarder",
            "--webhook-secret",
            "s",
            "--max-inflight-body-bytes",
            "4MiB",
            "--body-read-timeout",
            "3s",
            "--shutdown-delay",
            "5s",
            "--dead-letter-max-bytes",
            "1MiB",
        ])
        .unwrap();
        let config = cli.run.into_config().unwrap().config;
        assert_eq!(config.max_inflight_body_bytes, 4 << 20);
        assert_eq!(config.body_read_timeout, Duration::from_secs(3));
        assert_eq!(config.shutdown_delay, Duration::from_secs(5));
        assert_eq!(config.dead_letter_max_bytes, 1 << 20);

        // Every configuration mistake is a ConfigError (exit 2), with no secret in its text.
        let missing = dir.path().join("missing");
        let cases: [ErrorCase<'_>; 5] = [
            (&["--segment-endpoint", "https://api.segment.io"], |e| {
                matches!(e, ConfigError::MissingWriteKey)
            }),
            (&["--segment-write-key", "wk_in side_s3cr3t"], |e| {
                matches!(e, ConfigError::InvalidWriteKey)
            }),
            (
                &["--segment-write-key-file", missing.to_str().unwrap()],
                |e| matches!(e, ConfigError::ReadFile { .. }),
            ),
            (&["--max-inflight-body-bytes", "512KiB"], |e| {
                matches!(e, ConfigError::InflightBudget)
            }),
            (&["--max-body-bytes", "5GiB"], |e| {
                matches!(e, ConfigError::BodyLimit)
            }),
        ];
        for (args, expected) in cases {
            let mut argv = vec!["seshn-segment-forwarder", "--webhook-secret", "s"];
            argv.extend_from_slice(args);
            let err = Cli::try_parse_from(&argv)
                .unwrap()
                .run
                .into_config()
                .unwrap_err();
            assert!(expected(&err), "{args:?}: {err:?}");
            assert!(!err.to_string().contains("s3cr3t"), "{err}");
        }
        // A file: or stdout destination needs no key.
        let cli = Cli::try_parse_from([
            "seshn-segment-forwarder",
            "--webhook-secret",
            "s",
            "--segment-endpoint",
            "-",
        ])
        .unwrap();
        assert!(cli.run.into_config().is_ok());
    }

    #[test]
    fn dead_letters_subcommand() {
        let cli = Cli::try_parse_from([
            "seshn-segment-forwarder",
            "dead-letters",
            "--spool-dir",
            "/var/spool/x",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::DeadLetters { spool_dir }) if spool_dir == Path::new("/var/spool/x")
        ));
    }
}
