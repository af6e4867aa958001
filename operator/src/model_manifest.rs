//! `kubectl taimatsu model manifest hf://<org>/<name>@<revision> --mirror URL`: the Model of
//! a Hub repository with every file's size and sha256, so that nobody copies hashes by hand.
//!
//! It asks the mirror's model API (`/api/models/{repo}/revision/{revision}`) for the commit
//! and the files. LFS files (the weights) come with their sha256 and size, which the Hub
//! computed when they were uploaded; small git files carry no sha256 there, so they are
//! downloaded at that commit and hashed from their bytes. The Model it writes pins the
//! commit, never the branch it was asked for. The worker verifies every file against this
//! list again, so a mirror that lied here is caught at fetch time.

use std::path::Path;

use anyhow::Context as _;
use reqwest::{Client, Url};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};
use sha2::{Digest, Sha256};
use taimatsu_core::hf::is_commit;
use taimatsu_core::{HfSource, validate_relative_path};

/// What to write besides the files; unset fields are read from the repository where it
/// says them (`config.json`, the model card's license) or left for the user to fill in.
#[derive(Clone, Debug, Default)]
pub struct ModelFields {
    pub name: Option<String>,
    pub architecture: Option<String>,
    pub parameters: Option<String>,
    pub context_length: Option<i64>,
    pub license: Option<String>,
    /// Only these paths of the repository (a GGUF repository holds many quantizations,
    /// a Model exactly one). Empty: every file.
    pub only: Vec<String>,
}

/// One file of the Model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// The Model YAML, and the spec fields it could not fill in.
#[derive(Debug)]
pub struct Generated {
    pub yaml: String,
    pub missing: Vec<&'static str>,
}

#[derive(Deserialize)]
struct ModelInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
    #[serde(default, rename = "cardData")]
    card_data: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

/// A client for the mirror: the extra CA trusted, `HF_TOKEN` sent as a bearer when set.
pub struct HubClient {
    client: Client,
    mirror: Url,
    token: Option<String>,
}

