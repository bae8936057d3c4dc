//! A real Kubernetes control plane for tests: etcd, kube-apiserver v1.20.2 (RBAC and token
//! authentication on) and kube-controller-manager (garbage collector, namespace and
//! service-account controllers), started once per test process on free 127.0.0.1 ports.
//!
//! No kubelet or scheduler runs, so Pods never start and Deployments never become Available by
//! themselves. Every process is put in its own process group and watched by a small watchdog
//! that kills it (by pid) as soon as the test process is gone, whether it exited, panicked or was
//! killed: nothing outlives the test binary.
//!
//! Binaries come from `scripts/k8s/install.sh`; when they are missing, [`testbed`] panics with
//! that exact command. It never skips.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
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
    #[error("kube-apiserver was not ready within {0:?}")]
    NotReady(Duration),
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
}

static TESTBED: OnceLock<Testbed> = OnceLock::new();

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
        Self::start(&Binaries::locate(k8s_bin)?)
    }

    fn start_with_retries() -> Result<Self, TestbedError> {
        let k8s_bin = PathBuf::from(
            std::env::var("SESHN_K8S_BIN").unwrap_or_else(|_| DEFAULT_K8S_BIN.to_owned()),
        );
        let bins = Binaries::locate(&k8s_bin)?;
        // A free port can be taken between probing and binding; a second attempt gets new ports.
        let mut last = None;
        for _ in 0..3 {
            match Self::start(&bins) {
                Ok(tb) => return Ok(tb),
                Err(e @ TestbedError::Missing { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(TestbedError::NotReady(Duration::ZERO)))
    }

    fn start(bins: &Binaries) -> Result<Self, TestbedError> {
        let dir = std::env::temp_dir().join(format!(
            "seshn-testbed-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(dir.join("certs")).map_err(io("create the test bed directory"))?;
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
        procs.disarm();
        Ok(tb)
    }

    /// Polls `/readyz` until it answers `ok`, failing fast when the apiserver dies.
    fn wait_ready(&self, procs: &mut Processes) -> Result<(), TestbedError> {
        let limit = Duration::from_secs(90);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("build a runtime"))?;
        let deadline = Instant::now() + limit;
        runtime.block_on(async {
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
                    return Err(TestbedError::NotReady(limit));
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
            return Err(TestbedError::NotReady(Duration::from_secs(60)));
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
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let mut out = String::new();
                for line in tail.into_iter().rev() {
                    let _ = writeln!(out, "  {line}");
                }
                return Err(TestbedError::Exited {
                    what: name,
                    log: log.display().to_string(),
                    tail: out,
                });
            }
        }
        Ok(())
    }

    fn disarm(&mut self) {
        self.armed = false;
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
/// (TERM, then KILL) and removes the test bed directory. It outlives panics, aborts and kill -9
/// of the test process, which in-process destructors cannot.
fn spawn_watchdog(pid: u32, dir: &Path) -> Result<(), TestbedError> {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill {pid} 2>/dev/null; \
         for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 {pid} 2>/dev/null || break; sleep 0.3; done; \
         kill -9 {pid} 2>/dev/null; rm -rf '{}'",
        dir.display()
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
