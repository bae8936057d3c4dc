#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Nothing the test bed starts outlives the test process: not when the process ends normally and
//! not when a test panics. Each test runs the `testbed-teardown-child` binary as a child process,
//! which starts the test bed, writes the pids of etcd, kube-apiserver and kube-controller-manager
//! and its directory to a file, and then ends (or panics). The parent then requires every recorded process to be gone within
//! a deadline, and checks what was kept of the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EXPECTED: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];
/// The watchdogs poll every 0.5 s and wait up to 3 s between TERM and KILL.
const DEADLINE: Duration = Duration::from_secs(30);

struct Recorded {
    dir: PathBuf,
    pids: Vec<(String, u32)>,
    stderr: String,
    success: bool,
}

fn run_child(mode: &str) -> Recorded {
    let work = tempfile_dir();
    let record = work.join("record");
    let mut child = Command::new(env!("CARGO_BIN_EXE_testbed-teardown-child"))
        .arg(&record)
        .arg(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    // Start-up takes a few seconds; a hung child must not hang this test.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(work.join("stderr")).unwrap_or_default();
    let text = std::fs::read_to_string(&record)
        .unwrap_or_else(|e| panic!("the child recorded nothing ({e}); its stderr:\n{stderr}"));
    let _ = std::fs::remove_dir_all(&work);
    let mut dir = None;
    let mut pids = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.splitn(3, ' ').collect();
        match words.as_slice() {
            ["dir", path] => dir = Some(PathBuf::from(path)),
            ["pid", name, pid] => pids.push(((*name).to_owned(), pid.parse().unwrap())),
            _ => panic!("bad record line {line:?}"),
        }
    }
    let mut names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, EXPECTED, "the child recorded {pids:?}");
    Recorded {
        dir: dir.expect("the child recorded no directory"),
        pids,
        stderr,
        success: status.success(),
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "testbed-teardown-{}-{:08x}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// True while `pid` is a live (not zombie) process running `name` (a reused pid running
/// something else does not count).
fn alive(pid: u32, name: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?");
    if state == "Z" || state == "X" {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(name)
}

fn assert_all_gone(rec: &Recorded) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left: Vec<&(String, u32)> = rec
            .pids
            .iter()
            .filter(|(name, pid)| alive(*pid, name))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running {DEADLINE:?} after the test process ended: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_panicking_test_leaves_no_process_and_keeps_the_logs() {
    let rec = run_child("panic");
    assert!(
        !rec.success,
        "the child was meant to panic:\n{}",
        rec.stderr
    );
    assert!(
        rec.stderr.contains("deliberate panic"),
        "the child failed for another reason:\n{}",
        rec.stderr
    );
    assert_all_gone(&rec);
    // The failure names the kept directory and the processes' state ...
    assert!(
        rec.stderr
            .contains(&format!("logs kept in {}", rec.dir.display())),
        "the panic does not say where the logs are:\n{}",
        rec.stderr
    );
    assert!(
        rec.stderr.contains("kube-controller-manager (pid"),
        "no process report:\n{}",
        rec.stderr
    );
    // ... and the watchdogs keep the logs but drop etcd's data.
    wait_for("etcd's data to be removed", || {
        !rec.dir.join("etcd").exists()
    });
    for name in EXPECTED {
        let log = rec.dir.join(format!("{name}.log"));
        assert!(log.is_file(), "{} was not kept", log.display());
    }
    std::fs::remove_dir_all(&rec.dir).unwrap();
}

#[test]
fn a_passing_test_leaves_no_process_and_no_directory() {
    let rec = run_child("pass");
    assert!(rec.success, "the child failed:\n{}", rec.stderr);
    assert_all_gone(&rec);
    let dir: &Path = &rec.dir;
    wait_for("the test bed directory to be removed", || !dir.exists());
}
