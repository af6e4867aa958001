//! `ModelDeployment`: a Model served by inference workers on a class of hardware.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use taimatsu_core::{EngineKind, KvCacheDtype, Quantization};

use super::common::{ObjectRef, SecretKeyRef};

/// A Model served behind an OpenAI-compatible endpoint by inference-worker pods.
/// Each change to what is served (model, quantization, engine, placement) becomes
/// a new immutable revision that is rolled out progressively and can be rolled back.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
// kube-derive takes one `printcolumn(...)` per column; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "taimatsu.dev",
    version = "v1alpha1",
    kind = "ModelDeployment",
    namespaced,
    status = "ModelDeploymentStatus",
    shortname = "mdep",
    category = "taimatsu",
    derive = "PartialEq",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.modelRef.name"),
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.engine.type"),
    printcolumn(name = "Quantization", type_ = "string", json_path = ".spec.quantization"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.servingRevision"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 40").message("metadata.name must be at most 40 characters: generated Deployment and pod names append a revision suffix"),
    scale(spec_replicas_path = ".spec.replicas", status_replicas_path = ".status.replicas")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = quantization_matches_engine())]
#[x_kube(validation = Rule::new("self.engine.type != 'builtin' || self.kvCacheDtype == 'auto'").message("spec.kvCacheDtype: the builtin engine keeps its KV cache in f16; remove kvCacheDtype or set engine.type: vllm").field_path(".kvCacheDtype"))]
#[x_kube(validation = Rule::new("!has(self.rollout) || !has(self.rollout.analysis) || !has(self.rollout.analysis.smokePrompts) || size(self.rollout.analysis.smokePrompts) == 0 || !has(self.access) || !has(self.access.apiKeySecretRef)").message("spec.rollout.analysis.smokePrompts cannot be sent when spec.access.apiKeySecretRef requires API keys (the operator holds none): remove the smoke prompts (metric thresholds still apply) or the key requirement").field_path(".rollout.analysis.smokePrompts"))]
#[x_kube(validation = Rule::new("self.engine.type != 'vllm' || (has(self.placement) && has(self.placement.acceleratorProfileRef))").message("spec.placement.acceleratorProfileRef is required for engine vllm: name the AcceleratorProfile (kubectl get acceleratorprofiles) whose GPUs serve this model").field_path(".placement"))]
#[x_kube(validation = Rule::new("self.engine.type != 'builtin' || !has(self.placement) || (!has(self.placement.acceleratorProfileRef) && !has(self.placement.gpusPerReplica) && self.placement.tensorParallel == 1 && self.placement.pipelineParallel == 1)").message("spec.placement: the builtin engine runs on CPU; remove acceleratorProfileRef, gpusPerReplica, tensorParallel and pipelineParallel, or set engine.type: vllm").field_path(".placement"))]
pub struct ModelDeploymentSpec {
    /// The Model (in this namespace) to serve.
    pub model_ref: ObjectRef,

    /// How weights are quantized when served. For engine `vllm`: `none` (the
    /// checkpoint's dtype), `bf16`, `fp16`, `fp8`, `awq`, `gptq`, `int8`, `int4`.
    /// For engine `builtin`: the GGUF type of the file, `q4_0`, `q4_1`, `q4_k_m`,
    /// `q5_k_m`, `q6_k`, `q8_0` or `f16`.
    pub quantization: Quantization,

    /// Data type of vLLM's KV cache: `auto` (the model's dtype), `fp8`, `fp8_e4m3`
    /// or `fp8_e5m2` (halves KV memory). The builtin engine accepts `auto` only.
    #[serde(default)]
    pub kv_cache_dtype: KvCacheDtype,

    /// The inference engine and its settings.
    #[serde(default)]
    pub engine: EngineSpec,

    /// Where replicas run: accelerator class, GPUs per replica and parallelism.
    /// Required for engine `vllm`; omit for the builtin CPU engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// Number of serving replicas. Changing only this does not create a revision.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// How a new revision replaces the serving one.
    #[serde(default)]
    pub rollout: RolloutSpec,

    /// Automatic rollback and revision history.
    #[serde(default)]
    pub rollback: RollbackSpec,

    /// Per-request audit records written by the workers.
    #[serde(default)]
    pub audit: AuditSpec,

    /// Who may call the endpoint and what the workers may reach.
    #[serde(default)]
    pub access: AccessSpec,
}

fn default_replicas() -> i32 {
    1
}

/// CEL rule: the quantization must be one the chosen engine serves. Generated from
/// the core quantization table so the schema and the operator cannot disagree.
fn quantization_matches_engine() -> kube::core::Rule {
    let list = |engine| {
        let names: Vec<String> = Quantization::names_for(engine).iter().map(|n| format!("'{n}'")).collect();
        format!("[{}]", names.join(", "))
    };
    let (vllm, builtin) = (list(EngineKind::Vllm), list(EngineKind::Builtin));
    kube::core::Rule::new(format!(
        "self.engine.type == 'builtin' ? self.quantization in {builtin} : self.quantization in {vllm}"
    ))
    .message(kube::core::Message::Expression(format!(
        "'spec.quantization ' + self.quantization + ' is not served by engine ' + self.engine.type + ': use one of ' + (self.engine.type == 'builtin' ? \"{}\" : \"{}\")",
        Quantization::names_for(EngineKind::Builtin).join(", "),
        Quantization::names_for(EngineKind::Vllm).join(", "),
    )))
    .field_path(".quantization")
}

