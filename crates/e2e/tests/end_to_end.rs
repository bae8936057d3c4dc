#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The path a platform team and a tenant take, end to end, on the real kube-apiserver:
//!
//! `helm install` (namespace-scoped, leader election) → the tenant applies `examples/secrets.yaml`
//! and `examples/bridge.yaml` (the Seshn API URL rewritten to the fake Seshn) → the operator runs
//! as its real binary with the arguments and environment of the Deployment the chart installed,
//! authenticated with the chart's ServiceAccount token (not the admin) → it creates the forwarder
//! and registers the webhook at the fake Seshn → the forwarder runs as its real binary from the
//! Deployment the operator wrote (its command, env and mounted Secrets, resolved by the test;
//! only the listen address and the Segment endpoint are pointed at loopback) → signed events
//! arrive at the fake Segment sink, mapped → deleting the bridge deletes the webhook at Seshn →
//! `helm uninstall` leaves the CRD (`crds.keep`).
//!
//! No kubelet runs, so the test plays its part: it marks the forwarder Deployment available and
//! runs the pods' processes itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bridge_api::SeshnSegmentBridge;
use e2e::{CRD_NAME, Helm, TestProcess, chart_dir, eventually, free_local_addr, http, repo_root};
use fakes::segment_sink::SegmentSink;
use fakes::seshn_api::FakeSeshn;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EnvVar, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const RELEASE: &str = "seshn-segment";
const LIMIT: Duration = Duration::from_secs(120);

/// The tenant's manifests: the Secrets and the bridge from `examples/`.
fn tenant_manifests() -> (Vec<Secret>, Value) {
    let read = |name: &str| {
        let path = repo_root().join("examples").join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        e2e::parse_manifests(&text)
    };
    let secrets: Vec<Secret> = read("secrets.yaml")
        .into_iter()
        .map(|d| {
            assert_eq!(
                d["kind"], "Secret",
                "examples/secrets.yaml holds only Secrets"
            );
            serde_json::from_value(d).unwrap()
        })
        .collect();
    let bridges: Vec<Value> = read("bridge.yaml")
        .into_iter()
        .filter(|d| d["kind"] == "SeshnSegmentBridge")
        .collect();
    assert_eq!(bridges.len(), 1, "examples/bridge.yaml holds one bridge");
    (secrets, bridges.into_iter().next().unwrap())
}

/// The value of `key` in the Secret `name` (from `data` or `stringData`).
fn secret_value(secrets: &[Secret], name: &str, key: &str) -> String {
    let s = secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("examples/secrets.yaml has no Secret {name}"));
    if let Some(v) = s.string_data.as_ref().and_then(|d| d.get(key)) {
        return v.clone();
    }
    let v = s
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("Secret {name} has no key {key}"));
    String::from_utf8(v.0.clone()).unwrap()
}

/// The container's environment as the kubelet would give it to the process. `fieldRef`s are
/// resolved for a pod named `pod_name` in `namespace`; anything else is a test failure, so a
/// new kind of env source in the manifests cannot slip through unresolved.
fn resolve_env(c: &Container, pod_name: &str, namespace: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for EnvVar {
        name,
        value,
        value_from,
    } in c.env.clone().unwrap_or_default()
    {
        let v = match (value, value_from) {
            (Some(v), None) => v,
            (None, Some(from)) => {
                let path = from
                    .field_ref
                    .unwrap_or_else(|| panic!("env {name}: only fieldRef sources are expected"))
                    .field_path;
                match path.as_str() {
                    "metadata.name" => pod_name.to_owned(),
                    "metadata.namespace" => namespace.to_owned(),
                    other => panic!("env {name}: unexpected fieldRef {other}"),
                }
            }
            (None, None) => String::new(),
            (Some(_), Some(_)) => panic!("env {name} has both value and valueFrom"),
        };
        out.insert(name, v);
    }
    out
}

fn command_for(bin: &str, c: &Container, shipped_name: &str) -> Command {
    let command = c.command.clone().unwrap_or_default();
    let exe = command
        .first()
        .unwrap_or_else(|| panic!("container {} has no command", c.name));
    assert_eq!(
        Path::new(exe).file_name().unwrap(),
        shipped_name,
        "the manifest must run {shipped_name}"
    );
    assert!(
        exe.starts_with("/usr/local/bin/"),
        "{exe}: the Dockerfile installs the binaries in /usr/local/bin"
    );
    let mut cmd = Command::new(bin);
    cmd.args(&command[1..])
        .args(c.args.clone().unwrap_or_default());
    cmd.env_clear();
    cmd
}

