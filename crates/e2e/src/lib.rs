//! Shared helpers for the chart, RBAC and end-to-end tests in `tests/`.
//!
//! The tests drive the real `helm` binary (installed by `scripts/k8s/install-tools.sh`) against
//! the chart in `charts/seshn-segment` and, for installs, the real kube-apiserver of the
//! [`testbed`] crate. Nothing here talks to anything but 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::{Api, Client};
use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|e| panic!("repository root: {e}"))
}

/// The chart directory, `charts/seshn-segment`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/seshn-segment")
}

/// Every `examples/values-*.yaml` (chart values examples), sorted.
pub fn example_values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap_or_else(|e| panic!("reading examples/: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("values-")
                && p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("yaml"))
        })
        .collect();
    files.sort();
    files
}

/// Every `examples/*.yaml` that is a Kubernetes manifest (not a `values-*.yaml`), sorted.
pub fn example_manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap_or_else(|e| panic!("reading examples/: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !name.starts_with("values-")
                && p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("yaml"))
        })
        .collect();
    files.sort();
    files
}

/// What a helm run produced.
#[derive(Debug)]
pub struct HelmOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl HelmOutput {
    /// Panics with both streams unless helm succeeded.
    #[track_caller]
    #[allow(clippy::return_self_not_must_use)]
    pub fn expect_ok(self, what: &str) -> Self {
        assert!(
            self.success,
            "{what} failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A helm invocation with its caches and config in a private temporary directory, so tests
/// never touch (or depend on) the user's helm setup.
#[derive(Debug)]
pub struct Helm {
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Default for Helm {
    fn default() -> Self {
        Self::new()
    }
}

impl Helm {
    /// Helm without a cluster (lint, template).
    pub fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap_or_else(|e| panic!("helm home: {e}")),
            kubeconfig: None,
        }
    }

    /// Helm talking to the cluster of `kubeconfig`.
    pub fn with_kubeconfig(kubeconfig: &Path) -> Self {
        Self {
            kubeconfig: Some(kubeconfig.to_owned()),
            ..Self::new()
        }
    }

    /// Runs helm with `args` and waits (bounded by helm's own `--timeout` where relevant).
    pub fn run<I, S>(&self, args: I) -> HelmOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(testbed::helm());
        let home = self.home.path();
        cmd.env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("KUBECONFIG")
            .env_remove("HELM_NAMESPACE")
            .stdin(Stdio::null());
        if let Some(kc) = &self.kubeconfig {
            cmd.arg("--kubeconfig").arg(kc);
        }
        cmd.args(args);
        let out = cmd.output().unwrap_or_else(|e| panic!("running helm: {e}"));
        HelmOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `helm template <release> <chart> -n <namespace> <extra...>`, parsed into documents.
    #[track_caller]
    pub fn template(&self, release: &str, namespace: &str, extra: &[&str]) -> Vec<Value> {
        let chart = chart_dir().display().to_string();
        let mut args: Vec<&str> = vec!["template", release, &chart, "--namespace", namespace];
        args.extend_from_slice(extra);
        let out = self.run(args).expect_ok("helm template");
        parse_manifests(&out.stdout)
    }
}

/// Parses a multi-document YAML stream, skipping empty documents.
pub fn parse_manifests(yaml: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("rendered YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// The documents of `kind` (optionally also matching `name`).
pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// Exactly one document of `kind`.
#[track_caller]
pub fn one_of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, found {}",
        found.len()
    );
    found[0]
}

/// Polls `f` every 200 ms until it returns `Some`, panicking with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The bearer token of a ServiceAccount, from the token Secret that the 1.20
/// kube-controller-manager creates for it (the chart's ServiceAccount, not the admin).
pub async fn service_account_token(client: &Client, namespace: &str, name: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    eventually(
        &format!("a token Secret for ServiceAccount {namespace}/{name}"),
        Duration::from_secs(120),
        || {
            let (sas, secrets) = (sas.clone(), secrets.clone());
            async move {
                let sa = sas.get_opt(name).await.ok()??;
                for r in sa.secrets.unwrap_or_default() {
                    let Some(secret_name) = r.name else { continue };
                    let Ok(Some(secret)) = secrets.get_opt(&secret_name).await else {
                        continue;
                    };
                    if secret.type_.as_deref() != Some("kubernetes.io/service-account-token") {
                        continue;
                    }
                    if let Some(token) = secret.data.and_then(|mut d| d.remove("token")) {
                        return String::from_utf8(token.0).ok();
                    }
                }
                None
            }
        },
    )
    .await
}

/// Every `seshn_forwarder_*` series name a dashboard JSON queries, sorted and deduplicated.
pub fn dashboard_metric_names(dashboard_json: &str) -> Vec<String> {
    const PREFIX: &str = "seshn_forwarder_";
    let mut names: Vec<String> = dashboard_json
        .match_indices(PREFIX)
        .map(|(i, _)| {
            dashboard_json[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The registered name of a series: without the `seshn_forwarder_` prefix and without the
/// `_total` / `_bucket` / `_sum` / `_count` suffix the exposition format adds.
pub fn metric_base_name(series: &str) -> &str {
    let name = series.strip_prefix("seshn_forwarder_").unwrap_or(series);
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// The SeshnSegmentBridge resource, untyped (the RBAC tests need no more than that).
pub fn bridge_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk(
            "integrations.seshn.net",
            "v1alpha1",
            "SeshnSegmentBridge",
        ),
        "seshnsegmentbridges",
    )
}

/// The bridge CRD's name.
pub const CRD_NAME: &str = "seshnsegmentbridges.integrations.seshn.net";

/// A valid bridge (all required fields) named `name`, untyped.
pub fn bridge(name: &str) -> kube::api::DynamicObject {
    let mut obj = kube::api::DynamicObject::new(name, &bridge_resource());
    obj.data = serde_json::json!({
        "spec": {
            "seshn": {"apiKeySecretRef": {"name": "acme-seshn", "key": "apiKey"}},
            "segment": {"writeKeySecretRef": {"name": "acme-segment", "key": "writeKey"}},
            "exposure": {"publicUrl": "https://hooks.example.com/acme"}
        }
    });
    obj
}

/// A minimal Deployment named `name`, standing in for a forwarder the operator would create
/// (the RBAC tests only need something to create, patch and delete).
pub fn stand_in_deployment(name: &str) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "forwarder", "image": "example/forwarder:1"}]}
            }
        }
    }))
    .unwrap_or_default()
}

