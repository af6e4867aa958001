//! An in-house model mirror: an HTTPS file server with a private CA holding the real model
//! files (`hack/models.sh`), like the mirror a regulated organisation runs instead of a
//! model hub. Used by the sandbox and by the end-to-end tests.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};

/// The mirror's path for each model directory under the models dir (`hack/models.sh`).
pub const MIRRORED: [(&str, &str); 2] = [("smollm2-135m-instruct", "smollm2"), ("all-minilm-l6-v2", "minilm")];

/// A running mirror; it stops when dropped.
pub struct Mirror {
    /// Base URL, e.g. `https://127.0.0.1:41000`; a model's files are under `/<model>/`.
    pub url: String,
    /// PEM of the CA that signs the mirror's certificate.
    pub ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mirror {
    /// Serves the model directories ([`MIRRORED`]) under `models_dir`.
    ///
    /// On 127.0.0.1, or, with `pod_ip` (the address pods in their own network namespaces
    /// reach this host at), on every address with `pod_ip` in the URL and the certificate.
    /// Every address rather than `pod_ip` alone: the real node's bridge may come up after
    /// the mirror.
    pub async fn serve(models_dir: PathBuf, pod_ip: Option<IpAddr>) -> anyhow::Result<Mirror> {
        // `{*path}`: model directories have subdirectories (MiniLM's `1_Pooling/config.json`).
        let app = Router::new().route("/{model}/{*path}", get(mirror_file)).with_state(models_dir);
        let (listener, url, tls) = match pod_ip {
            None => {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
                let url = format!("https://{}", listener.local_addr()?);
                (listener, url, crate::tls::loopback_server_config()?)
            }
            Some(ip) => {
                let listener = tokio::net::TcpListener::bind(("0.0.0.0", 0)).await?;
                let url = format!("https://{}", std::net::SocketAddr::new(ip, listener.local_addr()?.port()));
                (listener, url, crate::tls::server_config(&[ip.to_string()])?)
            }
        };
        let (ca_pem, config) = tls;
        Ok(Mirror { url, ca_pem, task: crate::tls::serve(listener, config, app) })
    }

    /// The Model of the example file `example` (a path under the repository root) with its
    /// source pointed at this mirror, and the Secret with the mirror's CA it names, created
    /// in `namespace`. The Model must name a `caBundleRef` and be one of [`MIRRORED`].
    pub async fn example_model(&self, client: &Client, namespace: &str, example: &str) -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(crate::repo_root().join(example))?;
        let mut model = serde_yaml::Deserializer::from_str(&text)
            .map(Value::deserialize)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .find(|doc| doc["kind"] == "Model")
            .ok_or_else(|| anyhow::anyhow!("{example} has no Model"))?;
        let name = model["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(MIRRORED.iter().any(|(m, _)| *m == name), "{example}: the mirror does not hold {name}");
        model["spec"]["source"]["uri"] = json!(format!("{}/{name}/", self.url));
        let ca = &model["spec"]["source"]["caBundleRef"];
        let (secret, key) = (ca["name"].as_str().unwrap_or_default(), ca["key"].as_str().unwrap_or_default());
        anyhow::ensure!(!secret.is_empty() && !key.is_empty(), "{example}: spec.source.caBundleRef is missing");
        let object = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": secret }, "stringData": { key: self.ca_pem } });
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
        secrets.patch(secret, &PatchParams::apply(crate::apply::FIELD_MANAGER).force(), &Patch::Apply(object)).await?;
        Ok(model)
    }
}

/// A file of a mirrored model; paths with anything but plain names (`..`, `.`, absolute)
/// are refused rather than resolved.
async fn mirror_file(
    State(root): State<PathBuf>,
    UrlPath((model, path)): UrlPath<(String, String)>,
) -> Result<Vec<u8>, StatusCode> {
    let dir =
        MIRRORED.iter().find(|(name, _)| *name == model).map(|(_, dir)| root.join(dir)).ok_or(StatusCode::NOT_FOUND)?;
    let relative = Path::new(&path);
    if !relative.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(StatusCode::BAD_REQUEST);
    }
    tokio::fs::read(dir.join(relative)).await.map_err(|_| StatusCode::NOT_FOUND)
}
