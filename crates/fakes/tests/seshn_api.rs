#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The fake Seshn API's wire behaviour (DESIGN §4.2), checked with a plain HTTP client.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fakes::seshn_api::{Call, FakeSeshn, Fault, Op};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const KEY: &str = "sk_test_fake_api_1";

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

struct Api {
    fake: FakeSeshn,
    http: reqwest::Client,
}

impl Api {
    async fn start() -> Api {
        let fake = FakeSeshn::start().await;
        fake.add_api_key(KEY);
        Api { fake, http: http() }
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.fake.url()))
            .bearer_auth(KEY)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, body)
    }

    async fn create(&self, body: Value) -> (StatusCode, Value) {
        self.send(self.req(Method::POST, "/v1/webhooks").json(&body))
            .await
    }
}

fn error_type(body: &Value) -> &str {
    body["error"]["type"].as_str().unwrap()
}

#[tokio::test]
async fn create_answers_201_with_the_documented_shape() {
    let api = Api::start().await;
    let (status, body) = api
        .create(json!({"url": "https://h.example/hooks/1", "events": ["booking.created"], "secret": "abc123"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["id"], "wh_1");
    assert_eq!(body["url"], "https://h.example/hooks/1");
    assert_eq!(body["events"], json!(["booking.created"]));
    assert_eq!(body["secret"], "abc123");
    assert_eq!(body["enabled"], true);
    let created_at = body["createdAt"].as_str().unwrap();
    assert_eq!(created_at.len(), 20, "{created_at}");
    assert!(created_at.ends_with('Z') && created_at.as_bytes()[10] == b'T');

    let (status, body) = api
        .create(json!({"url": "https://h.example/hooks/2", "events": [], "description": "d"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["id"], "wh_2");
    assert_eq!(body["description"], "d");
    assert_eq!(
        body["secret"].as_str().unwrap().len(),
        64,
        "a generated secret"
    );
}

#[tokio::test]
async fn get_and_list_never_return_the_secret() {
    let api = Api::start().await;
    let (_, created) = api
        .create(json!({"url": "https://h.example/hooks/1", "events": [], "secret": "s1"}))
        .await;
    let (status, got) = api.send(api.req(Method::GET, "/v1/webhooks/wh_1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["id"], created["id"]);
    assert!(got.get("secret").is_none(), "{got}");
    let (status, page) = api.send(api.req(Method::GET, "/v1/webhooks")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["hasMore"], false);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert!(page["data"][0].get("secret").is_none());
}

#[tokio::test]
async fn list_pages_with_limit_and_starting_after() {
    let api = Api::start().await;
    for i in 0..25 {
        api.fake
            .insert_webhook_out_of_band(KEY, &format!("https://h.example/{i}"), &[]);
    }
    let ids = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Default page size is 10.
    let (_, page) = api.send(api.req(Method::GET, "/v1/webhooks")).await;
    assert_eq!(ids(&page).len(), 10);
    assert_eq!(page["hasMore"], true);

    let (_, page) = api
        .send(api.req(Method::GET, "/v1/webhooks?limit=20"))
        .await;
    let first = ids(&page);
    assert_eq!(first.len(), 20);
    assert_eq!(first[0], "wh_1");
    assert_eq!(page["hasMore"], true);
    let (_, page) = api
        .send(api.req(Method::GET, "/v1/webhooks?limit=20&starting_after=wh_20"))
        .await;
    assert_eq!(
        ids(&page),
        (21..=25).map(|n| format!("wh_{n}")).collect::<Vec<_>>()
    );
    assert_eq!(page["hasMore"], false);

    // A deleted cursor still works (ids are ordered).
    assert!(api.fake.delete_webhook_out_of_band("wh_20"));
    let (_, page) = api
        .send(api.req(Method::GET, "/v1/webhooks?limit=100&starting_after=wh_20"))
        .await;
    assert_eq!(ids(&page).len(), 5);

    for bad in ["limit=0", "limit=101", "limit=x", "starting_after=nope"] {
        let (status, body) = api
            .send(api.req(Method::GET, &format!("/v1/webhooks?{bad}")))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_type(&body), "invalid_request");
    }
}

#[tokio::test]
async fn validation_errors_are_400_or_422() {
    let api = Api::start().await;
    let cases = [
        (json!({"events": []}), 400, "invalid_request"),
        (json!({"url": null, "events": []}), 400, "invalid_request"),
        (json!({"url": 5, "events": []}), 400, "invalid_request"),
        (
            json!({"url": "https://h.example/x"}),
            400,
            "invalid_request",
        ),
        (
            json!({"url": "https://h.example/x", "events": "booking.created"}),
            400,
            "invalid_request",
        ),
        (
            json!({"url": "https://h.example/x", "events": [1, 2]}),
            400,
            "invalid_request",
        ),
        (
            json!({"url": "https://h.example/x", "events": [], "secret": 7}),
            400,
            "invalid_request",
        ),
        (json!(["not", "an", "object"]), 400, "invalid_request"),
        (
            json!({"url": "ftp://h.example/x", "events": []}),
            422,
            "validation_error",
        ),
        (
            json!({"url": "h.example/x", "events": []}),
            422,
            "validation_error",
        ),
        (
            json!({"url": "https://h.example/x", "events": [""]}),
            422,
            "validation_error",
        ),
        (
            json!({"url": "https://h.example/x", "events": [], "secret": ""}),
            422,
            "validation_error",
        ),
    ];
    for (body, status, kind) in cases {
        let (got, answer) = api.create(body.clone()).await;
        assert_eq!(got.as_u16(), status, "{body}");
        assert_eq!(error_type(&answer), kind, "{body}");
        assert!(answer["error"]["message"].is_string());
    }
    let (status, body) = api
        .send(
            api.req(Method::POST, "/v1/webhooks")
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_type(&body), "invalid_request");
    assert_eq!(api.fake.webhook_count(), 0);
}

#[tokio::test]
async fn patch_updates_only_given_fields_and_validates() {
    let api = Api::start().await;
    api.create(json!({"url": "https://h.example/1", "events": ["a.b"]}))
        .await;
    let (status, body) = api
        .send(
            api.req(Method::PATCH, "/v1/webhooks/wh_1")
                .json(&json!({"events": ["c.d", "e.f"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["events"], json!(["c.d", "e.f"]));
    assert_eq!(body["url"], "https://h.example/1");
    assert!(body.get("secret").is_none());

    let (status, _) = api
        .send(
            api.req(Method::PATCH, "/v1/webhooks/wh_1")
                .json(&json!({"url": "mailto:x"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .send(
            api.req(Method::PATCH, "/v1/webhooks/wh_1")
                .json(&json!({"events": [true]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(api.fake.webhooks(KEY)[0].events, vec!["c.d", "e.f"]);

    let (status, body) = api
        .send(api.req(Method::PATCH, "/v1/webhooks/wh_9").json(&json!({})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_type(&body), "not_found");
}

#[tokio::test]
async fn delete_is_204_then_404() {
    let api = Api::start().await;
    api.create(json!({"url": "https://h.example/1", "events": []}))
        .await;
    let (status, body) = api.send(api.req(Method::DELETE, "/v1/webhooks/wh_1")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null);
    let (status, body) = api.send(api.req(Method::DELETE, "/v1/webhooks/wh_1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_type(&body), "not_found");
    let (status, _) = api.send(api.req(Method::GET, "/v1/webhooks/wh_1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn keys_are_tenants_and_bad_keys_get_401_or_403() {
    let api = Api::start().await;
    api.fake.add_api_key("sk_test_other");
    api.create(json!({"url": "https://h.example/1", "events": []}))
        .await;
    let other = |method: Method, path: &str| {
        api.http
            .request(method, format!("{}{path}", api.fake.url()))
            .bearer_auth("sk_test_other")
    };
    let (status, _) = api.send(other(Method::GET, "/v1/webhooks/wh_1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, page) = api.send(other(Method::GET, "/v1/webhooks")).await;
    assert_eq!(page["data"], json!([]));

    let no_auth = api.http.get(format!("{}/v1/webhooks", api.fake.url()));
    let (status, body) = api.send(no_auth).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_type(&body), "unauthorized");
    let unknown = api
        .http
        .get(format!("{}/v1/webhooks", api.fake.url()))
        .bearer_auth("sk_test_unknown");
    assert_eq!(api.send(unknown).await.0, StatusCode::UNAUTHORIZED);

    api.fake.set_key_forbidden(KEY, true);
    let (status, body) = api.send(api.req(Method::GET, "/v1/webhooks")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_type(&body), "forbidden");
    api.fake.set_key_forbidden(KEY, false);
    api.fake.set_key_valid(KEY, false);
    assert_eq!(
        api.send(api.req(Method::GET, "/v1/webhooks")).await.0,
        StatusCode::UNAUTHORIZED
    );
    api.fake.set_key_valid(KEY, true);
    assert_eq!(
        api.fake.webhooks(KEY).len(),
        1,
        "revocation keeps the webhooks"
    );
    assert_eq!(
        api.send(api.req(Method::GET, "/v1/webhooks/wh_1")).await.0,
        StatusCode::OK
    );
    // Unknown routes: auth first, then 404.
    assert_eq!(
        api.send(api.req(Method::GET, "/v1/bookings")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.fake.call_count(Op::Other), 1);
}

#[tokio::test]
async fn idempotency_key_replays_or_conflicts() {
    let api = Api::start().await;
    let body = json!({"url": "https://h.example/1", "events": ["a.b"], "secret": "s"});
    let first = api
        .req(Method::POST, "/v1/webhooks")
        .header("Idempotency-Key", "uid-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let again = api
        .req(Method::POST, "/v1/webhooks")
        .header("Idempotency-Key", "uid-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(api.fake.webhook_count(), 1);

    let (status, answer) = api
        .send(
            api.req(Method::POST, "/v1/webhooks")
                .header("Idempotency-Key", "uid-1")
                .json(&json!({"url": "https://h.example/2", "events": ["a.b"], "secret": "s"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_type(&answer), "idempotency_conflict");
    assert_eq!(api.fake.webhook_count(), 1);

    // Keys are per API key: another tenant using the same idempotency key gets its own webhook.
    api.fake.add_api_key("sk_test_other");
    let resp = api
        .http
        .post(format!("{}/v1/webhooks", api.fake.url()))
        .bearer_auth("sk_test_other")
        .header("Idempotency-Key", "uid-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(api.fake.webhook_count(), 2);

    // Without a key every create is a new webhook.
    api.create(body.clone()).await;
    api.create(body).await;
    assert_eq!(api.fake.webhooks(KEY).len(), 3);
}

#[tokio::test]
async fn injected_faults_are_consumed_per_request_and_targeted() {
    let api = Api::start().await;
    api.fake.inject(
        Some(Op::List),
        Fault::RateLimited {
            retry_after_secs: Some(3),
        },
    );
    api.fake.inject_n(Some(Op::Create), Fault::Status(502), 2);
    assert_eq!(api.fake.pending_faults(), 3);

    // A get is not targeted.
    assert_eq!(
        api.send(api.req(Method::GET, "/v1/webhooks/wh_1")).await.0,
        StatusCode::NOT_FOUND
    );
    let resp = api.req(Method::GET, "/v1/webhooks").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "3");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(error_type(&body), "rate_limited");

    let hook = json!({"url": "https://h.example/1", "events": []});
    for _ in 0..2 {
        let (status, body) = api.create(hook.clone()).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(error_type(&body), "server_error");
    }
    assert_eq!(api.fake.webhook_count(), 0, "failed creates store nothing");
    assert_eq!(api.create(hook).await.0, StatusCode::CREATED);
    assert_eq!(api.fake.pending_faults(), 0);

    let statuses: Vec<(Op, u16)> = api.fake.calls().iter().map(|c| (c.op, c.status)).collect();
    assert_eq!(
        statuses,
        vec![
            (Op::Get, 404),
            (Op::List, 429),
            (Op::Create, 502),
            (Op::Create, 502),
            (Op::Create, 201),
        ]
    );
    assert_eq!(api.fake.call_count(Op::Create), 3);
    assert_eq!(api.fake.call_count_for(KEY, Op::Create), 3);
    assert_eq!(api.fake.call_count_for("sk_test_other", Op::Create), 0);
    api.fake.reset_calls();
    assert!(api.fake.calls().is_empty());

    api.fake.inject(None, Fault::Status(500));
    api.fake.clear_faults();
    assert_eq!(api.fake.pending_faults(), 0);
}

#[tokio::test]
async fn lost_answer_performs_the_operation_and_closes_the_connection() {
    let api = Api::start().await;
    api.fake.inject(Some(Op::Create), Fault::LoseAnswer);
    let result = api
        .req(Method::POST, "/v1/webhooks")
        .header("Idempotency-Key", "k")
        .json(&json!({"url": "https://h.example/1", "events": []}))
        .send()
        .await;
    let err = result.expect_err("no answer expected");
    assert!(
        !err.is_timeout(),
        "the connection is closed, not left hanging"
    );
    assert_eq!(api.fake.webhook_count(), 1);
    assert_eq!(
        api.fake.calls(),
        vec![Call {
            op: Op::Create,
            status: 0,
            api_key: Some(KEY.to_owned()),
        }]
    );
    // The server keeps serving other connections.
    assert_eq!(
        api.send(api.req(Method::GET, "/v1/webhooks/wh_1")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn latency_delays_answers() {
    let api = Api::start().await;
    api.fake
        .inject(None, Fault::Latency(Duration::from_millis(300)));
    let started = Instant::now();
    assert_eq!(
        api.send(api.req(Method::GET, "/v1/webhooks")).await.0,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    api.fake.set_latency(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(
        api.send(api.req(Method::GET, "/v1/webhooks")).await.0,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn out_of_band_changes_are_visible() {
    let api = Api::start().await;
    let hook =
        api.fake
            .insert_webhook_out_of_band(KEY, "https://h.example/manual", &["a.b".to_owned()]);
    let (status, body) = api
        .send(api.req(Method::GET, &format!("/v1/webhooks/{}", hook.id)))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["url"], "https://h.example/manual");
    assert!(api.fake.delete_webhook_out_of_band(&hook.id));
    assert!(!api.fake.delete_webhook_out_of_band(&hook.id));
    assert!(!api.fake.delete_webhook_out_of_band("garbage"));
    assert_eq!(
        api.send(api.req(Method::GET, &format!("/v1/webhooks/{}", hook.id)))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_webhook_disabled_out_of_band_reads_as_disabled_until_enabled_again() {
    let api = Api::start().await;
    let hook = api
        .fake
        .insert_webhook_out_of_band(KEY, "https://h.example/x", &[]);
    assert!(hook.enabled);
    assert!(api.fake.set_webhook_enabled_out_of_band(&hook.id, false));
    let get = || api.req(Method::GET, &format!("/v1/webhooks/{}", hook.id));
    assert_eq!(api.send(get()).await.1["enabled"], false);
    let (_, list) = api.send(api.req(Method::GET, "/v1/webhooks")).await;
    assert_eq!(list["data"][0]["enabled"], false);
    // The API has no field for it: a PATCH with `enabled` changes nothing.
    let (status, body) = api
        .send(
            api.req(Method::PATCH, &format!("/v1/webhooks/{}", hook.id))
                .json(&json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["enabled"], false);
    assert!(api.fake.set_webhook_enabled_out_of_band(&hook.id, true));
    assert_eq!(api.send(get()).await.1["enabled"], true);
    assert!(!api.fake.set_webhook_enabled_out_of_band("wh_999", false));
}

#[tokio::test]
async fn timed_calls_tell_when_each_call_was_answered() {
    let api = Api::start().await;
    let before = Instant::now();
    api.send(api.req(Method::GET, "/v1/webhooks")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    api.send(api.req(Method::GET, "/v1/webhooks/wh_1")).await;
    let timed = api.fake.timed_calls();
    assert_eq!(timed.len(), 2);
    assert_eq!(timed[0].1.op, Op::List);
    assert_eq!(timed[1].1.op, Op::Get);
    assert!(timed[0].0 >= before);
    assert!(timed[1].0.duration_since(timed[0].0) >= Duration::from_millis(50));
    assert_eq!(
        timed.into_iter().map(|(_, c)| c).collect::<Vec<_>>(),
        api.fake.calls()
    );
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let fake = FakeSeshn::start().await;
    let url = format!("{}/v1/webhooks", fake.url());
    let http = http();
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    drop(fake);
    // Shutdown is asynchronous: poll (bounded) until a fresh connection is refused.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if client.get(&url).send().await.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server still answering after drop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn binary_serves_the_api() {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_fake-seshn"))
            .args(["--listen", "127.0.0.1:0", "--api-key", "sk_test_bin"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    // The first line announces the address; read it off the async runtime.
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("fake-seshn announced its address")
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("fake-seshn listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let http = http();
    let resp = http
        .post(format!("{url}/v1/webhooks"))
        .bearer_auth("sk_test_bin")
        .json(&json!({"url": "https://h.example/1", "events": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = http
        .get(format!("{url}/v1/webhooks"))
        .bearer_auth("sk_test_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// Kills the child process even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
