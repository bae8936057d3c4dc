//! Where batches go, parsed from the forwarder's `--segment-endpoint` value.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use reqwest::Url;

/// Where [`crate::Client`] delivers batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `POST` to this URL (already ending in `/v1/batch`).
    Http(Url),
    /// Append each batch as one JSON line to this file.
    File(PathBuf),
    /// Write each batch as one JSON line to standard output.
    Stdout,
}

/// Why an endpoint value was refused. The text never echoes the value: a mistyped value could
/// be a secret pasted into the wrong field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// The value is empty.
    #[error("the Segment endpoint is empty")]
    Empty,
    /// `file:` without a path.
    #[error("`file:` needs a path, e.g. file:/var/lib/seshn-segment/batches.jsonl")]
    EmptyPath,
    /// Not `http(s)://...`, `file:PATH` or `-`.
    #[error("the Segment endpoint must be an http(s):// URL, `file:PATH` or `-`")]
    UnsupportedScheme,
    /// An http(s) URL that does not parse.
    #[error("the Segment endpoint is not a valid URL")]
    InvalidUrl,
    /// Credentials inside the URL would leak into logs; the write key is configured separately.
    #[error(
        "the Segment endpoint URL must not contain credentials; configure the write key instead"
    )]
    CredentialsInUrl,
    /// A query or fragment has no meaning for Segment's API and is probably a mistake.
    #[error("the Segment endpoint URL must not have a query or fragment")]
    QueryOrFragment,
}

impl FromStr for Destination {
    type Err = DestinationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(DestinationError::Empty);
        }
        if s == "-" {
            return Ok(Self::Stdout);
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(DestinationError::EmptyPath);
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(DestinationError::UnsupportedScheme);
        }
        let mut url = Url::parse(s).map_err(|_| DestinationError::InvalidUrl)?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(DestinationError::InvalidUrl);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(DestinationError::CredentialsInUrl);
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(DestinationError::QueryOrFragment);
        }
        // Accept the base as Segment's docs and SDKs spell it: with or without `/v1`, with or
        // without a trailing slash (SDKs use the host alone, raw HTTP examples add `/v1`).
        let mut path = url.path().trim_end_matches('/').to_owned();
        if let Some(base) = path.strip_suffix("/v1/batch") {
            path = base.to_owned();
        } else if let Some(base) = path.strip_suffix("/v1") {
            path = base.to_owned();
        }
        url.set_path(&format!("{path}/v1/batch"));
        Ok(Self::Http(url))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(url) => write!(f, "{url}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Stdout => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(s: &str) -> String {
        match s.parse::<Destination>().unwrap() {
            Destination::Http(u) => u.to_string(),
            other => panic!("expected Http, got {other:?}"),
        }
    }

    #[test]
    fn base_urls_are_normalised_to_v1_batch() {
        for s in [
            "https://api.segment.io",
            "https://api.segment.io/",
            "https://api.segment.io/v1",
            "https://api.segment.io/v1/",
            "https://api.segment.io/v1/batch",
            "  https://api.segment.io  ",
            "HTTPS://api.segment.io",
        ] {
            assert_eq!(http(s), "https://api.segment.io/v1/batch", "{s}");
        }
        assert_eq!(
            http("https://events.eu1.segmentapis.com"),
            "https://events.eu1.segmentapis.com/v1/batch"
        );
        assert_eq!(
            http("http://127.0.0.1:8088"),
            "http://127.0.0.1:8088/v1/batch"
        );
        assert_eq!(
            http("http://rudder.internal:8080/prefix/v1/"),
            "http://rudder.internal:8080/prefix/v1/batch"
        );
    }

    #[test]
    fn file_and_stdout() {
        assert_eq!("-".parse(), Ok(Destination::Stdout));
        assert_eq!(
            "file:/tmp/out.jsonl".parse(),
            Ok(Destination::File(PathBuf::from("/tmp/out.jsonl")))
        );
        assert_eq!(
            "file:relative/out.jsonl".parse(),
            Ok(Destination::File(PathBuf::from("relative/out.jsonl")))
        );
        assert_eq!(
            "file:".parse::<Destination>(),
            Err(DestinationError::EmptyPath)
        );
    }

    #[test]
    fn bad_values_are_refused_without_echoing_them() {
        let cases = [
            ("", DestinationError::Empty),
            ("   ", DestinationError::Empty),
            ("ftp://example.com", DestinationError::UnsupportedScheme),
            ("api.segment.io", DestinationError::UnsupportedScheme),
            ("sk_live_secret", DestinationError::UnsupportedScheme),
            ("https://", DestinationError::InvalidUrl),
            ("https://ke y@/", DestinationError::InvalidUrl),
            (
                "https://secretkey:@api.segment.io",
                DestinationError::CredentialsInUrl,
            ),
            (
                "https://u:secretpw@api.segment.io",
                DestinationError::CredentialsInUrl,
            ),
            (
                "https://api.segment.io/?k=secretq",
                DestinationError::QueryOrFragment,
            ),
            (
                "https://api.segment.io/#secretf",
                DestinationError::QueryOrFragment,
            ),
        ];
        for (input, want) in cases {
            let err = input.parse::<Destination>().unwrap_err();
            assert_eq!(err, want, "{input:?}");
            let text = err.to_string();
            assert!(!text.contains("secret"), "{text}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["-", "file:/tmp/x.jsonl", "https://api.segment.io/v1/batch"] {
            let d: Destination = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
            assert_eq!(d.to_string().parse::<Destination>().unwrap(), d);
        }
    }
}
