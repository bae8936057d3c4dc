//! Shared harness of the operator's integration tests: a real kube-apiserver (the test bed),
//! the fake Seshn over real HTTP, and the operator running in-process.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge_api::SeshnSegmentBridge;
use fakes::seshn_api::FakeSeshn;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use operator::{Config, Metrics};
use serde_json::json;
use tokio::task::JoinHandle;

/// The good API key the fake accepts.
pub const API_KEY: &str = "sk_test_good";
/// Generous deadline for anything the operator should do "soon" on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Installs the CRD (server-side apply) and waits until the type is served.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = SeshnSegmentBridge::crd();
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("operator-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("applying the CRD");
    let bridges: Api<SeshnSegmentBridge> = Api::all(client.clone());
    eventually("the CRD to be served", DEADLINE, || {
        let bridges = bridges.clone();
        async move { bridges.list(&ListParams::default().limit(1)).await.ok() }
    })
    .await;
}

/// One test's world.
pub struct Harness {
    /// Admin client.
    pub client: Client,
    /// Fresh namespace.
    pub ns: String,
    /// The fake Seshn API.
    pub seshn: FakeSeshn,
    /// Operator configuration (short intervals).
    pub config: Config,
    /// Operator metrics of the current run.
    pub metrics: Arc<Metrics>,
    operator: Option<JoinHandle<()>>,
}

