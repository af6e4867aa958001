//! Checks that need other objects, which CEL cannot see. Pure: the caller fetches.

use kube::ResourceExt;
use taimatsu_core::memory_fit::{self, FitInput};
use taimatsu_core::{EgressRanges, EngineKind, HfSource, ManifestEntry, OciSource, ParameterCount, manifest_digest};
use taimatsu_crds::v1alpha1::{AcceleratorProfile, Model, ModelDeployment};

use crate::status::Reason;

/// Namespace label that allows Models without a file manifest.
pub const ALLOW_UNPINNED_LABEL: &str = "taimatsu.dev/allow-unpinned-models";

/// Why a ModelDeployment cannot be rolled out; nothing is changed while blocked.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocked {
    pub reason: Reason,
    pub message: String,
}

fn blocked(reason: Reason, message: impl Into<String>) -> Blocked {
    Blocked { reason, message: message.into() }
}

/// A deployment whose references check out.
#[derive(Debug)]
pub struct Validated<'m> {
    pub model: &'m Model,
    /// Manifest digest of the model (`sha256:…`, or `unpinned`).
    pub digest: String,
}

/// Why a deployment whose Model does not exist cannot roll out.
pub fn model_not_found(md: &ModelDeployment) -> Blocked {
    blocked(
        Reason::ModelNotFound,
        format!(
            "Model {:?} does not exist in this namespace: create it or fix spec.modelRef.name",
            md.spec.model_ref.name
        ),
    )
}

/// Checks what the spec asks of the operator's policy, whatever revision it targets (a
/// pinned rollback too: the NetworkPolicies are built from the current spec): every
/// `allowedCidrs` entry inside the ranges the operator allows. The admission webhook makes
/// the same check; this one holds when the webhook is off or fails open.
pub fn check_policy(md: &ModelDeployment, egress_allowed: &EgressRanges) -> Result<(), Blocked> {
    egress_allowed
        .check(&md.spec.access.egress.allowed_cidrs)
        .map_err(|e| blocked(Reason::PolicyViolation, format!("{e}; nothing is rolled out until the spec is fixed")))
}

/// An `hf://` source is fetched from a Hugging Face Hub mirror (the Model's
/// `spec.source.hfMirror`, else the operator's `--hf-mirror`), never from huggingface.co.
/// Without one the fetch step could only fail, once per pod: say so before any pod.
/// Likewise an `oci://` source must have the shape the fetch step pulls
/// ([`OciSource::parse`]: registry, repository of the distribution spec's grammar, a
/// sha256 digest, no tag), which the CRD's CEL rule checks only roughly.
pub fn check_source(model: &Model, operator_hf_mirror: Option<&str>) -> Result<(), Blocked> {
    let source = &model.spec.source;
    if source.uri.starts_with(taimatsu_core::oci::SCHEME)
        && let Err(e) = OciSource::parse(&source.uri)
    {
        return Err(blocked(
            Reason::IncompatibleModel,
            format!("Model {:?}: {e}; nothing is rolled out until spec.source.uri is fixed", model.name_any()),
        ));
    }
    if HfSource::parse(&source.uri).is_err() || source.hf_mirror.is_some() || operator_hf_mirror.is_some() {
        return Ok(());
    }
    Err(blocked(
        Reason::IncompatibleModel,
        format!(
            "Model {:?} is fetched from {} and no Hugging Face Hub mirror is configured (the fetch step never contacts huggingface.co): set spec.source.hfMirror on the Model, or start the operator with --hf-mirror (the chart's hfMirror)",
            model.name_any(),
            source.uri
        ),
    ))
}

