//! `Model`: where a model's weights come from, pinned file by file.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use taimatsu_core::ModelFormat;

use super::common::{ObjectRef, SecretKeyRef};

/// A model's weights and what is known about them: the source they are fetched
/// from, their format, and a manifest pinning every file by size and SHA-256.
/// ModelDeployments reference a Model by name; the inference worker refuses to
/// serve files that do not match the manifest.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
// kube-derive takes one `printcolumn(...)` per column; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "taimatsu.dev",
    version = "v1alpha1",
    kind = "Model",
    namespaced,
    status = "ModelStatus",
    shortname = "tmodel",
    category = "taimatsu",
    derive = "PartialEq",
    printcolumn(name = "Format", type_ = "string", json_path = ".spec.format"),
    printcolumn(name = "Params", type_ = "string", json_path = ".spec.parameters"),
    printcolumn(name = "Architecture", type_ = "string", json_path = ".spec.architecture"),
    printcolumn(name = "License", type_ = "string", json_path = ".spec.license"),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.digest", priority = "1"),
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.source.uri", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.allowUnpinned || (has(self.files) && size(self.files) > 0)").message("spec.files is required: list every file with its path, size and sha256 (sha256sum output), or set spec.allowUnpinned: true in a namespace whose policy allows unpinned models").field_path(".files"))]
#[x_kube(validation = Rule::new("self.format != 'gguf' || !has(self.files) || size(self.files) == 1").message("spec.files: a gguf model is a single file; list exactly one .gguf file").field_path(".files"))]
pub struct ModelSpec {
    /// Where the weights are fetched from.
    pub source: ModelSource,

    /// File format of the weights: `safetensors` (served by vLLM) or `gguf` (served by
    /// the built-in CPU engine). Immutable: weights in another format are another Model.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.format is immutable: create a new Model for weights in another format"))]
    pub format: ModelFormat,

    /// Every file of the model with its size and SHA-256. The worker fetches exactly
    /// these files and refuses to serve if any differs, is missing, or is extra.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4096))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["path".into()]))]
    pub files: Vec<ModelFile>,

    /// Serve without a file manifest. Only honoured in namespaces labelled
    /// `taimatsu.dev/allow-unpinned-models: "true"`; meant for development.
    #[serde(default)]
    pub allow_unpinned: bool,

    /// Model architecture as named in its config or GGUF metadata, e.g. `llama`,
    /// `qwen2`, `mistral`, `gemma3`. Immutable.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.architecture is immutable: create a new Model for another architecture"))]
    pub architecture: String,

    /// Number of parameters, e.g. `135M`, `7.6B`, `70B` (a number with an optional
    /// K, M, B or T suffix). Used by the GPU memory-fit check.
    #[schemars(length(min = 1, max = 24))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]+)?[KMBT]?$')").message("spec.parameters must be a number with an optional K, M, B or T suffix, such as 135M or 7.6B"))]
    pub parameters: String,

    /// Maximum context length in tokens the model supports.
    #[schemars(range(min = 1, max = 10_485_760))]
    pub context_length: i32,

    /// SPDX license identifier of the weights, e.g. `Apache-2.0`, `MIT`, `LicenseRef-Llama-3.1`.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)*$')").message("spec.license must be an SPDX identifier or expression such as Apache-2.0 or LicenseRef-Llama-3.1"))]
    pub license: String,

    /// Reserved: a signature over the file manifest. Recorded, not yet enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ModelSignature>,
}