/// The inference engine run inside each worker pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'vllm' || !has(self.gpuMemoryUtilization)").message("spec.engine.gpuMemoryUtilization applies to vLLM only: remove it or set engine.type: vllm").field_path(".gpuMemoryUtilization"))]
#[x_kube(validation = Rule::new("self.type == 'builtin' || !has(self.threads)").message("spec.engine.threads applies to the builtin engine only: remove it or set engine.type: builtin").field_path(".threads"))]
pub struct EngineSpec {
    /// `vllm` (GPUs; the worker supervises vLLM's server) or `builtin` (the worker's
    /// own CPU engine for small GGUF models).
    #[serde(rename = "type", default)]
    pub kind: EngineKind,

    /// Worker image override, e.g. from an in-house registry. Defaults to the
    /// operator's configured image for this engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Extra arguments appended to the engine's command line (vLLM flags such as
    /// `--enable-prefix-caching`). Part of the revision: changing them rolls out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 1024)))]
    pub args: Vec<String>,

    /// Maximum context length to serve, in tokens; defaults to the Model's
    /// `contextLength`. Lower values need less KV-cache memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 128, max = 10_485_760))]
    pub max_model_len: Option<i32>,

    /// Fraction of each GPU's memory vLLM may use (0.05 to 0.99; vLLM's default 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.05, max = 0.99))]
    pub gpu_memory_utilization: Option<f64>,

    /// CPU threads for the builtin engine; defaults to the pod's CPU limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub threads: Option<i32>,
}

/// Where replicas run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.gpusPerReplica) || self.gpusPerReplica == self.tensorParallel * self.pipelineParallel").message("spec.placement.gpusPerReplica must equal tensorParallel × pipelineParallel: make them equal, or omit gpusPerReplica to use the product").field_path(".gpusPerReplica"))]
pub struct Placement {
    /// The AcceleratorProfile (cluster-scoped) whose GPUs serve this deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_profile_ref: Option<ObjectRef>,

    /// GPUs (or MIG slices) per replica. Must equal tensorParallel × pipelineParallel;
    /// defaults to that product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub gpus_per_replica: Option<i32>,

    /// Tensor-parallel degree: GPUs one layer is split across, within one node.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub tensor_parallel: i32,

    /// Pipeline-parallel degree: groups of layers on successive GPUs.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub pipeline_parallel: i32,

    /// Extra node labels to require, merged with the profile's nodeSelector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Extra tolerations, merged with the profile's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,

    /// Extra affinity rules. Replicas are already spread across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

impl Placement {
    /// GPUs (or MIG slices) one replica requests: `gpusPerReplica`, which CEL keeps
    /// equal to tensorParallel × pipelineParallel, or that product when omitted.
    pub fn gpus(&self) -> i32 {
        self.gpus_per_replica.unwrap_or(self.tensor_parallel * self.pipeline_parallel)
    }
}

fn one() -> i32 {
    1
}

/// How a new revision replaces the serving one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxSurge > 0 || self.maxUnavailable > 0").message("spec.rollout: maxSurge and maxUnavailable cannot both be 0, or no pod could ever be replaced; on GPU-scarce clusters set maxSurge: 0 and maxUnavailable: 1"))]
#[x_kube(validation = Rule::new("self.strategy != 'Recreate' || self.maxSurge == 0").message("spec.rollout.maxSurge must be 0 with strategy Recreate, which stops the old revision first").field_path(".maxSurge"))]
pub struct RolloutSpec {
    /// `RollingUpdate` replaces pods gradually within maxSurge/maxUnavailable;
    /// `Recreate` stops the serving revision before starting the new one.
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// Extra pods allowed above `replicas` during a rollout. Set 0 when the cluster
    /// has no spare GPUs: pods are then replaced one at a time without deadlock.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_surge: i32,

    /// Pods that may be unavailable during a rollout.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub max_unavailable: i32,

    /// Seconds a rollout may take before it counts as failed (model downloads and
    /// loads are slow: the default is 30 minutes).
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 30, max = 86_400))]
    pub progress_deadline_seconds: i32,

    /// Checks a new revision must pass, once all its pods are available, before its
    /// rollout counts as successful: smoke prompts, then its error rate and p95 latency
    /// over a window. A failed analysis rolls back like any failed rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            strategy: RolloutStrategy::default(),
            max_surge: 1,
            max_unavailable: 0,
            progress_deadline_seconds: default_progress_deadline(),
            analysis: None,
        }
    }
}

fn default_progress_deadline() -> i32 {
    1800
}

/// Rollout strategies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RolloutStrategy {
    #[default]
    RollingUpdate,
    Recreate,
}