impl HubClient {
    pub fn new(mirror: &str, ca: Option<&Path>, token: Option<String>) -> anyhow::Result<HubClient> {
        let mut url = Url::parse(mirror).with_context(|| format!("--mirror {mirror:?} is not a URL"))?;
        anyhow::ensure!(matches!(url.scheme(), "http" | "https"), "--mirror {mirror:?} is not an http(s) URL");
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        let mut builder =
            Client::builder().no_proxy().user_agent(concat!("kubectl-taimatsu/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading --ca {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("--ca {}", ca.display()))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(HubClient { client: builder.build()?, mirror: url, token })
    }

    fn get(&self, url: Url) -> reqwest::RequestBuilder {
        let request = self.client.get(url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn url(&self, segments: &[&str]) -> anyhow::Result<Url> {
        let mut url = self.mirror.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("--mirror cannot be a base URL"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn model_info(&self, source: &HfSource) -> anyhow::Result<ModelInfo> {
        let url = self.url(&["api", "models", &source.org, &source.name, "revision", &source.revision])?;
        let response = self.get(url.clone()).send().await.with_context(|| format!("asking {url}"))?;
        let status = response.status();
        if !status.is_success() {
            let code = response.headers().get("x-error-code").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let hint = match (status.as_u16(), code.as_str()) {
                (401 | 403, _) => "set HF_TOKEN to a token the mirror accepts",
                (_, "RevisionNotFound") => "the repository has no such revision at the mirror",
                (_, "RepoNotFound") => "the mirror does not hold this repository",
                _ => "check --mirror",
            };
            anyhow::bail!("{url} answered HTTP {status} {code}: {hint}");
        }
        response.json().await.with_context(|| format!("{url} did not answer a Hub model description"))
    }

    /// A git file's bytes at `commit`.
    async fn file(&self, source: &HfSource, commit: &str, path: &str) -> anyhow::Result<Vec<u8>> {
        let mut segments = vec![source.org.as_str(), source.name.as_str(), "resolve", commit];
        segments.extend(path.split('/'));
        let url = self.url(&segments)?;
        let response = self.get(url.clone()).send().await.with_context(|| format!("downloading {url}"))?;
        let response = response.error_for_status().with_context(|| format!("downloading {path}"))?;
        Ok(response.bytes().await.with_context(|| format!("downloading {path}"))?.to_vec())
    }
}

/// The Model for `source` as the mirror describes it.
pub async fn generate(hub: &HubClient, source: &HfSource, fields: &ModelFields) -> anyhow::Result<Generated> {
    let info = hub.model_info(source).await?;
    anyhow::ensure!(is_commit(&info.sha), "the mirror answered {:?} as the commit, not a commit id", info.sha);
    anyhow::ensure!(
        !source.is_pinned() || info.sha == source.revision,
        "asked for commit {} but the mirror described {}",
        source.revision,
        info.sha
    );
    let mut siblings: Vec<&Sibling> =
        info.siblings.iter().filter(|s| fields.only.is_empty() || fields.only.contains(&s.rfilename)).collect();
    for wanted in &fields.only {
        anyhow::ensure!(siblings.iter().any(|s| &s.rfilename == wanted), "{wanted} is not in {}", source.repo_id());
    }
    anyhow::ensure!(!siblings.is_empty(), "{} has no files at {}", source.repo_id(), info.sha);
    siblings.sort_by(|a, b| a.rfilename.cmp(&b.rfilename));

    let mut files = Vec::new();
    let mut config: Option<serde_json::Value> = None;
    for sibling in siblings {
        let path = &sibling.rfilename;
        validate_relative_path(path).with_context(|| format!("the mirror lists {path:?}"))?;
        let file = match &sibling.lfs {
            Some(lfs) => {
                anyhow::ensure!(
                    lfs.sha256.len() == 64 && lfs.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{path}: the mirror's sha256 {:?} is not 64 hex characters",
                    lfs.sha256
                );
                HubFile { path: path.clone(), size: lfs.size, sha256: lfs.sha256.to_ascii_lowercase() }
            }
            None => {
                let bytes = hub.file(source, &info.sha, path).await?;
                if path == "config.json" {
                    config = serde_json::from_slice(&bytes).ok();
                }
                HubFile { path: path.clone(), size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)) }
            }
        };
        files.push(file);
    }
    let license = info.card_data.as_ref().and_then(|c| c["license"].as_str()).map(str::to_owned);
    Ok(render(&source.at(&info.sha), &files, fields, config.as_ref(), license))
}

/// The Model document: `source` pinned, `files` as listed.
fn render(
    source: &HfSource,
    files: &[HubFile],
    fields: &ModelFields,
    config: Option<&serde_json::Value>,
    card_license: Option<String>,
) -> Generated {
    let gguf = files.iter().any(|f| f.path.ends_with(".gguf"));
    let name = fields.name.clone().unwrap_or_else(|| kubernetes_name(&source.name));
    let architecture =
        fields.architecture.clone().or_else(|| config.and_then(|c| c["model_type"].as_str()).map(str::to_owned));
    let context_length = fields.context_length.or_else(|| config.and_then(|c| c["max_position_embeddings"].as_i64()));
    let license = fields.license.clone().or(card_license);

    let mut missing = Vec::new();
    let mut spec = Mapping::new();
    let mut source_map = Mapping::new();
    source_map.insert("uri".into(), source.to_string().into());
    spec.insert("source".into(), Value::Mapping(source_map));
    spec.insert("format".into(), (if gguf { "gguf" } else { "safetensors" }).into());
    let listed = files.iter().map(|f| {
        let mut file = Mapping::new();
        file.insert("path".into(), f.path.clone().into());
        file.insert("size".into(), f.size.into());
        file.insert("sha256".into(), f.sha256.clone().into());
        Value::Mapping(file)
    });
    spec.insert("files".into(), Value::Sequence(listed.collect()));
    let mut optional = |key: &'static str, value: Option<Value>| match value {
        Some(v) => {
            spec.insert(key.into(), v);
        }
        None => missing.push(key),
    };
    optional("architecture", architecture.map(Value::from));
    optional("parameters", fields.parameters.clone().map(Value::from));
    optional("contextLength", context_length.map(Value::from));
    optional("license", license.map(Value::from));

    let mut metadata = Mapping::new();
    metadata.insert("name".into(), name.into());
    let mut model = Mapping::new();
    model.insert("apiVersion".into(), "taimatsu.dev/v1alpha1".into());
    model.insert("kind".into(), "Model".into());
    model.insert("metadata".into(), Value::Mapping(metadata));
    model.insert("spec".into(), Value::Mapping(spec));
    let yaml = serde_yaml::to_string(&Value::Mapping(model)).expect("a YAML mapping serialises");
    Generated { yaml, missing }
}

/// A repository name as a Kubernetes object name: lower case, `.`/`_` as `-`.
fn kubernetes_name(name: &str) -> String {
    let lower: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    lower.trim_matches('-').chars().take(63).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_pinned_model_in_the_examples_order() {
        let source = HfSource::parse(&format!("hf://org/SmolLM2-135M_Instruct.GGUF@{}", "a".repeat(40))).unwrap();
        let files = [HubFile { path: "m.gguf".into(), size: 3, sha256: "b".repeat(64) }];
        let fields = ModelFields { parameters: Some("135M".into()), ..ModelFields::default() };
        let config = serde_json::json!({ "model_type": "llama", "max_position_embeddings": 8192 });
        let generated = render(&source, &files, &fields, Some(&config), Some("apache-2.0".into()));
        let expected = format!(
            "apiVersion: taimatsu.dev/v1alpha1\nkind: Model\nmetadata:\n  name: smollm2-135m-instruct-gguf\nspec:\n  \
             source:\n    uri: hf://org/SmolLM2-135M_Instruct.GGUF@{}\n  format: gguf\n  files:\n  - path: m.gguf\n    \
             size: 3\n    sha256: {}\n  architecture: llama\n  parameters: 135M\n  contextLength: 8192\n  license: apache-2.0\n",
            "a".repeat(40),
            "b".repeat(64)
        );
        assert_eq!(generated.yaml, expected);
        assert!(generated.missing.is_empty());
        let bare = render(&source, &files, &ModelFields::default(), None, None);
        assert_eq!(bare.missing, ["architecture", "parameters", "contextLength", "license"]);
    }
}