/// Where a model's files are fetched from. Only this location (and DNS) is reachable
/// from worker pods when egress is restricted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// Location of the model's root directory. One of:
    /// `https://mirror.example/models/qwen2.5-7b/` (an in-house mirror),
    /// `s3://bucket/prefix/`, `pvc://<claim>/<path>`, `oci://registry[:port]/repo@sha256:<digest>`
    /// (an OCI artifact, one layer per file named by its `org.opencontainers.image.title`
    /// annotation, as `oras push` writes it; pulled over https, the digest verified), or
    /// `hf://<org>/<name>@<revision>`: a Hugging Face Hub
    /// repository fetched with the Hub's protocol from `hfMirror` or the operator's
    /// `--hf-mirror` (an in-house mirror such as Artifactory's or Nexus's Hugging Face
    /// repositories), never the public hub. The revision must be a 40-hex commit id unless
    /// the namespace allows unpinned models (a branch or tag can move);
    /// `kubectl taimatsu model manifest` prints the Model with the commit and every file.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^(https|s3|oci|pvc|hf)://')").message("spec.source.uri must start with https://, s3://, oci://, pvc:// or hf:// (plain http is not accepted for model weights)"))]
    #[x_kube(validation = Rule::new("!self.startsWith('oci://') || self.matches('^oci://[^/@ ]+/[^:@ ]+@sha256:[0-9a-f]{64}$')").message("spec.source.uri: an oci:// source must be pinned by digest alone, as oci://registry[:port]/repository@sha256:<64 hex characters> (no :tag: the digest pins the artifact)"))]
    #[x_kube(validation = Rule::new("!self.startsWith('hf://') || self.matches('^hf://[A-Za-z0-9._-]+/[A-Za-z0-9._-]+@[A-Za-z0-9._/-]+$')").message("spec.source.uri: an hf:// source must be hf://<org>/<name>@<revision>, the revision a commit id (or, where unpinned models are allowed, a branch or tag)"))]
    #[x_kube(validation = Rule::new("!self.startsWith('pvc://') || self.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$')").message("spec.source.uri: a pvc:// source must be pvc://<claim-name>/<path inside the volume>"))]
    #[x_kube(validation = Rule::new("!self.startsWith('s3://') || self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')").message("spec.source.uri: an s3:// source must be s3://<bucket>/<prefix>"))]
    // Credentials in the URI would reach every status, Event and audit record that names
    // the source (a chained record cannot be erased), and everyone who may read the Model.
    #[x_kube(validation = Rule::new("!self.matches('^[A-Za-z0-9+.-]+://[^/?#]*@')").message("spec.source.uri must not carry credentials (user info before '@', as in https://user:token@host/): put them in the Secret named by spec.source.credentialsSecretRef (key token for https, HF_TOKEN for hf, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3)"))]
    pub uri: String,

    /// For `hf://` sources: base URL of the in-house Hugging Face Hub mirror (what
    /// `HF_ENDPOINT` would be for the Hub's own clients), overriding the operator's
    /// `--hf-mirror`. Must be https; `caBundleRef` applies to it, and a token for it is
    /// `HF_TOKEN` in the Secret named by `credentialsSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("spec.source.hfMirror must be an https:// URL of an in-house mirror"))]
    #[x_kube(validation = Rule::new("!self.matches('^[A-Za-z0-9+.-]+://[^/?#]*@')").message("spec.source.hfMirror must not carry credentials (user info before '@', as in https://user:token@host/): put HF_TOKEN in the Secret named by spec.source.credentialsSecretRef"))]
    pub hf_mirror: Option<String>,

    /// Secret with credentials for the source: for s3, keys `AWS_ACCESS_KEY_ID`
    /// and `AWS_SECRET_ACCESS_KEY`; for hf, `HF_TOKEN` (sent to the mirror as a bearer
    /// token); for https, a bearer `token`; for oci, `OCI_USERNAME` and `OCI_PASSWORD`
    /// (a pull token is asked with them from the registry's token service, or they are
    /// sent as basic credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<ObjectRef>,

    /// PEM CA bundle that signs the source's TLS certificate, for in-house mirrors
    /// with a private CA. The system roots are used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_ref: Option<SecretKeyRef>,
}

/// One file of a model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct ModelFile {
    /// Path relative to the source root, `/`-separated, e.g. `model-00001-of-00004.safetensors`.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.endsWith('/') && !self.contains('//') && self != '..' && self != '.' && !self.startsWith('../') && !self.startsWith('./') && !self.contains('/../') && !self.contains('/./') && !self.endsWith('/..') && !self.endsWith('/.')").message("spec.files[].path must be a relative path inside the model root, without a leading '/', '.' or '..' segments"))]
    pub path: String,

    /// Size in bytes.
    #[schemars(range(min = 0))]
    pub size: i64,

    /// Lower-case hex SHA-256 of the file's content, as printed by `sha256sum`.
    #[schemars(length(min = 64, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("spec.files[].sha256 must be 64 lower-case hex characters, as printed by sha256sum"))]
    pub sha256: String,
}

/// Reserved for signed manifests (Sigstore/cosign). Recorded in revisions, not yet verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSignature {
    /// Signature format.
    pub format: SignatureFormat,
    /// Where the signature or bundle is stored (same schemes as `spec.source.uri`).
    #[schemars(length(min = 1, max = 2048))]
    pub uri: String,
}

/// Supported signature formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureFormat {
    /// A Sigstore bundle (cosign `--bundle`).
    SigstoreBundle,
}

/// Observed state of a Model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Digest of the file manifest (`sha256:` + hex): what revisions record as the model's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Total size of all files in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
