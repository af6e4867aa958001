//! A real Kubernetes control plane on loopback, shared by the tests of one binary.

use std::io::Read;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::OnceCell;

use crate::addresses::{self, AddressGuard, OnViolation};
use crate::certs::{self, Pki};
use crate::process::{log_tail, spawn_supervised};
use crate::wait::poll_until;

/// Users the API server knows by static token. `taimatsu-admin` is in
/// `system:masters`; the others start with no permissions, for RBAC tests.
pub const USERS: [&str; 4] = ["taimatsu-admin", "taimatsu-operator", "alice", "bob"];

/// How the API server is reachable.
#[derive(Debug, Clone, Default)]
pub struct ControlPlaneOptions {
    /// `None`: loopback only, and the `kubernetes` Service has no endpoints (nothing runs
    /// in a pod network). `Some(ip)`: for pods on a real node (`hack/real-node.sh`, whose
    /// bridge gateway is `10.85.0.1`): the API server listens on every address and publishes
    /// `ip` as the `kubernetes` Service's endpoint, so in-cluster clients reach it through
    /// kube-proxy at the Service's cluster IP (`10.0.0.1`, in its certificate). Every address
    /// rather than `ip` alone: the node's bridge comes up after the control plane.
    pub pod_reachable_at: Option<IpAddr>,
    /// Where the [`AddressGuard`] reports a pod or node address off this machine. `None`
    /// (every test cluster but the guard's own test): it aborts the process.
    pub address_violations: Option<std::sync::mpsc::Sender<String>>,
}

/// A running etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok.
pub struct ControlPlane {
    /// Working directory: certificates, kubeconfigs, etcd data, logs.
    pub dir: PathBuf,
    /// Where the Go-built binaries are.
    pub bin_dir: PathBuf,
    /// The API server's URL.
    pub server: String,
    children: Mutex<Vec<Component>>,
}

/// A supervised control-plane process, with what it takes to start it again.
struct Component {
    name: String,
    args: Vec<String>,
    child: Child,
    restarts: u32,
}

/// kwok v0.7.0 sometimes dies while it starts, with `fatal error: concurrent map writes` in
/// its CEL environment (github.com/wzshiming/easycel's type registry is not safe for the
/// concurrent use kwok makes of it). kwok keeps no state, so it is started again, up to
/// this many times, and the crash stays in its log.
const KWOK_START_CRASH: &str = "fatal error: concurrent map writes";
const KWOK_RESTARTS: u32 = 3;

// A failed start is kept too, so the other tests report it instead of retrying.
static SHARED: OnceCell<Result<ControlPlane, String>> = OnceCell::const_new();

/// A control plane a test started for itself stops with it; the shared one (a static)
/// lives as long as the test binary, whose exit kills it (parent-death signal).
impl Drop for ControlPlane {
    fn drop(&mut self) {
        let children = match self.children.get_mut() {
            Ok(children) => children,
            Err(poisoned) => poisoned.into_inner(),
        };
        for component in children.iter_mut() {
            let _ = component.child.kill();
            let _ = component.child.wait();
        }
        // A failing test's control plane: its logs go with the failure report, because the
        // directory is removed by the next test binary and CI keeps only the output.
        if std::thread::panicking() {
            self.print_log_tails(LOG_TAIL_ON_FAILURE);
        }
    }
}

/// Lines of each log printed when a test that owns a control plane fails.
const LOG_TAIL_ON_FAILURE: usize = 40;