impl Harness {
    /// A fresh namespace with the credentials Secrets, the fake Seshn and a running operator
    /// watching only that namespace.
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    /// Like [`Harness::start`], with a chance to change the operator's configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Harness {
        let tb = testbed::testbed();
        let client = tb.client().await;
        install_crd(&client).await;
        let ns = tb.namespace().await;
        let seshn = FakeSeshn::start().await;
        seshn.add_api_key(API_KEY);
        let mut config = Config::new("ghcr.io/seshn-segment/seshn-segment:test");
        config.default_seshn_api_url = seshn.url();
        config.watch_namespaces = vec![ns.clone()];
        config.resync_interval = Duration::from_secs(300);
        config.backoff_min = Duration::from_millis(200);
        config.backoff_max = Duration::from_secs(2);
        config.seshn_timeout = Duration::from_secs(5);
        config.seshn_rate_per_second = 0;
        // Every pass observes Seshn, so tests can force an observation with any change.
        config.observe_interval = Duration::ZERO;
        config.instance = format!("test-{ns}");
        tweak(&mut config);
        let mut h = Harness {
            client,
            ns,
            seshn,
            config,
            metrics: Arc::new(Metrics::new()),
            operator: None,
        };
        h.put_secret("acme-seshn", "apiKey", API_KEY).await;
        h.put_secret("acme-segment", "writeKey", "wk_1").await;
        h.start_operator();
        h
    }

    /// Starts (or restarts) the operator in-process.
    pub fn start_operator(&mut self) {
        self.stop_operator();
        self.metrics = Arc::new(Metrics::new());
        let (client, config, metrics) = (
            self.client.clone(),
            self.config.clone(),
            self.metrics.clone(),
        );
        self.operator = Some(tokio::spawn(async move {
            operator::run(client, config, metrics, std::future::pending())
                .await
                .expect("operator run failed");
        }));
    }

    /// Stops the operator abruptly (like a crash: in-flight work is dropped).
    pub fn stop_operator(&mut self) {
        if let Some(h) = self.operator.take() {
            h.abort();
        }
    }

    /// Creates or replaces a Secret with one key.
    pub async fn put_secret(&self, name: &str, key: &str, value: &str) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some([(key.to_owned(), ByteString(value.as_bytes().to_vec()))].into()),
            ..Default::default()
        };
        api.patch(
            name,
            &PatchParams::apply("operator-tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("applying a Secret");
    }

    /// Bridges API in the namespace.
    pub fn bridges(&self) -> Api<SeshnSegmentBridge> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Deployments API in the namespace.
    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// A bridge manifest with a public URL and the harness's Secrets.
    pub fn manifest(&self, name: &str) -> serde_json::Value {
        json!({
            "apiVersion": "integrations.seshn.net/v1alpha1",
            "kind": "SeshnSegmentBridge",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "seshn": {
                    "apiKeySecretRef": {"name": "acme-seshn", "key": "apiKey"},
                    "events": ["booking.created", "booking.cancelled"]
                },
                "segment": {"writeKeySecretRef": {"name": "acme-segment", "key": "writeKey"}},
                "exposure": {"publicUrl": format!("https://hooks.example.com/{name}")}
            }
        })
    }

    /// Creates a bridge from a manifest.
    pub async fn create(&self, manifest: &serde_json::Value) -> SeshnSegmentBridge {
        let bridge: SeshnSegmentBridge = serde_json::from_value(manifest.clone()).unwrap();
        self.bridges()
            .create(&PostParams::default(), &bridge)
            .await
            .expect("creating the bridge")
    }

    /// Merge-patches a bridge's spec.
    pub async fn patch_spec(&self, name: &str, spec: serde_json::Value) {
        self.bridges()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .expect("patching the bridge");
    }

    /// Reads a bridge.
    pub async fn get(&self, name: &str) -> Option<SeshnSegmentBridge> {
        self.bridges().get_opt(name).await.unwrap()
    }

    /// Waits for the forwarder Deployment and reports it available, as the Deployment
    /// controller would once a pod is ready (no kubelet runs here).
    pub async fn make_available(&self, bridge: &str) -> Deployment {
        let name = format!("{bridge}-forwarder");
        let api = self.deployments();
        let d = eventually("the forwarder Deployment", DEADLINE, || {
            let api = api.clone();
            let name = name.clone();
            async move { api.get_opt(&name).await.unwrap() }
        })
        .await;
        let status = json!({"status": {
            "observedGeneration": d.metadata.generation,
            "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                            "message": "test", "lastUpdateTime": "2024-01-01T00:00:00Z",
                            "lastTransitionTime": "2024-01-01T00:00:00Z"}]
        }});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("patching the Deployment status")
    }

    /// Waits until the bridge's condition `type_` has `status` (and `reason`, if given).
    pub async fn wait_condition(
        &self,
        bridge: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
    ) -> SeshnSegmentBridge {
        let what = format!("{bridge}: {type_}={status} {reason:?}");
        eventually(&what, DEADLINE, || async {
            let b = self.get(bridge).await?;
            let c = b.condition(type_)?;
            (c.status == status && reason.is_none_or(|r| c.reason == r)).then_some(b)
        })
        .await
    }

    /// Creates a bridge, marks its forwarder available and waits for Ready.
    pub async fn create_ready(&self, name: &str) -> SeshnSegmentBridge {
        self.create(&self.manifest(name)).await;
        self.make_available(name).await;
        self.wait_condition(name, "Ready", "True", None).await
    }

    /// Forces a pass of the bridge without changing its spec (a label change).
    pub async fn poke(&self, bridge: &str) {
        let value = format!(
            "{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        self.bridges()
            .patch(
                bridge,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"poke": value}}})),
            )
            .await
            .expect("poking the bridge");
    }

    /// Every Event about the bridge (events.k8s.io/v1).
    async fn events_about(&self, bridge: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.regarding
                    .as_ref()
                    .is_some_and(|r| r.name.as_deref() == Some(bridge))
            })
            .collect()
    }

    /// Every Event about the bridge as (name, reason, series count): a repeat of an Event
    /// shows as a higher count, a new one as a new name.
    pub async fn event_records(&self, bridge: &str) -> Vec<(String, String, i32)> {
        let mut records: Vec<_> = self
            .events_about(bridge)
            .await
            .into_iter()
            .map(|e| {
                (
                    e.metadata.name.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.series.as_ref().map_or(1, |s| s.count),
                )
            })
            .collect();
        records.sort();
        records
    }

    /// Event reasons recorded for a bridge.
    pub async fn event_reasons(&self, bridge: &str) -> Vec<String> {
        self.events_about(bridge)
            .await
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    /// Waits until an Event with `reason` exists for the bridge.
    pub async fn wait_event(&self, bridge: &str, reason: &str) {
        eventually(
            &format!("Event {reason} for {bridge}"),
            DEADLINE,
            || async {
                self.event_reasons(bridge)
                    .await
                    .iter()
                    .any(|r| r == reason)
                    .then_some(())
            },
        )
        .await;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop_operator();
    }
}
