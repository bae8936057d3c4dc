//! A real Kubernetes control plane for tests: etcd, kube-apiserver v1.20.2 (RBAC and token
//! authentication on) and kube-controller-manager (garbage collector, namespace and
//! service-account controllers), started once per test process on free 127.0.0.1 ports.
//!
//! No kubelet or scheduler runs, so Pods never start and Deployments never become Available by
//! themselves. Every process is put in its own process group and watched by a small watchdog
//! that kills it (by pid) as soon as the test process is gone, whether it exited, panicked or was
//! killed: nothing outlives the test binary (`tests/teardown.rs` proves it).
//!
//! Logs, certificates and the kubeconfig live in one directory per control plane. The watchdogs
//! delete it when the test process ends, unless the process panicked: then a panic hook prints
//! the directory, the state of every process and the log tail of any that died, and the
//! directory is kept (without etcd's data) for a look at the full logs.
//!
//! Binaries come from `scripts/k8s/install.sh`; when they are missing, [`testbed`] panics with
//! that exact command. It never skips.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

/// Where `scripts/k8s/build-apiserver.sh` puts the control-plane binaries.
pub const DEFAULT_K8S_BIN: &str = "/var/cache/seshn-segment/k8s-v1.20.2";
/// Where `scripts/k8s/install-tools.sh` puts helm and kubectl.
pub const DEFAULT_TOOLS_DIR: &str = "/var/cache/seshn-segment/tools";
/// The command that installs every prerequisite.
pub const INSTALL_HINT: &str = "bash scripts/k8s/install.sh   (from the repository root; as root)";

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("{what} not found at {path}: install the test prerequisites with `{INSTALL_HINT}`")]
    Missing { what: &'static str, path: String },
    #[error("could not {action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
    #[error("{what} exited during start-up; last lines of {log}:\n{tail}")]
    Exited {
        what: &'static str,
        log: String,
        tail: String,
    },
    #[error("{what} was not ready within {limit:?}; last lines of {log}:\n{tail}")]
    NotReady {
        what: &'static str,
        limit: Duration,
        log: String,
        tail: String,
    },
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestbedError {
    let action = action.into();
    move |source| TestbedError::Io { action, source }
}

/// A running control plane. Obtain it with [`testbed`].
#[derive(Debug)]
pub struct Testbed {
    dir: PathBuf,
    server_url: String,
    ca_pem: String,
    admin_token: String,
    kubeconfig_path: PathBuf,
    /// etcd, kube-apiserver, kube-controller-manager (empty while starting).
    children: Mutex<Vec<(&'static str, Child)>>,
}

static TESTBED: OnceLock<Testbed> = OnceLock::new();

/// Directories of control planes started in this process, kept when the process panics.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Name of the marker file that tells the watchdogs to keep a directory (minus etcd's data).
const KEEP_MARKER: &str = "KEEP";

/// The control plane of this process, if [`testbed`] has started one (never starts one).
pub fn running() -> Option<&'static Testbed> {
    TESTBED.get()
}

/// On a panic anywhere in the test process: mark every test bed directory to be kept, and print
/// where it is and what state its processes are in (after the default panic message).
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let dirs = DIRS.lock().map(|d| d.clone()).unwrap_or_default();
            for dir in dirs {
                let _ = std::fs::write(dir.join(KEEP_MARKER), b"a test panicked\n");
                eprintln!(
                    "test bed: logs kept in {} (etcd, kube-apiserver, kube-controller-manager)",
                    dir.display()
                );
            }
            if let Some(tb) = TESTBED.get() {
                eprintln!("{}", tb.report());
            }
        }));
    });
}

fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    let mut out = String::new();
    for line in tail.into_iter().rev() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// The control plane of this test process, started on first use.