/// Validates the references of `md`.
pub fn check<'m>(
    md: &ModelDeployment,
    model: Option<&'m Model>,
    profile: Option<&AcceleratorProfile>,
    namespace_allows_unpinned: bool,
) -> Result<Validated<'m>, Blocked> {
    let spec = &md.spec;
    let model = model.ok_or_else(|| model_not_found(md))?;
    if !model.spec.format.served_by(spec.engine.kind) {
        return Err(blocked(
            Reason::IncompatibleModel,
            format!(
                "Model {:?} is {} but engine {} does not serve that format: use engine builtin for gguf models",
                spec.model_ref.name, model.spec.format, spec.engine.kind
            ),
        ));
    }
    if model.spec.files.is_empty() && !namespace_allows_unpinned {
        return Err(blocked(
            Reason::UnpinnedModel,
            format!(
                "Model {:?} has no file manifest and this namespace does not allow unpinned models: add spec.files (hack/model-manifest.sh), or label the namespace {ALLOW_UNPINNED_LABEL}=true",
                spec.model_ref.name
            ),
        ));
    }
    // A file manifest pins what is served, but an hf:// branch or tag is still a moving name
    // for it: the files would stop matching once it moves, and nobody could tell which commit
    // a revision served. Where pinning is required, only a commit id is accepted.
    if let Some(hf) = unpinned_hf_revision(&model.spec.source.uri)
        && !namespace_allows_unpinned
    {
        return Err(blocked(
            Reason::UnpinnedModel,
            format!(
                "Model {:?} names revision {:?} of {}, a branch or tag that can move, and this namespace requires models pinned to a commit: set spec.source.uri to hf://{}@<40-hex commit id> (kubectl taimatsu model manifest prints it), or label the namespace {ALLOW_UNPINNED_LABEL}=true",
                spec.model_ref.name,
                hf.revision,
                hf.repo_id(),
                hf.repo_id()
            ),
        ));
    }
    let entries: Vec<ManifestEntry> = model
        .spec
        .files
        .iter()
        .map(|f| ManifestEntry { path: f.path.clone(), size: f.size.max(0) as u64, sha256: f.sha256.clone() })
        .collect();
    let digest = if entries.is_empty() { "unpinned".to_owned() } else { manifest_digest(&entries) };

    if spec.engine.kind == EngineKind::Vllm {
        let name = spec.placement.as_ref().and_then(|p| p.accelerator_profile_ref.as_ref()).map(|r| r.name.clone());
        let profile = profile.ok_or_else(|| {
            blocked(
                Reason::ProfileNotFound,
                format!("AcceleratorProfile {:?} does not exist: create it (cluster admins) or fix spec.placement.acceleratorProfileRef", name.unwrap_or_default()),
            )
        })?;
        check_fit(md, model, profile)?;
    }
    Ok(Validated { model, digest })
}

/// The `hf://` source `uri` names, when its revision is not a commit id.
pub fn unpinned_hf_revision(uri: &str) -> Option<HfSource> {
    HfSource::parse(uri).ok().filter(|hf| !hf.is_pinned())
}