/// Waits until `client` may list bridges in `namespace` (all namespaces for `None`) and, when
/// `lease` (namespace, name) is given, read that Lease. The apiserver's RBAC view follows new
/// (Cluster)RoleBindings through a watch, so it can lag `helm install` by a moment; a test must
/// not mistake that lag for a missing grant, nor start the operator before it is over. The Lease
/// grant is limited to the operator's own Lease by name, so probe exactly that name.
pub async fn wait_until_authorized(
    client: &Client,
    namespace: Option<&str>,
    lease: Option<(&str, &str)>,
) {
    use k8s_openapi::api::coordination::v1::Lease;
    let bridges: Api<kube::api::DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &bridge_resource()),
        None => Api::all_with(client.clone(), &bridge_resource()),
    };
    let leases: Option<(Api<Lease>, String)> =
        lease.map(|(ns, name)| (Api::namespaced(client.clone(), ns), name.to_owned()));
    eventually(
        "the ServiceAccount's RBAC to take effect",
        Duration::from_secs(120),
        || {
            let (bridges, leases) = (bridges.clone(), leases.clone());
            async move {
                bridges
                    .list(&kube::api::ListParams::default().limit(1))
                    .await
                    .ok()?;
                if let Some((leases, name)) = leases {
                    leases.get_opt(&name).await.ok()?;
                }
                Some(())
            }
        },
    )
    .await;
}

/// The Lease name the chart gives the operator by default (`leaderElection.leaseName`).
pub const DEFAULT_LEASE_NAME: &str = "seshn-segment-operator";

/// True when `err` is the apiserver refusing for lack of permission (HTTP 403).
pub fn is_forbidden(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 403)
}

/// A free 127.0.0.1 port (probed; a process started right after binds it).
pub fn free_local_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("probe: {e}"));
    l.local_addr().unwrap_or_else(|e| panic!("probe: {e}"))
}

/// A process started by a test. Dropping it kills it (by its own pid) and waits; when the test
/// is failing, the tail of its log is printed first.
#[derive(Debug)]
pub struct TestProcess {
    name: String,
    child: Child,
    watchdog: Option<Child>,
    log: PathBuf,
}

impl TestProcess {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Self {
        let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("{name} log: {e}"));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("{name} log: {e}"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let watchdog = spawn_watchdog(child.id());
        Self {
            name: name.to_owned(),
            child,
            watchdog,
            log: log.to_owned(),
        }
    }

    /// True once the process has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Panics (with the log) when the process has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited with {status}; log:\n{}",
                self.name,
                self.log_tail(60)
            );
        }
    }

    /// The last `n` lines of the process log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A detached `sh` loop that stops `pid` once this test process is gone, even when it was killed
/// (e.g. by a test-runner timeout) and no destructor ran.
fn spawn_watchdog(pid: u32) -> Option<Child> {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill {pid} 2>/dev/null; \
         sleep 2; kill -9 {pid} 2>/dev/null"
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log (tail) ---\n{}", self.name, self.log_tail(60));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The process is gone: stop its watchdog before that pid can be reused by another.
        if let Some(w) = &mut self.watchdog {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// A minimal HTTP/1.1 exchange over loopback (`Connection: close`): returns the status code and
/// the body. Enough for health checks, metrics and webhook posts without another HTTP stack.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| std::io::Error::other("HTTP exchange timed out"))?
}