///
/// # Panics
/// When the binaries are missing (the message names the install command) or the control plane
/// does not come up; a test that needs the apiserver fails loudly rather than skipping.
pub fn testbed() -> &'static Testbed {
    TESTBED.get_or_init(|| {
        // Start-up blocks on its own runtime in its own thread, so `testbed()` may be called
        // from inside a `#[tokio::test]` as well as from plain code.
        let started = std::thread::spawn(Testbed::start_with_retries)
            .join()
            .unwrap_or_else(|_| panic!("test bed start-up thread panicked"));
        started.unwrap_or_else(|e| panic!("test bed: {e}"))
    })
}

/// The helm v4 binary.
///
/// # Panics
/// When it is not installed, naming the install command.
pub fn helm() -> PathBuf {
    tool("helm")
}

/// The kubectl binary.
///
/// # Panics
/// When it is not installed, naming the install command.
pub fn kubectl() -> PathBuf {
    tool("kubectl")
}

fn tool(name: &'static str) -> PathBuf {
    let dir = std::env::var("SESHN_TOOLS_DIR").unwrap_or_else(|_| DEFAULT_TOOLS_DIR.to_owned());
    let path = Path::new(&dir).join(name);
    assert!(
        path.is_file(),
        "{}",
        TestbedError::Missing {
            what: name,
            path: path.display().to_string()
        }
    );
    path
}