fn check_fit(md: &ModelDeployment, model: &Model, profile: &AcceleratorProfile) -> Result<(), Blocked> {
    let spec = &md.spec;
    let placement = spec.placement.as_ref();
    let gpus = placement.map_or(1, |p| p.gpus());
    let parameters: ParameterCount = model.spec.parameters.parse().map_err(|e| {
        blocked(Reason::IncompatibleModel, format!("Model {:?}: spec.parameters: {e}", spec.model_ref.name))
    })?;
    let input = FitInput {
        parameters,
        quantization: spec.quantization,
        kv_cache_dtype: spec.kv_cache_dtype,
        max_model_len: spec.engine.max_model_len.unwrap_or(model.spec.context_length).max(1) as u32,
        gpu_memory_gib: profile.spec.gpu_memory_gib.max(1) as u32,
        gpus: gpus.max(1) as u32,
        gpus_per_node: profile.spec.gpus_per_node.max(1) as u32,
        gpu_memory_utilization: spec
            .engine
            .gpu_memory_utilization
            .unwrap_or(memory_fit::DEFAULT_GPU_MEMORY_UTILIZATION),
    };
    memory_fit::check(&input).map(|_| ()).map_err(|message| blocked(Reason::DoesNotFit, message))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn md(engine: &str, quantization: &str, placement: serde_json::Value) -> ModelDeployment {
        serde_json::from_value(json!({
            "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": "d", "namespace": "ns" },
            "spec": { "modelRef": { "name": "m" }, "quantization": quantization, "engine": { "type": engine }, "placement": placement }
        }))
        .expect("deployment")
    }

    fn model(format: &str, parameters: &str, pinned: bool) -> Model {
        let files = if pinned { json!([{ "path": "w", "size": 1, "sha256": "b".repeat(64) }]) } else { json!([]) };
        serde_json::from_value(json!({
            "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": "m" },
            "spec": { "source": { "uri": "https://x/" }, "format": format, "files": files, "allowUnpinned": !pinned,
                      "architecture": "llama", "parameters": parameters, "contextLength": 8192, "license": "MIT" }
        }))
        .expect("model")
    }

    fn profile(memory: i32) -> AcceleratorProfile {
        serde_json::from_value(json!({
            "apiVersion": "taimatsu.dev/v1alpha1", "kind": "AcceleratorProfile", "metadata": { "name": "p" },
            "spec": { "resourceName": "nvidia.com/gpu", "gpuMemoryGiB": memory, "gpusPerNode": 8 }
        }))
        .expect("profile")
    }

    fn reason(r: Result<Validated<'_>, Blocked>) -> Reason {
        r.expect_err("blocked").reason
    }

    #[test]
    fn each_missing_or_mismatched_reference_has_its_reason() {
        let gpu = md("vllm", "bf16", json!({ "acceleratorProfileRef": { "name": "p" } }));
        let (st, gguf, big) =
            (model("safetensors", "7B", true), model("gguf", "7B", true), model("safetensors", "72B", true));
        assert_eq!(reason(check(&gpu, None, Some(&profile(80)), false)), Reason::ModelNotFound);
        assert_eq!(reason(check(&gpu, Some(&st), None, false)), Reason::ProfileNotFound);
        assert_eq!(reason(check(&gpu, Some(&gguf), Some(&profile(80)), false)), Reason::IncompatibleModel);
        assert_eq!(reason(check(&gpu, Some(&big), Some(&profile(80)), false)), Reason::DoesNotFit);
        let ok = check(&gpu, Some(&st), Some(&profile(80)), false).expect("fits");
        assert!(ok.digest.starts_with("sha256:"));
    }

    #[test]
    fn hf_revisions_must_be_commits_unless_the_namespace_allows_unpinned() {
        let cpu = md("builtin", "q4_0", json!(null));
        let with_source = |uri: &str| {
            let mut m = model("gguf", "135M", true);
            m.spec.source.uri = uri.into();
            m
        };
        for branch in ["hf://org/m@main", "hf://org/m@v1.0", "hf://org/m@refs/pr/1"] {
            let m = with_source(branch);
            let err = check(&cpu, Some(&m), None, false).expect_err(branch);
            assert_eq!(err.reason, Reason::UnpinnedModel, "{branch}");
            assert!(err.message.contains("hf://org/m@<40-hex commit id>"), "{}", err.message);
            assert!(check(&cpu, Some(&m), None, true).is_ok(), "{branch}: allowed where unpinned models are");
        }
        let pinned = with_source(&format!("hf://org/m@{}", "0a".repeat(20)));
        assert!(check(&cpu, Some(&pinned), None, false).is_ok());
    }

    #[test]
    fn an_hf_source_needs_a_mirror_from_the_model_or_the_operator() {
        let mut m = model("gguf", "135M", true);
        m.metadata.name = Some("smol".into());
        m.spec.source.uri = format!("hf://org/m@{}", "0a".repeat(20));
        let err = check_source(&m, None).expect_err("no mirror anywhere");
        assert_eq!(err.reason, Reason::IncompatibleModel);
        assert!(err.message.starts_with("Model \"smol\" is fetched from hf://org/m@"), "{}", err.message);
        assert!(err.message.contains("spec.source.hfMirror") && err.message.contains("--hf-mirror"), "{}", err.message);
        assert!(check_source(&m, Some("https://hub.internal")).is_ok());
        m.spec.source.hf_mirror = Some("https://hub.internal".into());
        assert!(check_source(&m, None).is_ok());
        m.spec.source.uri = "https://mirror.internal/m/".into();
        m.spec.source.hf_mirror = None;
        assert!(check_source(&m, None).is_ok(), "other sources need no Hub mirror");
    }

    #[test]
    fn an_oci_source_must_have_the_shape_the_fetch_step_pulls() {
        let mut m = model("gguf", "135M", true);
        m.metadata.name = Some("smol".into());
        let digest = format!("sha256:{}", "0a".repeat(32));
        m.spec.source.uri = format!("oci://registry.internal:5000/models/smol@{digest}");
        assert!(check_source(&m, None).is_ok());
        for (uri, why) in [
            (format!("oci://registry.internal/Models/Smol@{digest}"), "the repository is lower-case"),
            (format!("oci://registry.internal/models/smol:v1@{digest}"), "names a tag as well as a digest"),
            (format!("oci://registry.internal/models/smol@sha256:{}", "0A".repeat(32)), "64 lower-case hex"),
        ] {
            m.spec.source.uri = uri.clone();
            let err = check_source(&m, None).expect_err(&uri);
            assert_eq!(err.reason, Reason::IncompatibleModel, "{uri}");
            assert!(err.message.starts_with("Model \"smol\": "), "{}", err.message);
            assert!(err.message.contains(why), "{uri}: {}", err.message);
            assert!(err.message.contains("oci://<registry>[:port]/<repository>@sha256:"), "{}", err.message);
        }
    }

    #[test]
    fn allowed_cidrs_outside_the_operator_ranges_are_a_policy_violation() {
        let mut cpu = md("builtin", "q4_0", json!(null));
        let ranges = EgressRanges::parse_list("10.0.0.0/8").unwrap();
        assert_eq!(check_policy(&cpu, &ranges), Ok(()));
        cpu.spec.access.egress.allowed_cidrs = vec!["10.1.0.0/16".into(), "0.0.0.0/0".into()];
        let refused = check_policy(&cpu, &ranges).unwrap_err();
        assert_eq!(refused.reason, Reason::PolicyViolation);
        assert!(
            refused.message.starts_with("spec.access.egress.allowedCidrs[1]: 0.0.0.0/0 opens every address"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn unpinned_models_need_the_namespace_policy() {
        let cpu = md("builtin", "q4_0", json!(null));
        let unpinned = model("gguf", "135M", false);
        assert_eq!(reason(check(&cpu, Some(&unpinned), None, false)), Reason::UnpinnedModel);
        assert_eq!(check(&cpu, Some(&unpinned), None, true).expect("allowed").digest, "unpinned");
    }
}
