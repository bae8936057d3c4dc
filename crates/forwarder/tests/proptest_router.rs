#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property test: arbitrary bodies and headers through the real HTTP front never cause a panic
//! or a 5xx, only a 200 carries a valid signature, and nothing unsigned reaches the sink.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{SECRET, WRITE_KEY, client, config};
use fakes::segment_sink::SegmentSink;
use proptest::prelude::*;

/// How the signature header is produced for a case.
#[derive(Debug, Clone)]
enum Sig {
    None,
    Valid,
    ValidUpper,
    ValidBare,
    OtherSecret,
    Garbage(Vec<u8>),
}

fn sig_strategy() -> impl Strategy<Value = Sig> {
    prop_oneof![
        Just(Sig::None),
        Just(Sig::Valid),
        Just(Sig::ValidUpper),
        Just(Sig::ValidBare),
        Just(Sig::OtherSecret),
        proptest::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..80)
            .prop_map(Sig::Garbage),
    ]
}

fn json_leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[0-9]{15,30}".prop_map(|s| s.trim_start_matches('0').to_owned() + "1"),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ]
}

fn json_value() -> impl Strategy<Value = String> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(","))),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("id".to_owned()),
                        Just("contact".to_owned()),
                        Just("name".to_owned()),
                        Just("service".to_owned()),
                        "[a-zA-Z]{1,8}"
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|members| {
                let body: Vec<String> = members
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Objects shaped like payloads (with big numbers, unicode, odd nesting).
        proptest::collection::vec(
            (
                prop_oneof![
                    Just("id"),
                    Just("contact"),
                    Just("contactId"),
                    Just("service"),
                    Just("serviceId"),
                    Just("seats"),
                    Just("amount"),
                    Just("payment"),
                    Just("slot"),
                    Just("location"),
                ],
                json_value()
            ),
            0..8
        )
        .prop_map(|members| {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", body.join(",")).into_bytes()
        }),
        // Any JSON value, and arbitrary bytes.
        json_value().prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

fn header_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(None),
        Just(Some(b"booking.created".to_vec())),
        proptest::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..300).prop_map(Some),
    ]
}

#[test]
fn arbitrary_requests_never_5xx_and_nothing_unsigned_is_forwarded() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, running) = rt.block_on(async {
        let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
        let running = common::start(config(&sink.url(), dir.path())).await;
        (sink, running)
    });
    let addr = running.addr();
    let http = client();
    let accepted = Arc::new(Mutex::new(0usize));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        body_strategy(),
        sig_strategy(),
        header_bytes(),
        header_bytes(),
    );
    runner
        .run(&strategy, |(body, sig, event, delivery_id)| {
            let signature: Option<Vec<u8>> = match &sig {
                Sig::None => None,
                Sig::Valid => Some(common::sign(SECRET, &body).into_bytes()),
                Sig::ValidUpper => Some(common::sign(SECRET, &body).to_uppercase().into_bytes()),
                Sig::ValidBare => Some(
                    common::sign(SECRET, &body)
                        .trim_start_matches("sha256=")
                        .as_bytes()
                        .to_vec(),
                ),
                Sig::OtherSecret => Some(common::sign("not-the-secret", &body).into_bytes()),
                Sig::Garbage(g) => Some(g.clone()),
            };
            let signed = matches!(sig, Sig::Valid | Sig::ValidUpper | Sig::ValidBare);
            let status = rt.block_on(async {
                let mut req = http
                    .post(format!("http://{addr}/api/webhooks/seshn"))
                    .body(body.clone());
                for (name, value) in [
                    ("x-webhook-signature", &signature),
                    ("x-webhook-event", &event),
                    ("x-webhook-id", &delivery_id),
                ] {
                    if let Some(Ok(v)) = value
                        .as_ref()
                        .map(|v| reqwest::header::HeaderValue::from_bytes(v))
                    {
                        req = req.header(name, v);
                    }
                }
                req.send().await.unwrap().status().as_u16()
            });
            prop_assert!(status < 500, "5xx: {status}");
            prop_assert!([200, 400, 401].contains(&status), "unexpected {status}");
            if status == 200 {
                prop_assert!(signed, "200 without a valid signature");
                *accepted.lock().unwrap() += 1;
            }
            if !signed {
                prop_assert_eq!(status, 401);
            }
            Ok(())
        })
        .unwrap();
    // Everything accepted is delivered; nothing else is. Each accepted request yields at least
    // its track message; bodies unsigned were answered 401 above, so the sink must only hold
    // messages of accepted requests: compare track counts.
    let accepted = *accepted.lock().unwrap();
    rt.block_on(async {
        assert!(
            common::eventually(Duration::from_secs(30), || async {
                common::metric(&http, addr, "seshn_forwarder_spool_depth").await == Some(0.0)
            })
            .await
        );
    });
    let tracks = sink
        .messages()
        .iter()
        .filter(|m| m["type"] == "track")
        .count();
    assert_eq!(
        tracks, accepted,
        "one track per accepted request, none for the others"
    );
    assert_eq!(sink.stats().invalid_messages, 0);
    assert_eq!(sink.stats().rejected_400, 0);
    rt.block_on(async {
        running.shutdown();
        running.wait().await.unwrap();
    });
}