/// Starts `bin` the way the container would run (see [`command_for`]) with `env`, plus
/// `addr_var` set to a free loopback address, and waits until `/readyz` answers 200. A port
/// taken by someone else between probing and binding is retried with another one.
async fn start_ready(
    name: &str,
    log: &Path,
    bin: &str,
    container: &Container,
    shipped_name: &str,
    mut env: BTreeMap<String, String>,
    addr_var: &str,
) -> (TestProcess, SocketAddr) {
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        let addr = free_local_addr();
        env.insert(addr_var.to_owned(), addr.to_string());
        let mut cmd = command_for(bin, container, shipped_name);
        cmd.envs(&env);
        let mut process = TestProcess::spawn(name, cmd, log);
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            if process.has_exited() {
                if attempt < ATTEMPTS && process.log().contains("in use") {
                    break;
                }
                process.assert_running();
            }
            if let Ok((200, _)) = http(addr, "GET", "/readyz", &[], b"").await {
                return (process, addr);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {name} /readyz on {addr}; log:\n{}",
                process.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    panic!("{name} found no free port in {ATTEMPTS} attempts")
}

/// Writes the forwarder pod's volumes under `root` the way the kubelet would mount them:
/// Secret volumes become files (only the listed items), emptyDirs become directories. Returns
/// (mount path in the pod, directory on this machine) pairs.
async fn materialize_volumes(
    admin: &Client,
    ns: &str,
    pod: &k8s_openapi::api::core::v1::PodSpec,
    container: &Container,
    root: &Path,
) -> Vec<(String, PathBuf)> {
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let mut mounts = Vec::new();
    for m in container.volume_mounts.clone().unwrap_or_default() {
        let vol = pod
            .volumes
            .as_ref()
            .and_then(|vs| vs.iter().find(|v| v.name == m.name))
            .unwrap_or_else(|| panic!("mount {} has no volume", m.name));
        let dir = root.join(m.mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(sv) = &vol.secret {
            let name = sv.secret_name.clone().unwrap();
            let secret = secrets.get(&name).await.unwrap();
            let data = secret.data.unwrap_or_default();
            let items = sv.items.clone().unwrap_or_else(|| {
                data.keys()
                    .map(|k| k8s_openapi::api::core::v1::KeyToPath {
                        key: k.clone(),
                        path: k.clone(),
                        mode: None,
                    })
                    .collect()
            });
            for item in items {
                let value = data
                    .get(&item.key)
                    .unwrap_or_else(|| panic!("Secret {name} has no key {}", item.key));
                std::fs::write(dir.join(&item.path), &value.0).unwrap();
            }
        } else {
            assert!(
                vol.empty_dir.is_some(),
                "volume {}: only Secret and emptyDir volumes are expected for a Deployment forwarder",
                vol.name
            );
        }
        mounts.push((m.mount_path.clone(), dir));
    }
    mounts
}

fn mark_available_status(generation: i64) -> Value {
    let now = "2026-01-01T00:00:00Z";
    json!({"status": {
        "observedGeneration": generation,
        "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
        "conditions": [{
            "type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
            "message": "set by the e2e test (no kubelet runs)",
            "lastUpdateTime": now, "lastTransitionTime": now
        }]
    }})
}

fn event_body(event: &str, n: usize) -> Vec<u8> {
    let body = match event {
        "payment.succeeded" => json!({
            "id": format!("pay_{n}"), "bookingId": "bk_e2e_1",
            "contact": {"id": "ct_e2e", "name": "Ada Lovelace", "email": "ada@example.com"},
            "payment": {"amount": 4200, "currency": "EUR"}
        }),
        _ => json!({
            "id": "bk_e2e_1",
            "contact": {"id": "ct_e2e", "name": "Ada Lovelace", "email": "ada@example.com"},
            "service": {"id": "svc_yoga", "name": "Yoga"},
            "seats": 2,
            "slot": {"startTime": "2026-12-24T09:00:00Z"}
        }),
    };
    serde_json::to_vec(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_then_a_tenant_bridge_delivers_signed_events_to_segment() {
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("[e2e {:>6.1}s] {what}", started.elapsed().as_secs_f64());
    let tb = testbed::testbed();
    let admin = tb.client().await;
    step("test bed up");
    let release_ns = tb.namespace().await;
    let tenant_ns = tb.namespace().await;
    let unwatched_ns = tb.namespace().await;
    let work = tempfile::tempdir().unwrap();
    let seshn = FakeSeshn::start().await;

    // --- the platform team: helm install -------------------------------------------------
    let helm = Helm::with_kubeconfig(tb.kubeconfig_path());
    let chart = chart_dir().display().to_string();
    let _ = helm
        .run([
            "install",
            RELEASE,
            &chart,
            "--namespace",
            &release_ns,
            "--timeout",
            "2m",
            "--set",
            &format!("watchNamespaces={{{tenant_ns}}}"),
            "--set",
            "leaderElection.enabled=true",
            "--set",
            &format!("operator.seshnApiUrl={}", seshn.url()),
            "--set",
            "operator.resyncInterval=1m,operator.logFormat=text",
        ])
        .expect_ok("helm install");

    step("helm install done");
    // --- the tenant: kubectl apply the example Secrets and bridge ------------------------
    let (secrets, mut bridge) = tenant_manifests();
    let bridge_name = bridge["metadata"]["name"].as_str().unwrap().to_owned();
    bridge["metadata"]["namespace"] = json!(tenant_ns);
    if bridge["spec"]["seshn"].get("apiUrl").is_some() {
        bridge["spec"]["seshn"]["apiUrl"] = json!(seshn.url());
    }
    let typed: SeshnSegmentBridge = serde_json::from_value(bridge.clone()).unwrap();
    let api_key = secret_value(
        &secrets,
        &typed.spec.seshn.api_key_secret_ref.name,
        &typed.spec.seshn.api_key_secret_ref.key,
    );
    let write_key = secret_value(
        &secrets,
        &typed.spec.segment.write_key_secret_ref.name,
        &typed.spec.segment.write_key_secret_ref.key,
    );
    seshn.add_api_key(&api_key);
    let sink = SegmentSink::start(&write_key).await.unwrap();
    let tenant_secrets: Api<Secret> = Api::namespaced(admin.clone(), &tenant_ns);
    let apply = PatchParams::apply("e2e-tenant");
    for mut s in secrets {
        s.metadata.namespace = Some(tenant_ns.clone());
        let name = s.name_any();
        tenant_secrets
            .patch(&name, &apply, &Patch::Apply(&s))
            .await
            .unwrap();
    }
    let bridges: Api<SeshnSegmentBridge> = Api::namespaced(admin.clone(), &tenant_ns);
    eventually("the bridge to be accepted (CRD established)", LIMIT, || {
        let (bridges, bridge, apply) = (bridges.clone(), bridge.clone(), apply.clone());
        let name = bridge_name.clone();
        async move {
            bridges
                .patch(&name, &apply, &Patch::Apply(&bridge))
                .await
                .ok()
        }
    })
    .await;

    step("tenant manifests applied");
    // --- the operator: the chart's Deployment, run as a process with the chart's SA token ---
    let token = e2e::service_account_token(&admin, &release_ns, RELEASE).await;
    let sa_kubeconfig = work.path().join("operator-kubeconfig");
    tb.write_kubeconfig_for_token(&token, &sa_kubeconfig)
        .unwrap();
    // The operator exits when its first list is refused: start it once the grants are live.
    e2e::wait_until_authorized(
        &tb.client_with_token(&token).await,
        Some(&tenant_ns),
        Some((&release_ns, e2e::DEFAULT_LEASE_NAME)),
    )
    .await;
    let op_deploy = Api::<Deployment>::namespaced(admin.clone(), &release_ns)
        .get(RELEASE)
        .await
        .unwrap();
    let op_pod = op_deploy.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        op_pod.service_account_name.as_deref(),
        Some(RELEASE),
        "the operator runs as the chart's ServiceAccount"
    );
    let op_container = &op_pod.containers[0];
    let mut op_env = resolve_env(op_container, "seshn-segment-e2e-0", &release_ns);
    assert_eq!(op_env.get("SESHN_API_URL"), Some(&seshn.url()));
    assert!(op_env.contains_key("METRICS_ADDR"), "{op_env:?}");
    op_env.insert("KUBECONFIG".into(), sa_kubeconfig.display().to_string());
    // /readyz turns 200 once the operator holds the Lease and its controllers run.
    let (mut operator, op_addr) = start_ready(
        "operator",
        &work.path().join("operator.log"),
        env!("CARGO_BIN_EXE_e2e-seshn-segment-operator"),
        op_container,
        "seshn-segment-operator",
        op_env,
        "METRICS_ADDR",
    )
    .await;

    // The chart's probes point at endpoints the operator serves.
    for probe in [&op_container.liveness_probe, &op_container.readiness_probe] {
        let http_get = probe.as_ref().unwrap().http_get.clone().unwrap();
        let path = http_get.path.unwrap();
        let (status, _) = http(op_addr, "GET", &path, &[], b"").await.unwrap();
        assert_eq!(status, 200, "operator probe {path}");
    }
    let (status, metrics) = http(op_addr, "GET", "/metrics", &[], b"").await.unwrap();
    assert_eq!(status, 200);
    assert!(!metrics.is_empty(), "operator /metrics is empty");
    step("operator ready (Lease held)");
    // --- the operator's children; the test plays kubelet for the forwarder -----------------
    let deploys: Api<Deployment> = Api::namespaced(admin.clone(), &tenant_ns);
    let fwd_name = format!("{bridge_name}-forwarder");
    let fwd = eventually("the forwarder Deployment", LIMIT, || {
        let (deploys, name) = (deploys.clone(), fwd_name.clone());
        async move { deploys.get_opt(&name).await.ok()? }
    })
    .await;
    assert!(
        fwd.owner_references()
            .iter()
            .any(|o| o.kind == "SeshnSegmentBridge" && o.controller == Some(true)),
        "the forwarder is owned by the bridge"
    );
    deploys
        .patch_status(
            &fwd_name,
            &PatchParams::default(),
            &Patch::Merge(mark_available_status(fwd.metadata.generation.unwrap_or(1))),
        )
        .await
        .unwrap();

    step("forwarder Deployment created and marked available");
    let ready = eventually("the bridge to be Ready with a webhook", LIMIT, || {
        let bridges = bridges.clone();
        let name = bridge_name.clone();
        async move {
            let b = bridges.get(&name).await.ok()?;
            let st = b.status.clone()?;
            let ready = st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && st.webhook.as_ref()?.id.is_some()).then_some(b)
        }
    })
    .await;
    operator.assert_running();
    let uid = ready.uid().unwrap();
    let status_webhook = ready.status.unwrap().webhook.unwrap();
    let registered = seshn.webhooks(&api_key);
    assert_eq!(
        registered.len(),
        1,
        "exactly one webhook at Seshn: {registered:?}"
    );
    let webhook = &registered[0];
    assert_eq!(Some(&webhook.id), status_webhook.id.as_ref());
    assert_eq!(Some(&webhook.url), status_webhook.url.as_ref());
    let token_path = format!("/hooks/{uid}");
    assert!(
        webhook.url.ends_with(&token_path),
        "{} must end with {token_path}",
        webhook.url
    );
    // Seshn posts to the registered URL's path (a gateway may keep a prefix in front of it).
    let hook_path = format!("/{}", webhook.url.splitn(4, '/').nth(3).unwrap_or_default());

    // The operator recorded the registration as an events.k8s.io/v1 Event, with the chart's
    // RBAC (the only Events API it is granted).
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(admin.clone(), &tenant_ns);
    eventually("a WebhookCreated Event about the bridge", LIMIT, || {
        let (events, name) = (events.clone(), bridge_name.clone());
        async move {
            let list = events.list(&kube::api::ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("WebhookCreated")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some(name.as_str())
                })
                .then_some(())
        }
    })
    .await;

    step("bridge Ready, webhook registered");
    // A bridge outside the watched namespaces is none of this operator's business.
    let mut stray = bridge.clone();
    stray["metadata"]["namespace"] = json!(unwatched_ns);
    let stray_bridges: Api<SeshnSegmentBridge> = Api::namespaced(admin.clone(), &unwatched_ns);
    stray_bridges
        .patch(&bridge_name, &apply, &Patch::Apply(&stray))
        .await
        .unwrap();
    // --- the forwarder: the operator's Deployment, run as a process ---------------------
    let fwd = deploys.get(&fwd_name).await.unwrap();
    let pod = fwd.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "forwarder pods get no API token"
    );
    let container = pod.containers[0].clone();
    let sc = container.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let root = work.path().join("forwarder-root");
    let mounts = materialize_volumes(&admin, &tenant_ns, &pod, &container, &root).await;
    let mut env = resolve_env(&container, "acme-forwarder-0", &tenant_ns);
    for value in env.values_mut() {
        if let Some((mount, dir)) = mounts.iter().find(|(m, _)| value.starts_with(m.as_str())) {
            *value = format!("{}{}", dir.display(), &value[mount.len()..]);
        }
    }
    // Every variable the operator sets is one the forwarder reads (clap ignores unknown ones).
    let forwarder_config =
        std::fs::read_to_string(repo_root().join("crates/forwarder/src/config.rs")).unwrap();
    for name in env.keys() {
        assert!(
            forwarder_config.contains(&format!("env = \"{name}\"")),
            "the operator sets {name}, which seshn-segment-forwarder does not read"
        );
    }
    assert!(env.contains_key("FORWARDER_LISTEN"), "{env:?}");
    assert!(env.contains_key("SEGMENT_ENDPOINT"), "{env:?}");
    env.insert("SEGMENT_ENDPOINT".into(), sink.url());
    let (forwarder, listen) = start_ready(
        "forwarder",
        &work.path().join("forwarder.log"),
        env!("CARGO_BIN_EXE_e2e-seshn-segment-forwarder"),
        &container,
        "seshn-segment-forwarder",
        env,
        "FORWARDER_LISTEN",
    )
    .await;

    step("forwarder ready");
    // --- Seshn delivers signed events ----------------------------------------------------
    let signing = tenant_secrets
        .get(&status_webhook.secret_ref.as_ref().unwrap().name)
        .await
        .unwrap();
    let key = &status_webhook.secret_ref.as_ref().unwrap().key;
    let secret = signing.data.unwrap().remove(key).unwrap().0;
    assert_eq!(
        secret,
        webhook.secret.as_bytes(),
        "the forwarder verifies with the secret Seshn signs with"
    );
    let funnel = [
        "booking.created",
        "payment.succeeded",
        "booking.confirmed",
        "booking.checked_in",
    ];
    for (n, event) in funnel.iter().enumerate() {
        let body = event_body(event, n);
        let sig = seshn::signature::sign(&secret, &body);
        let (status, answer) = http(
            listen,
            "POST",
            &hook_path,
            &[
                ("Content-Type", "application/json"),
                ("X-Webhook-Event", event),
                ("X-Webhook-Signature", &sig),
            ],
            &body,
        )
        .await
        .unwrap();
        assert!((200..300).contains(&status), "{event}: {status} {answer}");
    }
    // A forged request is refused and never reaches Segment.
    let forged = event_body("booking.cancelled", 9);
    let (status, _) = http(
        listen,
        "POST",
        &hook_path,
        &[
            ("X-Webhook-Event", "booking.cancelled"),
            (
                "X-Webhook-Signature",
                &seshn::signature::sign(b"wrong", &forged),
            ),
        ],
        &forged,
    )
    .await
    .unwrap();
    assert_eq!(status, 401);

    let identify = typed.spec.mapping.identify;
    let expected = funnel.len() * if identify { 2 } else { 1 };
    assert!(
        sink.wait_for_unique_messages(expected, LIMIT).await,
        "Segment got {} of {expected} messages; forwarder log:\n{}",
        sink.unique_messages().len(),
        forwarder.log_tail(40)
    );
    let messages = sink.unique_messages();
    assert_eq!(messages.len(), expected, "{messages:#?}");
    let tracks: Vec<&Value> = messages.iter().filter(|m| m["type"] == "track").collect();
    assert_eq!(tracks.len(), funnel.len());
    for t in &tracks {
        assert_eq!(t["userId"], "ct_e2e", "{t}");
        assert!(t["messageId"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(
            !t["event"].as_str().unwrap_or_default().contains("ancel"),
            "the forged booking.cancelled reached Segment: {t}"
        );
    }
    let names: Vec<&str> = tracks
        .iter()
        .map(|t| t["event"].as_str().unwrap())
        .collect();
    if typed.spec.mapping.profile == bridge_api::MappingProfile::Seed {
        let want: Vec<String> = funnel.iter().map(|e| format!("Seshn {e}")).collect();
        for w in &want {
            assert!(names.contains(&w.as_str()), "{w} missing from {names:?}");
        }
        let created = tracks
            .iter()
            .find(|t| t["event"] == "Seshn booking.created")
            .unwrap();
        assert_eq!(created["properties"]["bookingId"], "bk_e2e_1");
        assert_eq!(created["properties"]["serviceId"], "svc_yoga");
        assert_eq!(created["properties"]["seats"], 2);
        assert_eq!(created["properties"]["seshnEvent"], "booking.created");
    } else {
        assert!(names.iter().all(|n| !n.starts_with("Seshn ")), "{names:?}");
    }
    if identify {
        let ids: Vec<&Value> = messages
            .iter()
            .filter(|m| m["type"] == "identify")
            .collect();
        assert_eq!(ids.len(), funnel.len());
        assert_eq!(ids[0]["traits"]["email"], "ada@example.com");
    }

    step("events delivered to Segment");
    // The dashboard's metrics exist on the live forwarder. A labelled family shows up once it
    // has a sample, and the batch result and latency are recorded just after Segment answered,
    // so poll. Dead letters need an oversize or refused message, which this run has none of;
    // their registration is checked by the chart tests.
    let dashboard =
        std::fs::read_to_string(chart_dir().join("files/dashboards/booking-health.json")).unwrap();
    let families: Vec<String> = e2e::dashboard_metric_names(&dashboard)
        .iter()
        .map(|s| e2e::metric_base_name(s).to_owned())
        .filter(|base| base != "dead_letters")
        .map(|base| format!("seshn_forwarder_{base}"))
        .collect();
    let metrics = eventually("the dashboard's metrics on the forwarder", LIMIT, || {
        let families = families.clone();
        async move {
            let (status, text) = http(listen, "GET", "/metrics", &[], b"").await.ok()?;
            (status == 200 && families.iter().all(|f| text.contains(f.as_str()))).then_some(text)
        }
    })
    .await;
    assert!(
        metrics.contains(
            r#"seshn_forwarder_webhooks_received_total{event="booking.created",outcome="accepted"} 1"#
        ),
        "{metrics}"
    );

    // The operator was never refused anything (a denied Event or watch is only logged).
    assert!(
        !operator.log().to_lowercase().contains("forbidden"),
        "the operator hit an RBAC denial:\n{}",
        operator.log_tail(60)
    );
    // Nothing secret in either log.
    for (who, log) in [("operator", operator.log()), ("forwarder", forwarder.log())] {
        assert!(!log.contains(&api_key), "{who} logged the Seshn API key");
        assert!(
            !log.contains(&write_key),
            "{who} logged the Segment write key"
        );
        assert!(
            !log.contains(&webhook.secret),
            "{who} logged the webhook signing secret"
        );
        assert!(
            !log.contains("ada@example.com"),
            "{who} logged personal data"
        );
    }

    step("metrics and logs checked");
    // By now (seconds later) the stray bridge would have been acted on, were it watched.
    let stray_now = stray_bridges.get(&bridge_name).await.unwrap();
    assert!(
        stray_now.status.is_none(),
        "an unwatched bridge got a status"
    );
    assert!(
        stray_now.finalizers().is_empty(),
        "an unwatched bridge got a finalizer"
    );
    assert!(
        Api::<Deployment>::namespaced(admin.clone(), &unwatched_ns)
            .get_opt(&fwd_name)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(seshn.webhooks(&api_key).len(), 1, "one webhook only");
    // --- the tenant deletes the bridge: the webhook goes away at Seshn -------------------
    bridges
        .delete(&bridge_name, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the webhook to be deleted at Seshn", LIMIT, || {
        let n = seshn.webhooks(&api_key).len();
        async move { (n == 0).then_some(()) }
    })
    .await;
    eventually("the bridge to be gone (finalizer removed)", LIMIT, || {
        let (bridges, name) = (bridges.clone(), bridge_name.clone());
        async move { bridges.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
    eventually("the forwarder Deployment to be collected", LIMIT, || {
        let (deploys, name) = (deploys.clone(), fwd_name.clone());
        async move { deploys.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
    operator.assert_running();
    drop(forwarder);
    drop(operator);

    step("bridge deleted, webhook gone, children collected");
    // --- the platform team uninstalls: the CRD stays (crds.keep) --------------------------
    let _ = helm
        .run([
            "uninstall",
            RELEASE,
            "--namespace",
            &release_ns,
            "--timeout",
            "2m",
        ])
        .expect_ok("helm uninstall");
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let crd = crds.get(CRD_NAME).await.expect("the CRD is kept");
    assert!(crd.metadata.deletion_timestamp.is_none());
    // With the CRD kept, bridges survive the uninstall: only the unwatched one is left.
    let leftovers: Api<DynamicObject> = Api::all_with(
        admin.clone(),
        &kube::api::ApiResource::erase::<SeshnSegmentBridge>(&()),
    );
    let left: Vec<(Option<String>, String)> = leftovers
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|b| (b.metadata.namespace.clone(), b.name_any()))
        .collect();
    assert_eq!(
        left,
        vec![(Some(unwatched_ns.clone()), bridge_name.clone())]
    );
    step("helm uninstall done, CRD kept");
}
