#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `seed` profile against the seed handler itself: `tests/golden/seed-reference.js` runs the
//! seed's own expressions (shared/seeds/segment-integration.txt, lines 20-55) under Node on every
//! golden input, and its calls must equal the golden files (which `golden.rs` ties to the
//! mapper). Only the inputs on which the seed throws or corrupts data may differ, and each of
//! those must still differ, so the list in docs/mapping.md stays true in both directions.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

/// Inputs on which the seed crashes or corrupts data (docs/mapping.md, "Deliberate differences").
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    (
        "edge.big-numbers-unicode",
        "numbers past 2^53 rounded; numeric userId throws",
    ),
    (
        "edge.contact-without-id",
        "identify without a userId throws",
    ),
    (
        "edge.contact-id-not-usable",
        "boolean userId throws; we fall back",
    ),
    (
        "edge.contact-empty-object",
        "identify without a userId throws",
    ),
    ("edge.contact-not-object", "numeric contactId throws"),
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The seed-visible part of our calls for one case: `{track: {userId, event, properties},
/// identify?: {userId, traits}}`, read from the golden file.
fn ours(case: &str) -> Value {
    let text = std::fs::read_to_string(golden_dir().join("seed").join(format!("{case}.jsonl")))
        .unwrap_or_else(|e| panic!("golden seed/{case}.jsonl: {e}"));
    let mut out = Map::new();
    for line in text.lines() {
        let message: Value = serde_json::from_str(line).unwrap();
        let pick = |keys: &[&str]| -> Value {
            keys.iter()
                .filter_map(|k| message.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                .collect::<Map<_, _>>()
                .into()
        };
        match message["type"].as_str() {
            Some("track") => out.insert("track".into(), pick(&["userId", "event", "properties"])),
            Some("identify") => out.insert("identify".into(), pick(&["userId", "traits"])),
            other => panic!("{case}: unexpected message type {other:?}"),
        };
    }
    Value::Object(out)
}

/// JSON equality where numbers compare by value as JavaScript would see `40.00` and `40`, but
/// two integers must be exactly equal (so a value rounded past 2^53 is a difference).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i128(), y.as_i128()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn seed_profile_equals_the_seed_handler_run_by_node() {
    let mut cases: Vec<String> = std::fs::read_dir(golden_dir().join("input"))
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json").unwrap().to_owned()
        })
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 30,
        "expected every golden input, got {cases:?}"
    );

    // The event header of each case is the one the golden track recorded as `seshnEvent`.
    let mut args = Vec::new();
    for case in &cases {
        let event = ours(case)["track"]["properties"]["seshnEvent"]
            .as_str()
            .unwrap_or_else(|| panic!("{case}: golden track has no seshnEvent"))
            .to_owned();
        args.push(case.clone());
        args.push(event);
    }
    let output = Command::new("node")
        .arg(golden_dir().join("seed-reference.js"))
        .args(&args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running node ({e}): Node.js is a prerequisite (README), e.g. apt-get install -y nodejs")
        });
    assert!(
        output.status.success(),
        "seed-reference.js failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut failures = Vec::new();
    let mut lines = 0;
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let mut seed: Value = serde_json::from_str(line).unwrap();
        let case = seed["case"].as_str().unwrap().to_owned();
        lines += 1;
        let seed_error = seed.as_object_mut().unwrap().remove("error");
        seed.as_object_mut().unwrap().remove("case");
        let ours = ours(&case);
        let equal = seed_error.is_none() && same(&seed, &ours);
        let known = KNOWN_DIFFERENCES.iter().any(|(c, _)| *c == case);
        match (equal, known) {
            (true, false) | (false, true) => {}
            (false, false) => failures.push(format!(
                "{case}: differs from the seed handler\n  seed:  {seed} (error: {seed_error:?})\n  ours:  {ours}"
            )),
            (true, true) => failures.push(format!(
                "{case}: listed as a known difference but equals the seed handler's calls"
            )),
        }
    }
    assert_eq!(
        lines,
        cases.len(),
        "one line per case from seed-reference.js"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
