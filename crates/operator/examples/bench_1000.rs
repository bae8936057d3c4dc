//! Benchmark (not a test): N bridges (default 1,000) applied at once against the real
//! kube-apiserver test bed and the fake Seshn, with the operator running as its real binary.
//!
//! Measures: time until every bridge is Ready, operator RSS, and what a resync of the unchanged
//! bridges costs (Kubernetes writes and Seshn calls by operation).
//!
//!   cargo build --release -p operator --bin seshn-segment-operator --example bench_1000
//!   target/release/examples/bench_1000            # BENCH_BRIDGES=1000 BENCH_RESYNC=60s
//!
//! No kubelet runs, so the benchmark plays the Deployment controller: it marks every forwarder
//! Deployment available as soon as it appears.
//!
//! The control plane is the test bed's (`crates/testbed`: etcd, kube-apiserver v1.20.2 and
//! kube-controller-manager, whose /16 service range holds the 1,000 forwarder Services).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bridge_api::SeshnSegmentBridge;
use fakes::seshn_api::{FakeSeshn, Op};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, CustomResourceExt, ResourceExt};
use serde_json::json;

const API_KEY: &str = "sk_test_bench";

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .and_then(reqwest::Response::error_for_status);
    let Ok(resp) = text else {
        return BTreeMap::new();
    };
    let body = resp.text().await.unwrap_or_default();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn writes(m: &BTreeMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.starts_with("seshn_segment_operator_kube_writes_total") && !k.contains("event")
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::var("BENCH_BRIDGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let resync = std::env::var("BENCH_RESYNC").unwrap_or_else(|_| "60s".into());
    let rate = std::env::var("BENCH_SESHN_RATE").unwrap_or_else(|_| "20".into());
    let tb = testbed::testbed();
    let client = tb.client().await;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = SeshnSegmentBridge::crd();
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("bench").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let all: Api<SeshnSegmentBridge> = Api::all(client.clone());
    for _ in 0..100 {
        if all.list(&ListParams::default().limit(1)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let seshn = FakeSeshn::start().await;
    seshn.add_api_key(API_KEY);
    let ns = "bench".to_owned();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut namespace = k8s_openapi::api::core::v1::Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for (name, key, value) in [("seshn", "apiKey", API_KEY), ("segment", "writeKey", "wk")] {
        let s = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some([(key.to_owned(), ByteString(value.as_bytes().to_vec()))].into()),
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }

    // The operator, as its real binary.
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("seshn-segment-operator");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(&bin)
        .arg("run")
        .env("KUBECONFIG", tb.kubeconfig_path())
        .env(
            "FORWARDER_IMAGE",
            "ghcr.io/seshn-segment/seshn-segment:bench",
        )
        .env("SESHN_API_URL", seshn.url())
        .env("WATCH_NAMESPACES", &ns)
        .env("RESYNC_INTERVAL", &resync)
        .env("CONCURRENCY", "16")
        .env("METRICS_ADDR", &metrics_addr)
        .env("SESHN_RATE_LIMIT", &rate)
        .env("SESHN_RATE_BURST", &rate)
        .env("LOG_FORMAT", "text")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (build it first)", bin.display()));
    let pid = child.id().unwrap();

    // Play the Deployment controller: every forwarder becomes available at once.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let marker = tokio::spawn({
        let deployments = deployments.clone();
        async move {
            let stream = watcher(deployments.clone(), watcher::Config::default()).applied_objects();
            futures::pin_mut!(stream);
            while let Ok(Some(d)) = stream.try_next().await {
                if d.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0)
                    > 0
                {
                    continue;
                }
                let status = json!({"status": {"replicas": 1, "updatedReplicas": 1,
                    "readyReplicas": 1, "availableReplicas": 1,
                    "observedGeneration": d.metadata.generation}});
                let _ = deployments
                    .patch_status(
                        &d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(status),
                    )
                    .await;
            }
        }
    });

    let bridges: Api<SeshnSegmentBridge> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let bridges = bridges.clone();
            async move {
                let b: SeshnSegmentBridge = serde_json::from_value(json!({
                    "apiVersion": "integrations.seshn.net/v1alpha1",
                    "kind": "SeshnSegmentBridge",
                    "metadata": {"name": format!("b{i:04}")},
                    "spec": {
                        "seshn": {"apiKeySecretRef": {"name": "seshn", "key": "apiKey"}},
                        "segment": {"writeKeySecretRef": {"name": "segment", "key": "writeKey"}},
                        "exposure": {"publicUrl": "https://hooks.example.com"}
                    }
                }))
                .unwrap();
                bridges.create(&PostParams::default(), &b).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let applied = started.elapsed();
    println!("applied {n} bridges in {:.1}s", applied.as_secs_f64());

    let mut last_report = Instant::now();
    let ready_after = loop {
        let list = bridges.list(&ListParams::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|b| b.condition("Ready").is_some_and(|c| c.status == "True"))
            .count();
        if ready == n {
            break started.elapsed();
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!(
                "  {:>5.1}s: {ready}/{n} Ready, RSS {} KiB",
                started.elapsed().as_secs_f64(),
                rss_kib(pid).0
            );
            last_report = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "not all Ready after 15 min"
        );
        assert!(child.try_wait().unwrap().is_none(), "the operator exited");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (rss, hwm) = rss_kib(pid);
    println!(
        "all {n} Ready after {:.1}s; operator RSS {:.1} MiB (peak {:.1} MiB); webhooks at Seshn: {}; creates: {}",
        ready_after.as_secs_f64(),
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        seshn.webhooks(API_KEY).len(),
        seshn.call_count(Op::Create)
    );

    // Let the tail of status writes settle, then watch one full resync of unchanged bridges.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = scrape(&metrics_addr).await;
    let counts = |s: &FakeSeshn| {
        [Op::Create, Op::Get, Op::List, Op::Update, Op::Delete].map(|op| s.call_count(op))
    };
    let calls_before = counts(&seshn);
    let t = Instant::now();
    let resync_limit = operator::duration::parse(&resync).unwrap() * 2 + Duration::from_secs(60);
    loop {
        let gets = seshn.call_count(Op::Get) - calls_before[1];
        if gets >= n {
            break;
        }
        assert!(
            t.elapsed() < resync_limit,
            "resync did not observe every bridge ({gets}/{n})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = scrape(&metrics_addr).await;
    let calls_after = counts(&seshn);
    let (rss2, hwm2) = rss_kib(pid);
    println!(
        "resync of {n} unchanged bridges (in {:.1}s): Kubernetes writes {}; Seshn create {} get {} list {} update {} delete {}; RSS {:.1} MiB (peak {:.1} MiB)",
        t.elapsed().as_secs_f64(),
        writes(&after) - writes(&before),
        calls_after[0] - calls_before[0],
        calls_after[1] - calls_before[1],
        calls_after[2] - calls_before[2],
        calls_after[3] - calls_before[3],
        calls_after[4] - calls_before[4],
        rss2 as f64 / 1024.0,
        hwm2 as f64 / 1024.0,
    );
    marker.abort();
    let _ = child.kill().await;
}
