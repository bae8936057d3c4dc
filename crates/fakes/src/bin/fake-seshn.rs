//! `fake-seshn`: the in-repo fake Seshn webhooks API as a process, for demos and end-to-end runs.
//!
//! ```text
//! fake-seshn --listen 127.0.0.1:8091 --api-key sk_test_demo [--api-key ...]
//! ```
//! Prints `fake-seshn listening on http://ADDR` on stdout once it accepts connections, then
//! serves until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fakes::seshn_api::FakeSeshn;

/// A stateful fake of Seshn's webhooks management API (DESIGN §4.2).
#[derive(Debug, Parser)]
#[command(name = "fake-seshn", version)]
struct Args {
    /// Address to listen on (a port of 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0", env = "FAKE_SESHN_LISTEN")]
    listen: SocketAddr,
    /// An API key to accept (repeatable); every other key gets 401.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// An API key that is known but gets 403 (repeatable).
    #[arg(long = "forbidden-key")]
    forbidden_keys: Vec<String>,
    /// Delay every answer by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let fake = match FakeSeshn::start_on(args.listen).await {
        Ok(fake) => fake,
        Err(e) => {
            eprintln!("fake-seshn: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    for key in &args.api_keys {
        fake.add_api_key(key);
    }
    for key in &args.forbidden_keys {
        fake.set_key_forbidden(key, true);
    }
    fake.set_latency(Duration::from_millis(args.latency_ms));
    if args.api_keys.is_empty() {
        eprintln!("fake-seshn: no --api-key given: every request will get 401");
    }
    // Keys are fake, but still not echoed: the habit is what matters.
    println!("fake-seshn listening on {}", fake.url());
    wait_for_signal().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
