#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The webhooks client against the fake Seshn API over real HTTP on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fakes::seshn_api::{Call, FakeSeshn, Fault, Op};
use seshn::webhooks::{
    Deleted, NewWebhook, RateLimiter, SeshnClient, SeshnError, WebhookPatch, http_client,
};

const KEY: &str = "sk_test_alpha_5f2c9e1d7b";
const OTHER_KEY: &str = "sk_test_beta_88a1c0ffee";
const SECRET: &str = "c0ffee00deadbeefc0ffee00deadbeefc0ffee00deadbeefc0ffee00deadbeef";

/// Generous: the machine is shared and loaded; only the timeout test uses a short one.
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

async fn fake() -> FakeSeshn {
    let fake = FakeSeshn::start().await;
    fake.add_api_key(KEY);
    fake.add_api_key(OTHER_KEY);
    fake
}

fn client_for(fake: &FakeSeshn, key: &str) -> SeshnClient {
    SeshnClient::new(
        http_client(HTTP_TIMEOUT),
        &fake.url(),
        key,
        Arc::new(RateLimiter::unlimited()),
    )
    .unwrap()
}

fn new_hook(url: &str, events: &[&str]) -> NewWebhook {
    NewWebhook {
        url: url.to_owned(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        description: Some("seshn-segment test".to_owned()),
        secret: Some(SECRET.to_owned()),
    }
}

#[tokio::test]
async fn create_get_list_update_delete_round_trip() {
    let fake = fake().await;
    let client = client_for(&fake, KEY);

    let created = client
        .create(
            &new_hook(
                "https://hooks.example.com/hooks/uid-1",
                &["booking.created"],
            ),
            "uid-1",
        )
        .await
        .unwrap();
    assert!(created.id.starts_with("wh_"), "{}", created.id);
    assert_eq!(created.url, "https://hooks.example.com/hooks/uid-1");
    assert_eq!(created.events, vec!["booking.created".to_owned()]);
    assert!(created.enabled);
    assert_eq!(created.secret.as_ref().unwrap().expose(), SECRET);
    assert_eq!(created.description.as_deref(), Some("seshn-segment test"));
    assert_eq!(fake.webhooks(KEY)[0].secret, SECRET);

    let got = client.get(&created.id).await.unwrap().unwrap();
    assert_eq!(got.id, created.id);
    assert_eq!(got.url, created.url);
    assert_eq!(got.events, created.events);
    assert!(got.secret.is_none(), "get must not return the secret");

    let listed = client.list_all().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, created.id);
    assert!(listed[0].secret.is_none());

    let events = vec!["booking.created".to_owned(), "payment.failed".to_owned()];
    let updated = client
        .update(
            &created.id,
            &WebhookPatch {
                url: None,
                events: Some(events.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.events, events);
    assert_eq!(updated.url, created.url, "url untouched by an events patch");
    let updated = client
        .update(
            &created.id,
            &WebhookPatch {
                url: Some("https://hooks.example.com/hooks/uid-1b".to_owned()),
                events: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.url, "https://hooks.example.com/hooks/uid-1b");
    assert_eq!(updated.events, events, "events untouched by a url patch");
    assert_eq!(fake.webhooks(KEY)[0].events, events);

    assert_eq!(client.delete(&created.id).await.unwrap(), Deleted::Deleted);
    assert!(fake.webhooks(KEY).is_empty());
    assert_eq!(client.get(&created.id).await.unwrap(), None);
    assert_eq!(
        client.delete(&created.id).await.unwrap(),
        Deleted::AlreadyGone
    );
    assert_eq!(
        client
            .update(&created.id, &WebhookPatch::default())
            .await
            .unwrap_err(),
        SeshnError::NotFound
    );
    assert_eq!(client.list_all().await.unwrap(), vec![]);
}

#[tokio::test]
async fn base_url_with_trailing_slash_or_version_works() {
    let fake = fake().await;
    for base in [
        format!("{}/", fake.url()),
        format!("{}/v1", fake.url()),
        format!("{}/v1/", fake.url()),
    ] {
        let client = SeshnClient::new(
            http_client(HTTP_TIMEOUT),
            &base,
            KEY,
            Arc::new(RateLimiter::unlimited()),
        )
        .unwrap();
        assert_eq!(client.base_url(), format!("{}/v1", fake.url()));
        assert_eq!(client.list_all().await.unwrap(), vec![]);
    }
}

#[tokio::test]
async fn create_without_secret_gets_a_generated_one() {
    let fake = fake().await;
    let client = client_for(&fake, KEY);
    let mut req = new_hook("https://hooks.example.com/hooks/uid-2", &[]);
    req.secret = None;
    req.description = None;
    let created = client.create(&req, "uid-2").await.unwrap();
    let secret = created.secret.unwrap();
    assert_eq!(secret.expose().len(), 64);
    assert_eq!(fake.webhooks(KEY)[0].secret, secret.expose());
    assert!(created.events.is_empty());
    assert_eq!(created.description, None);
}

#[tokio::test]
async fn list_all_follows_pagination_and_sees_only_its_tenant() {
    let fake = fake().await;
    let events = vec!["booking.created".to_owned()];
    for i in 0..230 {
        let key = if i % 10 == 0 { OTHER_KEY } else { KEY };
        fake.insert_webhook_out_of_band(key, &format!("https://h.example/hooks/{i}"), &events);
    }
    let client = client_for(&fake, KEY);
    let all = client.list_all().await.unwrap();
    assert_eq!(all.len(), 207);
    let expected: Vec<String> = fake.webhooks(KEY).into_iter().map(|w| w.id).collect();
    let got: Vec<String> = all.iter().map(|w| w.id.clone()).collect();
    assert_eq!(got, expected, "every webhook once, in order");
    assert_eq!(
        fake.call_count(Op::List),
        3,
        "207 webhooks are 3 pages of 100"
    );

    let other = client_for(&fake, OTHER_KEY).list_all().await.unwrap();
    assert_eq!(other.len(), 23);
    assert!(other.iter().all(|w| !got.contains(&w.id)));
}

#[tokio::test]
async fn tenants_cannot_touch_each_others_webhooks() {
    let fake = fake().await;
    let alpha = client_for(&fake, KEY);
    let beta = client_for(&fake, OTHER_KEY);
    let hook = alpha
        .create(&new_hook("https://h.example/hooks/a", &[]), "a")
        .await
        .unwrap();
    assert_eq!(beta.get(&hook.id).await.unwrap(), None);
    assert_eq!(beta.delete(&hook.id).await.unwrap(), Deleted::AlreadyGone);
    assert!(alpha.get(&hook.id).await.unwrap().is_some());
}

#[tokio::test]
async fn create_is_idempotent_per_key() {
    let fake = fake().await;
    let client = client_for(&fake, KEY);
    let req = new_hook("https://h.example/hooks/uid-3", &["booking.created"]);
    let first = client.create(&req, "uid-3").await.unwrap();
    let second = client.create(&req, "uid-3").await.unwrap();
    assert_eq!(first, second);
    assert_eq!(fake.webhooks(KEY).len(), 1, "no second webhook");

    let mut changed = req.clone();
    changed.events.push("payment.failed".to_owned());
    let err = client.create(&changed, "uid-3").await.unwrap_err();
    assert!(matches!(err, SeshnError::Conflict { .. }), "{err:?}");
    assert_eq!(err.kind(), "Conflict");
    assert_eq!(fake.webhooks(KEY).len(), 1);

    // Another key is another webhook.
    let third = client.create(&req, "uid-4").await.unwrap();
    assert_ne!(third.id, first.id);
    assert_eq!(fake.webhooks(KEY).len(), 2);
}

#[tokio::test]
async fn rejected_keys_map_to_unauthorized() {
    let fake = fake().await;
    let unknown = client_for(&fake, "sk_test_nobody_knows_me");
    let err = unknown.list_all().await.unwrap_err();
    assert_eq!(err, SeshnError::Unauthorized { status: 401 });
    assert_eq!(err.kind(), "Unauthorized");
    assert!(!err.is_transient());
    assert_eq!(
        unknown.get("wh_1").await.unwrap_err(),
        SeshnError::Unauthorized { status: 401 }
    );

    let client = client_for(&fake, KEY);
    fake.set_key_forbidden(KEY, true);
    assert_eq!(
        client
            .create(&new_hook("https://h.example/x", &[]), "k")
            .await
            .unwrap_err(),
        SeshnError::Unauthorized { status: 403 }
    );
    fake.set_key_forbidden(KEY, false);
    fake.set_key_valid(KEY, false);
    assert_eq!(
        client.delete("wh_1").await.unwrap_err(),
        SeshnError::Unauthorized { status: 401 }
    );
    fake.set_key_valid(KEY, true);
    assert_eq!(client.list_all().await.unwrap(), vec![]);
    assert!(
        fake.webhooks(KEY).is_empty(),
        "nothing was created while rejected"
    );
}

#[tokio::test]
async fn rate_limits_map_with_retry_after() {
    let fake = fake().await;
    let client = client_for(&fake, KEY);
    fake.inject(
        Some(Op::Get),
        Fault::RateLimited {
            retry_after_secs: Some(7),
        },
    );
    let err = client.get("wh_1").await.unwrap_err();
    assert_eq!(
        err,
        SeshnError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(err.is_transient());
    assert_eq!(err.kind(), "RateLimited");

    fake.inject(
        None,
        Fault::RateLimited {
            retry_after_secs: None,
        },
    );
    let err = client.list_all().await.unwrap_err();
    assert_eq!(err, SeshnError::RateLimited { retry_after: None });
    assert_eq!(fake.pending_faults(), 0);
    // Faults are consumed: the next call goes through.
    assert_eq!(client.get("wh_1").await.unwrap(), None);
}

#[tokio::test]
async fn server_errors_map_and_do_nothing() {
    let fake = fake().await;
    let client = client_for(&fake, KEY);
    fake.inject(Some(Op::Create), Fault::Status(503));
    let err = client
        .create(&new_hook("https://h.example/hooks/5", &[]), "uid-5")
        .await
        .unwrap_err();
    assert_eq!(err, SeshnError::Server { status: 503 });
    assert!(err.is_transient());
    assert_eq!(err.kind(), "ServerError");
    assert!(fake.webhooks(KEY).is_empty());

    fake.inject(Some(Op::List), Fault::Status(500));
    assert_eq!(
        client.list_all().await.unwrap_err(),
        SeshnError::Server { status: 500 }
    );
    // The retry after a 5xx creates exactly one.
    client
        .create(&new_hook("https://h.example/hooks/5", &[]), "uid-5")
        .await
        .unwrap();
    assert_eq!(fake.webhooks(KEY).len(), 1);
}

#[tokio::test]
async fn unusual_statuses_map_sensibly() {
    let fake = fake().await;
    let client = client_for(&fake, KEY);
    fake.inject(Some(Op::Get), Fault::Status(410));
    assert_eq!(client.get("wh_1").await.unwrap(), None);
    fake.inject(Some(Op::Delete), Fault::Status(410));
    assert_eq!(client.delete("wh_1").await.unwrap(), Deleted::AlreadyGone);
    fake.inject(Some(Op::Update), Fault::Status(410));
    assert_eq!(
        client
            .update("wh_1", &WebhookPatch::default())
            .await
            .unwrap_err(),
        SeshnError::NotFound
    );
    fake.inject(Some(Op::Get), Fault::Status(408));
    assert_eq!(
        client.get("wh_1").await.unwrap_err(),
        SeshnError::Server { status: 408 }
    );
    // Redirects are not followed (they would carry the bearer key elsewhere).
    fake.inject(Some(Op::List), Fault::Status(302));
    let err = client.list_all().await.unwrap_err();
    assert!(
        matches!(err, SeshnError::Invalid { status: 302, .. }),
        "{err:?}"
    );
    fake.inject(Some(Op::Get), Fault::Status(418));
    match client.get("wh_1").await.unwrap_err() {
        SeshnError::Invalid { status, message } => {
            assert_eq!(status, 418);
            assert_eq!(message, "injected failure");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_requests_map_to_invalid_with_the_message() {
    let fake = fake().await;
    let client = client_for(&fake, KEY);
    let err = client
        .create(&new_hook("ftp://h.example/hooks/6", &[]), "uid-6")
        .await
        .unwrap_err();
    match &err {
        SeshnError::Invalid { status, message } => {
            assert_eq!(*status, 422);
            assert!(message.contains("http"), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(!err.is_transient());
    assert_eq!(err.kind(), "InvalidRequest");

    let err = client
        .create(&new_hook("https://h.example/hooks/6", &[""]), "uid-6")
        .await
        .unwrap_err();
    assert!(
        matches!(err, SeshnError::Invalid { status: 422, .. }),
        "{err:?}"
    );

    // Refused locally, before any request.
    let calls = fake.calls().len();
    let err = client
        .create(&new_hook("https://h.example/hooks/6", &[]), "bad\nkey")
        .await
        .unwrap_err();
    assert!(
        matches!(err, SeshnError::Invalid { status: 0, .. }),
        "{err:?}"
    );
    assert_eq!(fake.calls().len(), calls);
    assert!(fake.webhooks(KEY).is_empty());
}

#[tokio::test]
async fn lost_create_answer_then_retry_with_same_key_returns_the_same_webhook() {
    let fake = fake().await;
    let client = client_for(&fake, KEY);
    let req = new_hook("https://h.example/hooks/uid-7", &["booking.created"]);
    fake.inject(Some(Op::Create), Fault::LoseAnswer);
    let err = client.create(&req, "uid-7").await.unwrap_err();
    assert!(err.to_string().contains("connection closed"), "{err}");
    assert!(matches!(err, SeshnError::Network { .. }), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(err.kind(), "NetworkError");
    let stored = fake.webhooks(KEY);
    assert_eq!(
        stored.len(),
        1,
        "the create happened although its answer was lost"
    );

    let retried = client.create(&req, "uid-7").await.unwrap();
    assert_eq!(retried.id, stored[0].id);
    assert_eq!(retried.secret.unwrap().expose(), SECRET);
    assert_eq!(fake.webhooks(KEY).len(), 1, "no duplicate");
    let creates: Vec<Call> = fake
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::Create)
        .collect();
    assert_eq!(
        creates.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![0, 201]
    );

    // The lost answer can also be recovered by listing (the operator's adoption path).
    let listed = client.list_all().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].url.ends_with("/uid-7"));
}

#[tokio::test]
async fn lost_delete_answer_is_a_network_error_and_the_retry_is_already_gone() {
    let fake = fake().await;
    let client = client_for(&fake, KEY);
    let hook = client
        .create(&new_hook("https://h.example/hooks/uid-8", &[]), "uid-8")
        .await
        .unwrap();
    fake.inject(Some(Op::Delete), Fault::LoseAnswer);
    let err = client.delete(&hook.id).await.unwrap_err();
    assert!(matches!(err, SeshnError::Network { .. }), "{err:?}");
    assert_eq!(client.delete(&hook.id).await.unwrap(), Deleted::AlreadyGone);
}

#[tokio::test]
async fn slow_answers_time_out_as_network_errors() {
    let fake = fake().await;
    let client = client_for(&fake, KEY).with_timeout(Duration::from_millis(300));
    fake.inject(Some(Op::Get), Fault::Latency(Duration::from_secs(5)));
    let started = Instant::now();
    let err = client.get("wh_1").await.unwrap_err();
    match &err {
        SeshnError::Network { reason } => assert!(reason.contains("timed out"), "{reason}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // Loose bound: the point is that we did not wait for the 5 s answer.
    assert!(started.elapsed() < Duration::from_millis(4500));

    // A delay below the timeout is just slow.
    let client = client_for(&fake, KEY).with_timeout(Duration::from_secs(15));
    fake.inject(Some(Op::Get), Fault::Latency(Duration::from_millis(200)));
    let started = Instant::now();
    assert_eq!(client.get("wh_1").await.unwrap(), None);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn unreachable_server_is_a_network_error() {
    // Bind then drop, so the port is (very likely) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = SeshnClient::new(
        http_client(HTTP_TIMEOUT),
        &format!("http://127.0.0.1:{port}"),
        KEY,
        Arc::new(RateLimiter::unlimited()),
    )
    .unwrap();
    let err = client.list_all().await.unwrap_err();
    assert!(err.to_string().contains("connect failed"), "{err}");
    assert!(matches!(err, SeshnError::Network { .. }), "{err:?}");
    assert!(!err.to_string().contains(KEY));
}

#[tokio::test]
async fn debug_and_display_never_show_the_key_or_secret() {
    let fake = fake().await;
    let client = client_for(&fake, KEY);
    let req = new_hook("https://h.example/hooks/uid-9", &[]);
    let hook = client.create(&req, "uid-9").await.unwrap();

    let mut texts = vec![
        format!("{client:?}"),
        format!("{req:?}"),
        format!("{hook:?}"),
        format!("{:?}", hook.secret),
    ];
    fake.set_key_valid(KEY, false);
    let err = client.list_all().await.unwrap_err();
    texts.push(format!("{err} {err:?}"));
    fake.set_key_valid(KEY, true);
    let conflict = client
        .create(&new_hook("https://h.example/hooks/other", &[]), "uid-9")
        .await
        .unwrap_err();
    texts.push(format!("{conflict} {conflict:?}"));
    fake.inject(None, Fault::LoseAnswer);
    let lost = client.create(&req, "uid-9").await.unwrap_err();
    texts.push(format!("{lost} {lost:?}"));
    for text in &texts {
        assert!(!text.contains(KEY), "API key leaked: {text}");
        assert!(!text.contains(SECRET), "secret leaked: {text}");
    }
    assert!(texts[0].contains("redacted"));
}

#[tokio::test]
async fn observer_sees_every_attempt_with_its_status() {
    let fake = fake().await;
    let seen: Arc<Mutex<Vec<(&'static str, u16)>>> = Arc::default();
    let sink = seen.clone();
    let client = client_for(&fake, KEY).with_observer(Arc::new(move |op, status| {
        sink.lock().unwrap().push((op, status));
    }));
    let hook = client
        .create(&new_hook("https://h.example/hooks/o", &[]), "o")
        .await
        .unwrap();
    client.get(&hook.id).await.unwrap();
    client.get("wh_999").await.unwrap();
    client.list_all().await.unwrap();
    client
        .update(&hook.id, &WebhookPatch::default())
        .await
        .unwrap();
    fake.inject(None, Fault::LoseAnswer);
    client.delete(&hook.id).await.unwrap_err();
    client.delete(&hook.id).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            ("create", 201),
            ("get", 200),
            ("get", 404),
            ("list", 200),
            ("update", 200),
            ("delete", 0),
            ("delete", 404),
        ]
    );
}

#[tokio::test]
async fn rate_limiter_bounds_the_request_rate_across_clients() {
    let fake = fake().await;
    // One limiter shared by two tenants' clients: the budget is global.
    let limiter = Arc::new(RateLimiter::new(10, 5));
    let a = SeshnClient::new(http_client(HTTP_TIMEOUT), &fake.url(), KEY, limiter.clone()).unwrap();
    let b = SeshnClient::new(http_client(HTTP_TIMEOUT), &fake.url(), OTHER_KEY, limiter).unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { client.get("wh_1").await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), None);
    }
    let elapsed = started.elapsed();
    // 5 at once, then 15 at 10/s: at least 1.5 s (1.4 s leaves room for clock granularity).
    assert!(elapsed >= Duration::from_millis(1400), "{elapsed:?}");
    // Loose upper bound for a loaded 2-core machine.
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    assert_eq!(fake.call_count(Op::Get), 20);
}

#[tokio::test]
async fn a_webhook_disabled_at_seshn_reads_as_disabled() {
    let fake = fake().await;
    let client = client_for(&fake, KEY);
    let created = client
        .create(
            &new_hook("https://hooks.example.com/hooks/uid-9", &[]),
            "uid-9",
        )
        .await
        .unwrap();
    assert!(fake.set_webhook_enabled_out_of_band(&created.id, false));
    assert!(!client.get(&created.id).await.unwrap().unwrap().enabled);
    assert!(!client.list_all().await.unwrap()[0].enabled);
    assert!(fake.set_webhook_enabled_out_of_band(&created.id, true));
    assert!(client.get(&created.id).await.unwrap().unwrap().enabled);
}