/// Checks on a new revision's own metrics before its rollout succeeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Seconds the new revision's metrics are observed once it is Ready.
    #[serde(default = "default_analysis_window")]
    #[schemars(range(min = 10, max = 86_400))]
    pub window_seconds: i32,

    /// Largest acceptable share of 5xx responses over the window, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_error_rate_percent: Option<i32>,

    /// Largest acceptable 95th-percentile request latency over the window, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub max_p95_latency_ms: Option<i32>,

    /// Prompts sent to the new revision; each answer must be non-empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 4096)))]
    pub smoke_prompts: Vec<String>,
}

fn default_analysis_window() -> i32 {
    300
}

/// Automatic rollback and revision history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackSpec {
    /// Return serving to the last stable revision when a rollout fails.
    #[serde(default = "yes")]
    pub automatic: bool,

    /// Superseded revisions kept; the serving and last stable ones are never pruned.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 1000))]
    pub revision_history_limit: i32,

    /// Declarative rollback: serve this recorded revision (`kubectl taimatsu history NAME`
    /// lists them) instead of what the rest of the spec describes. Set it in Git or with
    /// `kubectl taimatsu rollback`, say why in the `taimatsu.dev/change-cause` annotation,
    /// and remove it to serve the spec again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub to_revision: Option<i64>,
}

impl Default for RollbackSpec {
    fn default() -> Self {
        Self { automatic: true, revision_history_limit: default_history_limit(), to_revision: None }
    }
}

/// Annotation saying why a ModelDeployment was changed; recorded with the revision and
/// in the audit trail.
pub const CHANGE_CAUSE_ANNOTATION: &str = "taimatsu.dev/change-cause";

fn yes() -> bool {
    true
}

fn default_history_limit() -> i32 {
    10
}

/// Per-request audit records written by the workers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.level == 'full' || !has(self.redactPatterns)").message("spec.audit.redactPatterns only applies with level full, where prompts and answers are recorded; remove it or set level: full").field_path(".redactPatterns"))]
pub struct AuditSpec {
    /// `none`, `metadata` (caller, model, digest, token counts, latency, status and
    /// SHA-256 of prompt and answer), or `full` (also the text, after redaction).
    #[serde(default)]
    pub level: AuditLevel,

    /// Regular expressions whose matches are replaced by `[REDACTED]` in recorded
    /// text (level `full` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 512)))]
    pub redact_patterns: Vec<String>,
}

/// How much of each request is recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuditLevel {
    None,
    #[default]
    Metadata,
    Full,
}

/// Who may call the endpoint and what the workers may reach.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessSpec {
    /// Secret key holding API keys, one per line as `<key-id>:<key>`. Requests
    /// must then carry `Authorization: Bearer <key>`. Open when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,

    /// Who may reach the workers' API port.
    #[serde(default)]
    pub ingress: IngressSpec,

    /// Egress from worker pods.
    #[serde(default)]
    pub egress: EgressSpec,
}

/// Ingress to worker pods. The operator (rollout analysis) and the namespaces the platform
/// team configures (an ingress controller's, a monitoring one's) are always let in besides.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Namespaces whose pods may call the API port (8000). Empty (the default): only this
    /// ModelDeployment's own namespace. The metrics port (9090) is never opened here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 63)))]
    #[x_kube(validation = Rule::new("self.all(n, n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))").message("spec.access.ingress.fromNamespaces: every entry must be a namespace name such as team-a"))]
    pub from_namespaces: Vec<String>,
}

/// Egress from worker pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressSpec {
    /// `Restricted` (default) allows only DNS and the model source; `Unrestricted`
    /// creates no egress NetworkPolicy (an explicit opt-out).
    #[serde(default)]
    pub mode: EgressMode,

    /// Address ranges of the model source or mirror that workers may reach when
    /// restricted, e.g. `10.20.0.0/16`, on the source's port only. Each must lie inside
    /// the ranges the operator allows (its `--egress-allowed-cidrs`); /0 is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("spec.access.egress.allowedCidrs: every entry must be a CIDR such as 10.20.0.0/16"))]
    #[x_kube(validation = Rule::new("self.all(c, !isCIDR(c) || cidr(c).prefixLength() != 0)").message("spec.access.egress.allowedCidrs: a /0 range opens every address: name the model mirror's range, e.g. 10.20.0.0/16 (the operator also refuses ranges outside its --egress-allowed-cidrs)"))]
    pub allowed_cidrs: Vec<String>,
}

/// Egress policy modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum EgressMode {
    #[default]
    Restricted,
    Unrestricted,
}

/// Observed state of a ModelDeployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Revision the spec asks for (`spec.rollback.toRevision` when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_revision: Option<i64>,
    /// Last stable revision: the one serving traffic, alone or beside a revision being
    /// rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_revision: Option<i64>,
    /// The desired revision, when its rollout failed: it is not retried until the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<i64>,
    /// Manifest digest of the model the serving revision serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_model_digest: Option<String>,
    /// Worker pods of all revisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Worker pods that are Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// In-cluster URL of the OpenAI-compatible endpoint, e.g. `http://qwen.ml.svc:8000/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Standard conditions: Ready, Progressing, Degraded, and RolledBack when serving was
    /// returned to the last stable revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
