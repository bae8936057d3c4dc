//! Child process of the teardown tests (`tests/teardown.rs`), kept out of the test harness so
//! that no test is ever skipped: starts the test bed, writes the directory and the pids of etcd,
//! kube-apiserver and kube-controller-manager to the file named by its first argument, then
//! exits, or panics when the second argument is `panic`. The tests then check that nothing it
//! started outlives it.

use std::fmt::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(record), mode) = (args.next(), args.next()) else {
        eprintln!("usage: testbed-teardown-child RECORD_FILE [pass|panic]");
        return ExitCode::from(2);
    };
    let tb = testbed::testbed();
    let mut lines = format!("dir {}\n", tb.dir().display());
    for (name, pid) in tb.pids() {
        let _ = writeln!(lines, "pid {name} {pid}");
    }
    if let Err(e) = std::fs::write(&record, lines) {
        eprintln!("writing {}: {e}", record.to_string_lossy());
        return ExitCode::FAILURE;
    }
    assert!(
        mode.as_deref() != Some("panic".as_ref()),
        "deliberate panic with the test bed running"
    );
    ExitCode::SUCCESS
}