impl ControlPlane {
    /// The control plane of this test binary, started on first use.
    pub async fn shared() -> &'static ControlPlane {
        let started = SHARED.get_or_init(|| async { ControlPlane::start().await.map_err(|e| format!("{e:#}")) }).await;
        match started {
            Ok(cp) => cp,
            Err(e) => panic!("could not start the test control plane: {e}"),
        }
    }

    /// Starts a fresh control plane with the GPU fleet of [`crate::fleet`], in a new
    /// temporary directory.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        Self::start_in(fresh_work_dir()?).await
    }

    /// Starts a control plane whose state (etcd data, certificates, kubeconfigs,
    /// logs) lives in `dir`, which is emptied first.
    pub async fn start_in(dir: PathBuf) -> anyhow::Result<ControlPlane> {
        Self::start_with(dir, ControlPlaneOptions::default()).await
    }

    /// [`Self::start_in`], reachable as `options` say.
    pub async fn start_with(dir: PathBuf, options: ControlPlaneOptions) -> anyhow::Result<ControlPlane> {
        let started = Instant::now();
        let bin_dir = crate::bins::cluster_bin_dir()?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(dir.join("logs"))?;
        let pki = certs::generate(&dir.join("pki"))?;
        let apiserver_port = free_port()?;
        let server = format!("https://127.0.0.1:{apiserver_port}");
        write_identities(&dir, &server, &pki)?;

        let cp = ControlPlane { dir, bin_dir, server, children: Mutex::new(Vec::new()) };
        let etcd_url = cp.start_etcd()?;
        cp.start_apiserver(&pki, apiserver_port, &etcd_url, options.pod_reachable_at)?;
        cp.wait_ready().await?;
        cp.start_controllers(&pki)?;
        let on_violation: OnViolation = match options.address_violations {
            Some(tx) => std::sync::Arc::new(move |violation| {
                let _ = tx.send(violation);
            }),
            None => addresses::abort_on_violation(),
        };
        AddressGuard::start(cp.kubeconfig("taimatsu-admin"), on_violation)?;
        let client = cp.client().await?;
        crate::fleet::install(&client).await?;
        cp.wait_controllers(&client).await?;
        eprintln!(
            "test control plane ready in {:.1}s at {} (logs: {})",
            started.elapsed().as_secs_f64(),
            cp.server,
            cp.dir.join("logs").display()
        );
        Ok(cp)
    }

    /// The directory holding this control plane's state; processes started with
    /// [`Self::start_process`] run in it.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The CA of the client certificate this API server presents to admission webhooks
    /// (`--webhook-client-ca-file` of an operator whose webhook it calls).
    pub fn webhook_client_ca(&self) -> PathBuf {
        self.dir.join("pki").join("webhook-client-ca.crt")
    }

    /// Kubeconfig file for one of [`USERS`].
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.kubeconfig"))
    }

    /// An admin client, bound to the calling test's runtime.
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.client_as("taimatsu-admin").await
    }

    /// A client authenticated as `user` (one of [`USERS`]).
    pub async fn client_as(&self, user: &str) -> anyhow::Result<Client> {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig(user))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Runs the Go-built kubectl as admin.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.kubectl_command().args(args).output().context("running kubectl")
    }

    /// The Go-built kubectl as admin, to add arguments and environment to. The
    /// kubeconfig is passed in the environment, where kubectl plugins find it too.
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.env("KUBECONFIG", self.kubeconfig("taimatsu-admin"));
        cmd
    }

    /// Starts another process (an operator under test, say) supervised like the
    /// control plane: its output goes to `logs/<label>.log`, and it dies with the
    /// test binary. Returns the child and its log path.
    pub fn start_process(&self, label: &str, mut cmd: Command) -> anyhow::Result<(Child, PathBuf)> {
        let log = self.log(label);
        cmd.current_dir(&self.dir);
        let child = spawn_supervised(cmd, &log).with_context(|| format!("starting {label}"))?;
        Ok((child, log))
    }

    /// SIGKILLs the control-plane component `name` (e.g. `kube-apiserver`, `etcd`), as a
    /// crash or an upgrade would, keeps it down for `down`, and starts it again with the same
    /// arguments; returns once the API server answers `/readyz` again.
    ///
    /// kwok is then restarted too, as the re-sync a kubelet does: kwok v0.7.0 drops a pod's
    /// stage for good when its patch fails on a cut connection (its `shouldRetry`, in
    /// pkg/kwok/controllers/utils.go, retries refused connections and server-side timeouts
    /// only), so a pod whose "ready" patch was in flight at the kill would never become
    /// ready. A real kubelet reports pod status again at its next sync; kwok, which keeps no
    /// state, does so when it starts and lists its pods.
    pub async fn kill_and_restart(&self, name: &str, down: Duration) -> anyhow::Result<()> {
        let args = self.kill(name)?;
        tokio::time::sleep(down).await;
        self.respawn(name, &args)?;
        self.wait_ready().await?;
        if name != "kwok" {
            let kwok = self.kill("kwok")?;
            self.respawn("kwok", &kwok)?;
            self.wait_ready().await?;
        }
        Ok(())
    }

    /// SIGKILLs component `name` and returns its arguments.
    fn kill(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let mut children = self.children.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let component = children
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| anyhow::anyhow!("no control-plane component {name}"))?;
        component.child.kill()?;
        component.child.wait()?;
        Ok(component.args.clone())
    }

    /// Starts component `name` again, in the place of its killed process.
    fn respawn(&self, name: &str, args: &[String]) -> anyhow::Result<()> {
        let child = self.spawn_child(name, args)?;
        if let Some(component) =
            self.children.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter_mut().find(|c| c.name == name)
        {
            component.child = child;
        }
        Ok(())
    }

    /// Prints the last `lines` lines of every log of this control plane (its components and
    /// the processes started with [`ControlPlane::start_process`]) to the test's output.
    pub fn print_log_tails(&self, lines: usize) {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.join("logs"))
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            eprintln!("===== last {lines} lines of {} =====\n{}", log.display(), log_tail(&log, lines));
        }
    }

    fn log(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    fn spawn(&self, component: &str, args: Vec<String>) -> anyhow::Result<()> {
        let child = self.spawn_child(component, &args)?;
        let component = Component { name: component.to_owned(), args, child, restarts: 0 };
        self.children.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(component);
        Ok(())
    }

    fn spawn_child(&self, component: &str, args: &[String]) -> anyhow::Result<Child> {
        let bin = self.bin_dir.join(component);
        let mut cmd = Command::new(&bin);
        cmd.args(args).current_dir(&self.dir);
        spawn_supervised(cmd, &self.log(component)).with_context(|| format!("starting {}", bin.display()))
    }

    /// Fails with the component's log when any process has exited (except for kwok's known
    /// start-up crash, see [`KWOK_START_CRASH`]: kwok is started again).
    fn check_alive(&self) -> anyhow::Result<()> {
        let mut children = self.children.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for component in children.iter_mut() {
            let Some(status) = component.child.try_wait()? else { continue };
            let log = self.log(&component.name);
            let known_crash = component.name == "kwok"
                && component.restarts < KWOK_RESTARTS
                // A crash not yet restarted: the log keeps the earlier ones.
                && std::fs::read_to_string(&log)
                    .is_ok_and(|text| text.matches(KWOK_START_CRASH).count() > component.restarts as usize);
            if known_crash {
                eprintln!(
                    "kwok crashed while starting ({KWOK_START_CRASH}); starting it again (log: {})",
                    log.display()
                );
                component.child = self.spawn_child(&component.name, &component.args)?;
                component.restarts += 1;
                continue;
            }
            bail!("{} exited ({status}); last log lines:\n{}", component.name, log_tail(&log, 30));
        }
        Ok(())
    }

    fn start_etcd(&self) -> anyhow::Result<String> {
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        self.spawn(
            "etcd",
            vec![
                format!("--data-dir={}", self.dir.join("etcd").display()),
                "--name=default".into(),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                // Test data is thrown away: skip fsync, the slowest part of etcd here.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;
        Ok(client_url)
    }

    /// An AdmissionConfiguration that gives the API server a client certificate for every
    /// webhook it calls (the kubeconfig user `*` matches any webhook host), as Kubernetes
    /// documents for API servers that authenticate to webhooks.
    fn write_webhook_admission(&self, pki: &Pki) -> anyhow::Result<PathBuf> {
        let kubeconfig = self.dir.join("webhook-client.kubeconfig");
        let users = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "users": [{ "name": "*", "user": {
                "client-certificate": pki.webhook_client_cert, "client-key": pki.webhook_client_key,
            } }],
        });
        std::fs::write(&kubeconfig, serde_yaml::to_string(&users)?)?;
        let webhooks = serde_json::json!({
            "apiVersion": "apiserver.config.k8s.io/v1", "kind": "WebhookAdmissionConfiguration",
            "kubeConfigFile": kubeconfig,
        });
        let admission = serde_json::json!({
            "apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration",
            "plugins": [
                { "name": "ValidatingAdmissionWebhook", "configuration": webhooks },
                { "name": "MutatingAdmissionWebhook", "configuration": webhooks },
            ],
        });
        let file = self.dir.join("admission.yaml");
        std::fs::write(&file, serde_yaml::to_string(&admission)?)?;
        Ok(file)
    }

    fn start_apiserver(&self, pki: &Pki, port: u16, etcd_url: &str, pod_ip: Option<IpAddr>) -> anyhow::Result<()> {
        let path = |p: &Path| p.display().to_string();
        let reachability = match pod_ip {
            // 127.0.0.1 may not be published as the kubernetes Service's endpoint.
            None => [
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                "--endpoint-reconciler-type=none".into(),
            ],
            // The default (lease) reconciler publishes the advertised address.
            Some(ip) => [
                "--bind-address=0.0.0.0".into(),
                format!("--advertise-address={ip}"),
                "--endpoint-reconciler-type=lease".into(),
            ],
        };
        self.spawn(
            "kube-apiserver",
            [
                format!("--etcd-servers={etcd_url}"),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", self.dir.join("apiserver-certs").display()),
                format!("--tls-cert-file={}", path(&pki.serving_cert)),
                format!("--tls-private-key-file={}", path(&pki.serving_key)),
                format!("--client-ca-file={}", path(&pki.ca_cert)),
                format!("--admission-control-config-file={}", path(&self.write_webhook_admission(pki)?)),
                format!("--token-auth-file={}", self.dir.join("tokens.csv").display()),
                "--authorization-mode=RBAC".into(),
                // /16: room for a Service per ModelDeployment in the 1000-deployment benchmark.
                "--service-cluster-ip-range=10.0.0.0/16".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", path(&pki.service_account_public_key)),
                format!("--service-account-signing-key-file={}", path(&pki.service_account_key)),
                "--allow-privileged=true".into(),
                // Reach kubelets (`kubectl logs`) at their node IP: node names do not resolve
                // here (hack/real-node.sh's node listens on its bridge address).
                "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
                "--v=1".into(),
            ]
            .into_iter()
            .chain(reachability)
            .collect(),
        )
    }

    fn start_controllers(&self, pki: &Pki) -> anyhow::Result<()> {
        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig("taimatsu-admin").display());
        self.spawn(
            "kube-controller-manager",
            vec![
                kubeconfig.clone(),
                "--leader-elect=false".into(),
                format!("--root-ca-file={}", pki.ca_cert.display()),
                format!("--service-account-private-key-file={}", pki.service_account_key.display()),
                "--use-service-account-credentials=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
                // kwok's fake nodes heartbeat through client-go, whose retries grow during an
                // API server outage: after a restart (tests/leader_restart.rs) they were seen
                // 50 s late, past the default 50 s grace, and the node lifecycle controller then
                // declared every node not ready and marked their pods not ready, which kwok
                // never sets ready again. Node health is not what these tests are about.
                "--node-monitor-grace-period=5m".into(),
                "--v=1".into(),
            ],
        )?;
        self.spawn(
            "kube-scheduler",
            vec![
                kubeconfig.clone(),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
            ],
        )?;
        self.spawn(
            "kwok",
            vec![
                kubeconfig,
                "--manage-all-nodes=false".into(),
                format!("--manage-nodes-with-annotation-selector={}=fake", crate::fleet::KWOK_ANNOTATION),
                // Loopback: a probe of a simulated pod is refused on this machine.
                format!("--cidr={}", addresses::KWOK_POD_CIDR),
                "--node-ip=127.0.0.1".into(),
                format!("--server-address=127.0.0.1:{}", free_port()?),
                // Heartbeats in node status, not node Leases: a kwok started again (see
                // `kill_and_restart`) has a new holder identity, and with Leases it was seen
                // not to touch a node or pod for 3 minutes while the dead one's Leases stood.
                "--node-lease-duration-seconds=0".into(),
            ],
        )
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        poll_until("kube-apiserver /readyz", Duration::from_secs(120), || async {
            self.check_alive()?;
            let client = self.client().await?;
            let req = http::Request::get("/readyz").body(Vec::new())?;
            // Refused connections and 500s are expected while it starts.
            Ok(client.request_text(req).await.ok().filter(|body| body.trim() == "ok").map(|_| ()))
        })
        .await
    }

    /// Controller-manager is working once it has made the `default` ServiceAccount,
    /// the scheduler and kwok once every fake node reports Ready.
    async fn wait_controllers(&self, client: &Client) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let sa: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), "default");
        poll_until(
            "kube-controller-manager to create the default ServiceAccount",
            Duration::from_secs(120),
            || async {
                self.check_alive()?;
                Ok(sa.get_opt("default").await?.map(|_| ()))
            },
        )
        .await?;
        crate::fleet::wait_ready(client, || self.check_alive()).await
    }
}