impl Testbed {
    /// The apiserver's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// A kubeconfig file for the cluster admin (`system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The directory holding logs, certificates and the kubeconfig of this control plane.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The processes of this control plane: (name, pid) of etcd, kube-apiserver and
    /// kube-controller-manager.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, child)| (*name, child.id()))
            .collect()
    }

    /// Whether each process still runs, with the log tail of any that exited: what a failing
    /// test needs to tell "my code is wrong" from "the control plane died".
    pub fn report(&self) -> String {
        let mut out = format!("test bed in {}:\n", self.dir.display());
        // try_lock: the panic hook calls this, possibly while this thread holds the lock.
        let Ok(mut children) = self.children.try_lock() else {
            return out;
        };
        for (name, child) in children.iter_mut() {
            let log = self.dir.join(format!("{name}.log"));
            match child.try_wait() {
                Ok(None) => {
                    let _ = writeln!(out, "  {name} (pid {}) running", child.id());
                }
                Ok(Some(status)) => {
                    let _ = writeln!(
                        out,
                        "  {name} (pid {}) EXITED with {status}; last lines of {}:\n{}",
                        child.id(),
                        log.display(),
                        log_tail(&log, 30)
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "  {name} (pid {}): {e}", child.id());
                }
            }
        }
        out
    }

    /// Panics with [`Testbed::report`] unless every process of the control plane still runs.
    #[track_caller]
    pub fn assert_running(&self) {
        let all_running = self
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
            .all(|(_, c)| matches!(c.try_wait(), Ok(None)));
        assert!(all_running, "{}", self.report());
    }

    /// A client for the cluster admin. Make one per test: a client is bound to the runtime it was
    /// first used on.
    ///
    /// # Panics
    /// When the kubeconfig cannot be turned into a client (a bug in the test bed).
    pub async fn client(&self) -> Client {
        self.client_with_token(&self.admin_token).await
    }

    /// A client that authenticates with `token`, e.g. a ServiceAccount token, so RBAC is real.
    ///
    /// # Panics
    /// When the kubeconfig cannot be turned into a client (a bug in the test bed).
    pub async fn client_with_token(&self, token: &str) -> Client {
        let kubeconfig: Kubeconfig = serde_yaml_ng::from_str(&self.kubeconfig_yaml(token))
            .unwrap_or_else(|e| panic!("test bed kubeconfig: {e}"));
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| panic!("test bed kubeconfig: {e}"));
        Client::try_from(config).unwrap_or_else(|e| panic!("test bed client: {e}"))
    }

    /// Writes a kubeconfig that authenticates with `token` to `path`.
    pub fn write_kubeconfig_for_token(&self, token: &str, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml(token))
    }

    /// Creates a fresh namespace (`t-<random>`) and returns its name.
    ///
    /// # Panics
    /// When the apiserver refuses.
    pub async fn namespace(&self) -> String {
        let api: Api<Namespace> = Api::all(self.client().await);
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some("t-".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = api
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating a test namespace: {e}"));
        created
            .metadata
            .name
            .unwrap_or_else(|| panic!("created namespace has no name"))
    }

    fn kubeconfig_yaml(&self, token: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: user\n    namespace: default\ncurrent-context: testbed\n",
            self.server_url
        )
    }

    /// Starts a control plane from the binaries in `k8s_bin` (etcd from `$PATH`), without
    /// sharing it. [`testbed`] is what tests normally want.
    pub fn start_with(k8s_bin: &Path) -> Result<Self, TestbedError> {
        let dir = std::env::temp_dir().join(format!(
            "seshn-testbed-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        Self::start(&Binaries::locate(k8s_bin)?, &dir)
    }

    fn start_with_retries() -> Result<Self, TestbedError> {
        // A free port can be taken between probing and binding; a second attempt gets new ports.
        const ATTEMPTS: usize = 3;
        let k8s_bin = PathBuf::from(
            std::env::var("SESHN_K8S_BIN").unwrap_or_else(|_| DEFAULT_K8S_BIN.to_owned()),
        );
        let bins = Binaries::locate(&k8s_bin)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = std::env::temp_dir().join(format!(
                "seshn-testbed-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            match Self::start(&bins, &dir) {
                Ok(tb) => return Ok(tb),
                Err(e) if matches!(e, TestbedError::Missing { .. }) || attempt == ATTEMPTS => {
                    return Err(e);
                }
                // Retried: this attempt's directory goes with its processes.
                Err(_) => DIRS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retain(|d| d != &dir),
            }
        }
    }

    fn start(bins: &Binaries, dir: &Path) -> Result<Self, TestbedError> {
        let dir = dir.to_owned();
        std::fs::create_dir_all(dir.join("certs")).map_err(io("create the test bed directory"))?;
        install_panic_hook();
        DIRS.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(dir.clone());
        let mut procs = Processes::new(&dir);

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;
        let admin_token = hex::encode(rand::random::<[u8; 16]>());
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{admin_token},admin,admin,system:masters\n"),
        )
        .map_err(io("write tokens.csv"))?;
        run(Command::new("openssl")
            .args(["genrsa", "-out", "sa.key", "2048"])
            .current_dir(&dir))?;
        run(Command::new("openssl")
            .args(["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
            .current_dir(&dir))?;

        let etcd_client = format!("http://127.0.0.1:{etcd_port}");
        let etcd_peer = format!("http://127.0.0.1:{peer_port}");
        procs.spawn(
            "etcd",
            Command::new(&bins.etcd)
                .arg("--name=testbed")
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .arg("--unsafe-no-fsync")
                .arg(format!("--listen-client-urls={etcd_client}"))
                .arg(format!("--advertise-client-urls={etcd_client}"))
                .arg(format!("--listen-peer-urls={etcd_peer}"))
                .arg(format!("--initial-advertise-peer-urls={etcd_peer}"))
                .arg(format!("--initial-cluster=testbed={etcd_peer}")),
        )?;
        procs.spawn(
            "kube-apiserver",
            Command::new(&bins.apiserver)
                .arg(format!("--etcd-servers={etcd_client}"))
                .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
                .arg(format!("--secure-port={api_port}"))
                .args(["--insecure-port=0", "--endpoint-reconciler-type=none"])
                .arg(format!("--cert-dir={}", dir.join("certs").display()))
                .arg("--service-account-key-file=sa.pub")
                .arg("--service-account-signing-key-file=sa.key")
                .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
                .args(["--token-auth-file=tokens.csv", "--authorization-mode=RBAC"])
                .args([
                    "--service-cluster-ip-range=10.96.0.0/16",
                    "--allow-privileged=true",
                ])
                .current_dir(&dir),
        )?;

        let server_url = format!("https://127.0.0.1:{api_port}");
        let ca_pem = wait_for_serving_ca(&dir, &mut procs)?;
        std::fs::write(dir.join("ca.crt"), &ca_pem).map_err(io("write ca.crt"))?;
        let kubeconfig_path = dir.join("kubeconfig");
        let tb = Testbed {
            dir: dir.clone(),
            server_url,
            ca_pem,
            admin_token,
            kubeconfig_path: kubeconfig_path.clone(),
            children: Mutex::new(Vec::new()),
        };
        std::fs::write(&kubeconfig_path, tb.kubeconfig_yaml(&tb.admin_token))
            .map_err(io("write the kubeconfig"))?;
        tb.wait_ready(&mut procs)?;

        procs.spawn(
            "kube-controller-manager",
            Command::new(&bins.controller_manager)
                .arg(format!("--kubeconfig={}", kubeconfig_path.display()))
                .args(["--leader-elect=false", "--port=0", "--secure-port=0"])
                .arg("--controllers=garbagecollector,namespace,serviceaccount,serviceaccount-token")
                .arg("--service-account-private-key-file=sa.key")
                .arg("--root-ca-file=ca.crt")
                .arg("--use-service-account-credentials=false")
                .current_dir(&dir),
        )?;
        tb.wait_controller_manager(&mut procs)?;
        *tb.children.lock().unwrap_or_else(PoisonError::into_inner) = procs.disarm();
        Ok(tb)
    }

    fn runtime() -> Result<tokio::runtime::Runtime, TestbedError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("build a runtime"))
    }

    /// Polls `/readyz` until it answers `ok`, failing fast when the apiserver dies.
    fn wait_ready(&self, procs: &mut Processes) -> Result<(), TestbedError> {
        let limit = Duration::from_secs(90);
        let deadline = Instant::now() + limit;
        Self::runtime()?.block_on(async {
            let client = self.client().await;
            loop {
                let req = readyz_request();
                if let Ok(body) = client.request_text(req).await
                    && body.trim() == "ok"
                {
                    return Ok(());
                }
                procs.check_alive()?;
                if Instant::now() > deadline {
                    return Err(procs.not_ready("kube-apiserver", limit));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// Waits for a sign that kube-controller-manager works: its service-account and token
    /// controllers give the `default` ServiceAccount of namespace `default` a token Secret (the
    /// tests' ServiceAccount tokens come from the same controllers; the garbage collector and
    /// namespace controller start with them). Fails fast, with its log, when it dies.
    fn wait_controller_manager(&self, procs: &mut Processes) -> Result<(), TestbedError> {
        use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
        let limit = Duration::from_secs(90);
        let deadline = Instant::now() + limit;
        Self::runtime()?.block_on(async {
            let client = self.client().await;
            let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
            let secrets: Api<Secret> = Api::namespaced(client, "default");
            loop {
                let token_names: Vec<String> = match sas.get_opt("default").await {
                    Ok(Some(sa)) => sa
                        .secrets
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|r| r.name)
                        .collect(),
                    _ => Vec::new(),
                };
                for name in token_names {
                    if let Ok(Some(secret)) = secrets.get_opt(&name).await
                        && secret.data.is_some_and(|d| d.contains_key("token"))
                    {
                        return Ok(());
                    }
                }
                procs.check_alive()?;
                if Instant::now() > deadline {
                    return Err(procs.not_ready("kube-controller-manager", limit));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }
}

fn readyz_request() -> http::Request<Vec<u8>> {
    let mut req = http::Request::new(Vec::new());
    *req.uri_mut() = http::Uri::from_static("/readyz");
    req
}

/// The control-plane binaries, found or explained.
struct Binaries {
    etcd: PathBuf,
    apiserver: PathBuf,
    controller_manager: PathBuf,
}

impl Binaries {
    fn locate(k8s: &Path) -> Result<Self, TestbedError> {
        let etcd = which("etcd").ok_or(TestbedError::Missing {
            what: "etcd",
            path: "$PATH".into(),
        })?;
        let found = |name: &'static str| {
            let p = k8s.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(TestbedError::Missing {
                    what: name,
                    path: p.display().to_string(),
                })
            }
        };
        if which("openssl").is_none() {
            return Err(TestbedError::Missing {
                what: "openssl",
                path: "$PATH".into(),
            });
        }
        Ok(Self {
            apiserver: found("kube-apiserver")?,
            controller_manager: found("kube-controller-manager")?,
            etcd,
        })
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16, TestbedError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("probe a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("probe a free port"))?
        .port())
}

fn run(cmd: &mut Command) -> Result<(), TestbedError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("run {cmd:?}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestbedError::Io {
            action: format!("run {cmd:?}"),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        })
    }
}

/// The apiserver writes a self-signed serving chain (leaf, then CA) into `--cert-dir` at start;
/// the CA is what clients must trust.
fn wait_for_serving_ca(dir: &Path, procs: &mut Processes) -> Result<String, TestbedError> {
    let crt = dir.join("certs").join("apiserver.crt");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(chain) = std::fs::read_to_string(&crt) {
            let blocks: Vec<&str> = chain
                .split_inclusive("-----END CERTIFICATE-----")
                .map(str::trim)
                .filter(|b| b.starts_with("-----BEGIN CERTIFICATE-----"))
                .collect();
            if let Some(ca) = blocks.get(1) {
                return Ok(format!("{ca}\n"));
            }
        }
        procs.check_alive()?;
        if Instant::now() > deadline {
            return Err(procs.not_ready("kube-apiserver", Duration::from_secs(60)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Started processes. Until [`Processes::disarm`], dropping kills them (a failed start leaves
/// nothing behind); after it, each one's watchdog ends it when the test process exits.
struct Processes {
    dir: PathBuf,
    children: Vec<(&'static str, Child)>,
    armed: bool,
}

impl Processes {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            children: Vec::new(),
            armed: true,
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) -> Result<(), TestbedError> {
        let log =
            std::fs::File::create(self.log_path(name)).map_err(io(format!("create {name}.log")))?;
        let err = log.try_clone().map_err(io(format!("open {name}.log")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Own process group: a signal meant for the test's group (e.g. a nextest timeout)
            // must not orphan a half-killed control plane; the watchdog ends it instead.
            .process_group(0)
            .spawn()
            .map_err(io(format!("start {name}")))?;
        spawn_watchdog(child.id(), &self.dir)?;
        self.children.push((name, child));
        Ok(())
    }

    fn check_alive(&mut self) -> Result<(), TestbedError> {
        for (name, child) in &mut self.children {
            if let Ok(Some(_)) = child.try_wait() {
                let log = self.dir.join(format!("{name}.log"));
                return Err(TestbedError::Exited {
                    what: name,
                    log: log.display().to_string(),
                    tail: log_tail(&log, 20),
                });
            }
        }
        Ok(())
    }

    fn not_ready(&self, what: &'static str, limit: Duration) -> TestbedError {
        let log = self.log_path(what);
        TestbedError::NotReady {
            what,
            limit,
            log: log.display().to_string(),
            tail: log_tail(&log, 30),
        }
    }

    /// Start-up succeeded: from now on the watchdogs (and the [`Testbed`]) own the processes.
    fn disarm(&mut self) -> Vec<(&'static str, Child)> {
        self.armed = false;
        std::mem::take(&mut self.children)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        if self.armed {
            for (_, child) in &mut self.children {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A detached `sh` loop that waits for this test process to disappear, then stops `pid`
/// (TERM, then KILL) and removes the test bed directory, or, when a panic marked it to be kept,
/// only etcd's data in it. It outlives panics, aborts and kill -9 of the test process, which
/// in-process destructors cannot.
fn spawn_watchdog(pid: u32, dir: &Path) -> Result<(), TestbedError> {
    let me = std::process::id();
    let dir = dir.display();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill {pid} 2>/dev/null; \
         for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 {pid} 2>/dev/null || break; sleep 0.3; done; \
         kill -9 {pid} 2>/dev/null; \
         if [ -e '{dir}/{KEEP_MARKER}' ]; then rm -rf '{dir}/etcd'; else rm -rf '{dir}'; fi"
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(io("start the watchdog"))?;
    Ok(())
}
