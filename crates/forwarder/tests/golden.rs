#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Golden files of the mapping, for both profiles.
//!
//! Inputs: `tests/golden/input/<case>.json` (raw bodies, byte-exact). Outputs:
//! `tests/golden/<profile>/<case>.jsonl`, one Segment message per line, exactly as sent.
//! Regenerate after a deliberate change with
//! `UPDATE_GOLDEN=1 cargo nextest run -p forwarder --test golden`, then review the diff.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use forwarder::mapping::table::SUBSCRIBED_EVENTS;
use forwarder::mapping::tracking_plan::tracking_plan;
use forwarder::mapping::{Delivery, Mapper, MappingConfig, Profile};

/// (case, event header, delivery id header). The case is also the input file name.
const EDGE_CASES: &[(&str, &str, Option<&str>)] = &[
    ("edge.big-numbers-unicode", "booking.created", None),
    ("edge.contact-without-id", "booking.created", None),
    ("edge.contact-id-not-usable", "booking.created", None),
    ("edge.contact-empty-object", "booking.created", None),
    ("edge.contact-not-object", "booking.created", None),
    ("edge.nullish", "booking.created", None),
    ("edge.nested-non-objects", "booking.created", None),
    ("edge.duplicate-keys", "booking.created", None),
    ("edge.empty-object", "booking.created", None),
    ("edge.nested-values", "booking.created", None),
    ("edge.whitespace-and-escapes", "booking.created", None),
    ("edge.unknown-event", "booking.no_show", None),
    ("edge.payment-zero-decimal", "payment.succeeded", None),
    ("edge.delivery-id", "booking.created", Some("dlv_0001")),
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn cases() -> Vec<(String, String, Option<String>)> {
    let mut out: Vec<_> = SUBSCRIBED_EVENTS
        .iter()
        .map(|e| ((*e).to_owned(), (*e).to_owned(), None))
        .collect();
    out.extend(
        EDGE_CASES
            .iter()
            .map(|(c, e, d)| ((*c).to_owned(), (*e).to_owned(), d.map(str::to_owned))),
    );
    out
}

fn mapper(profile: Profile) -> Mapper {
    Mapper::new(MappingConfig {
        profile,
        bridge_id: "golden-bridge".into(),
        identify: true,
        extra_properties: vec![],
    })
    .unwrap()
}

fn render(profile: Profile, case: &str, event: &str, delivery_id: Option<&str>) -> String {
    let body = std::fs::read(golden_dir().join("input").join(format!("{case}.json")))
        .unwrap_or_else(|e| panic!("input for {case}: {e}"));
    // Byte-exact bodies: strip only the final newline the editor added, as Seshn would not send it.
    let body = body.strip_suffix(b"\n").unwrap_or(&body);
    let delivery = Delivery {
        event,
        body,
        received_at: UNIX_EPOCH + Duration::from_secs(1_767_261_600),
        delivery_id,
    };
    let mapped = mapper(profile).map(&delivery).unwrap();
    let mut out = String::new();
    for message in mapped.messages {
        // Every message must be valid JSON on its own.
        serde_json::from_str::<serde_json::Value>(&message).unwrap();
        out.push_str(&message);
        out.push('\n');
    }
    out
}

fn check(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{} differs\n--- expected\n{expected}+++ actual\n{actual}",
            path.display()
        )),
        Err(_) => failures.push(format!(
            "{} missing (run with UPDATE_GOLDEN=1)",
            path.display()
        )),
    }
}

#[test]
fn golden_mapping_both_profiles() {
    let mut failures = Vec::new();
    for profile in [Profile::Seed, Profile::Spec] {
        let dir = golden_dir().join(profile.as_str());
        let mut expected_files = Vec::new();
        for (case, event, delivery_id) in cases() {
            let actual = render(profile, &case, &event, delivery_id.as_deref());
            let file = dir.join(format!("{case}.jsonl"));
            check(&file, &actual, &mut failures);
            expected_files.push(format!("{case}.jsonl"));
        }
        // No stale golden file without a case.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if !expected_files.contains(&name) {
                    failures.push(format!("stale golden file {profile:?}/{name}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn golden_tracking_plans() {
    let mut failures = Vec::new();
    for profile in [Profile::Seed, Profile::Spec] {
        let plan = serde_json::to_string_pretty(&tracking_plan(profile)).unwrap() + "\n";
        let file = golden_dir().join(format!("tracking-plan.{}.json", profile.as_str()));
        check(&file, &plan, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_input_has_a_case() {
    let cases: Vec<String> = cases().into_iter().map(|(c, _, _)| c).collect();
    assert_eq!(cases.len(), 16 + EDGE_CASES.len());
    for entry in std::fs::read_dir(golden_dir().join("input")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let case = name.strip_suffix(".json").unwrap();
        assert!(cases.iter().any(|c| c == case), "input {name} has no case");
    }
}

/// Spot checks that the golden files encode what the docs promise (so a careless regeneration
/// cannot silently bless a regression).
#[test]
fn golden_spot_checks() {
    let big = render(
        Profile::Seed,
        "edge.big-numbers-unicode",
        "booking.created",
        None,
    );
    assert!(big.contains(r#""bookingId":9007199254740993"#));
    assert!(big.contains(r#""userId":"12345678901234567890""#));
    assert!(big.contains(r#""amount":123456789012345678901234567890"#));
    assert!(big.contains(r#""name":"Zoë Ñúñez \u00e9 \ud83d\ude00 名前""#));
    assert!(big.contains(r#""phone":null"#));

    let no_id = render(
        Profile::Seed,
        "edge.contact-without-id",
        "booking.created",
        None,
    );
    assert_eq!(no_id.lines().count(), 1, "track only");
    assert!(no_id.contains(r#""userId":"ct_flat""#));

    let nullish = render(Profile::Seed, "edge.nullish", "booking.created", None);
    let track: serde_json::Value = serde_json::from_str(nullish.lines().next().unwrap()).unwrap();
    assert_eq!(track["userId"], "anonymous");
    let props = track["properties"].as_object().unwrap();
    // `null ?? undefined` is undefined (omitted); `null ?? null` stays null.
    assert!(props.get("serviceId").unwrap().is_null());
    assert!(props.get("amount").unwrap().is_null());
    assert!(props.get("slotStartTime").is_none());
    assert!(
        props.get("locationId").is_none(),
        "null ?? location?.id with no location"
    );

    let dup = render(
        Profile::Seed,
        "edge.duplicate-keys",
        "booking.created",
        None,
    );
    assert!(dup.contains(r#""bookingId":"second""#) && dup.contains(r#""userId":"ct_b""#));

    let paid = render(
        Profile::Spec,
        "payment.succeeded",
        "payment.succeeded",
        None,
    );
    assert!(paid.contains(r#""event":"Order Completed""#));
    assert!(paid.contains(r#""revenue":40.00"#) && paid.contains(r#""currency":"USD""#));
    let yen = render(
        Profile::Spec,
        "edge.payment-zero-decimal",
        "payment.succeeded",
        None,
    );
    assert!(yen.contains(r#""revenue":5000,"#));
}