/// A new working directory under the system temp dir, removing those left by
/// earlier test binaries that are no longer running.
pub fn fresh_work_dir() -> anyhow::Result<PathBuf> {
    const PREFIX: &str = "taimatsu-test-cluster-";
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next())
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = tmp.join(format!("{PREFIX}{}-{}", std::process::id(), random_hex(4)?));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes the static token file and one kubeconfig per user.
fn write_identities(dir: &Path, server: &str, pki: &Pki) -> anyhow::Result<()> {
    let ca_data = base64_encode(pki.ca_pem.as_bytes());
    let mut tokens = String::new();
    for (uid, user) in USERS.iter().enumerate() {
        let token = random_hex(24)?;
        let groups = if *user == "taimatsu-admin" { ",\"system:masters\"" } else { "" };
        tokens.push_str(&format!("{token},{user},{uid}{groups}\n"));
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: taimatsu-test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca_data}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: {user}@taimatsu-test\n  context:\n    cluster: taimatsu-test\n    user: {user}\n    namespace: default\ncurrent-context: {user}@taimatsu-test\n"
        );
        std::fs::write(dir.join(format!("{user}.kubeconfig")), kubeconfig)?;
    }
    std::fs::write(dir.join("tokens.csv"), tokens)?;
    Ok(())
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
