//! `fake-segment`: a Segment-compatible `/v1/batch` sink for demos and benchmarks.
//!
//! ```text
//! fake-segment --listen 127.0.0.1:8088 --write-key KEY [--quiet]
//! ```
//! Prints every accepted message as one JSON line on stdout; with `--quiet` it only counts, and
//! prints the counters on stderr every few seconds when they changed and once at exit (Ctrl-C).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use fakes::segment_sink::{SegmentSink, SinkOptions, SinkStats};

const USAGE: &str = "usage: fake-segment [--listen 127.0.0.1:PORT] --write-key KEY [--quiet]";

struct Args {
    listen: SocketAddr,
    write_key: String,
    quiet: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 8088));
    let mut write_key = None;
    let mut quiet = false;
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{name} needs a value"))
        };
        match name.as_str() {
            "--listen" => {
                listen = value()?
                    .parse()
                    .map_err(|_| "--listen needs an address like 127.0.0.1:8088".to_owned())?;
            }
            "--write-key" => write_key = Some(value()?),
            "--quiet" => quiet = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let write_key = write_key.ok_or("--write-key is required")?;
    Ok(Args {
        listen,
        write_key,
        quiet,
    })
}

fn print_stats(s: &SinkStats) {
    eprintln!(
        "fake-segment: requests={} accepted_requests={} accepted_messages={} rejected_400={} dropped_messages={} invalid_messages={} bad_auth={}",
        s.requests,
        s.accepted_requests,
        s.accepted_messages,
        s.rejected_400,
        s.dropped_messages,
        s.invalid_messages,
        s.bad_auth
    );
}

// One thread: the sink shares the benchmark machine with the system under test.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("fake-segment: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let opts = SinkOptions {
        listen: args.listen,
        write_key: args.write_key,
        store: false,
        echo: !args.quiet,
    };
    let sink = match SegmentSink::start_with(opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-segment: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    eprintln!("fake-segment: listening on {} (POST /v1/batch)", sink.url());
    let mut last = sink.stats();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = sink.stats();
                if args.quiet && now != last {
                    print_stats(&now);
                }
                last = now;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    print_stats(&sink.stats());
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args, String> {
        parse_args(v.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn flags() {
        let a = parse(&["--listen", "127.0.0.1:9999", "--write-key", "k", "--quiet"]).unwrap();
        assert_eq!(a.listen, SocketAddr::from(([127, 0, 0, 1], 9999)));
        assert_eq!(a.write_key, "k");
        assert!(a.quiet);
        let a = parse(&["--write-key=k2"]).unwrap();
        assert_eq!(a.write_key, "k2");
        assert!(!a.quiet);
        assert!(parse(&[]).is_err());
        assert!(parse(&["--write-key"]).is_err());
        assert!(parse(&["--write-key", "k", "--listen", "nope"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
