//! The ModelDeployment controller: dereference → validate → build → apply → status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use taimatsu_crds::v1alpha1::{AcceleratorProfile, Model, ModelDeployment, ModelDeploymentStatus};
use tracing::{Instrument, info, warn};

use crate::audit::ControlPlaneAudit;
use crate::build::{self, Settings, labels};
use crate::error::Error;
use crate::metrics::{ErrorLabels, Metrics};
use crate::status::{self, Observed, Reason};
use crate::webhook::Requesters;

/// The one field manager for everything the operator writes.
pub const FIELD_MANAGER: &str = "taimatsu-operator";

/// A ModelDeployment as watched: one that does not decode (stored under an older
/// schema, say) arrives as an error instead of breaking the watch for every object.
type Guarded = DeserializeGuard<ModelDeployment>;

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub audit: Arc<ControlPlaneAudit>,
    /// Who asked for each generation, from this replica's admission webhook.
    pub requesters: Requesters,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<Guarded>, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Metrics,
        identity: &str,
        audit: Arc<ControlPlaneAudit>,
        requesters: Requesters,
    ) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(identity.to_owned()) };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            audit,
            requesters,
            failures: Mutex::default(),
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let mds: Api<Guarded> = Api::all(client.clone());
    let wc = watcher::Config::default().any_semantic();
    let owned = watcher::Config::default().labels(labels::DEPLOYMENT_LABEL);
    let controller = Controller::new(mds, wc.clone());
    let store = controller.store();
    let (by_model, by_profile) = (store.clone(), store.clone());
    let gauge_store = store.clone();
    controller
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<NetworkPolicy>::all(client.clone()), owned.clone())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), owned.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), owned.clone())
        .watches(Api::<Pod>::all(client.clone()), owned, |pod| {
            let name = pod.labels().get(labels::DEPLOYMENT_LABEL).cloned();
            name.map(|n| ObjectRef::new(&n).within(&pod.namespace().unwrap_or_default()))
        })
        .watches(Api::<Model>::all(client.clone()), wc.clone(), move |model| {
            users(&by_model, |md| md.namespace() == model.namespace() && md.spec.model_ref.name == model.name_any())
        })
        .watches(Api::<AcceleratorProfile>::all(client.clone()), wc, move |profile| {
            users(&by_profile, |md| profile_name(md).as_deref() == Some(profile.name_any().as_str()))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            ctx.metrics.managed_deployments.set(gauge_store.state().len() as i64);
            if let Err(e) = result {
                warn!(error = %e, "reconcile stream error");
            }
            futures::future::ready(())
        })
        .await;
}

fn users(store: &Store<Guarded>, matches: impl Fn(&ModelDeployment) -> bool) -> Vec<ObjectRef<Guarded>> {
    store.state().iter().filter(|g| g.0.as_ref().is_ok_and(&matches)).map(|g| ObjectRef::from_obj(g.as_ref())).collect()
}

fn profile_name(md: &ModelDeployment) -> Option<String> {
    md.spec.placement.as_ref()?.accelerator_profile_ref.as_ref().map(|r| r.name.clone())
}

fn error_policy(md: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.get_or_create(&ErrorLabels { category: error.category() }).inc();
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let count = failures.entry(ObjectRef::from_obj(md.as_ref())).or_insert(0);
    *count = count.saturating_add(1);
    // 1s, 2s, 4s … capped at 5 minutes.
    let delay = Duration::from_secs(1u64 << (*count - 1).min(8)).min(Duration::from_secs(300));
    warn!(name = %md.name_any(), namespace = ?md.namespace(), category = error.category(), error = %error, ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile(md: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    // One trace span per reconcile (exported when OTLP is configured); the object's name is a
    // span attribute, never a metric label.
    let span = tracing::info_span!("reconcile", otel.name = "reconcile ModelDeployment", name = %md.name_any(),
        namespace = md.namespace().unwrap_or_default(), otel.status_code = tracing::field::Empty);
    let result = reconcile_traced(&md, &ctx).instrument(span.clone()).await;
    if let Err(e) = &result {
        span.record("otel.status_code", "ERROR");
        span.in_scope(|| tracing::debug!(category = e.category(), "reconcile error"));
    }
    result
}

async fn reconcile_traced(md: &Arc<Guarded>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = match &md.0 {
        Ok(valid) => reconcile_inner(valid, ctx).await,
        Err(invalid) => report_invalid(invalid, ctx).await,
    };
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&ObjectRef::from_obj(md.as_ref()));
    }
    result
}

async fn reconcile_inner(md: &ModelDeployment, ctx: &Context) -> Result<Action, Error> {
    crate::rollout::reconcile(md, ctx).await
}

/// An object that does not decode: say so in its status and an Event, then wait for
/// it to change. Its children, if any, are left as they are.
async fn report_invalid(invalid: &InvalidObject, ctx: &Context) -> Result<Action, Error> {
    let meta = &invalid.metadata;
    let (ns, name) = (meta.namespace.clone().ok_or(Error::NoNamespace)?, meta.name.clone().unwrap_or_default());
    let message =
        format!("the object does not match the ModelDeployment schema: {}; fix and re-apply it", invalid.error);
    warn!(%name, namespace = %ns, %message, "invalid ModelDeployment");
    let observed = status::blocked(Reason::InvalidSpec, &message);
    let conditions = status::to_conditions(&observed, &[], meta.generation, Time(k8s_openapi::jiff::Timestamp::now()));
    let patch = json!({ "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment",
                        "status": { "observedGeneration": meta.generation, "conditions": conditions } });
    // Untyped: the typed API would fail to decode the object the server returns.
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &ApiResource::erase::<ModelDeployment>(&()));
    api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("taimatsu.dev/v1alpha1".into()),
        kind: Some("ModelDeployment".into()),
        name: Some(name),
        namespace: Some(ns),
        uid: meta.uid.clone(),
        ..Default::default()
    };
    publish_event(ctx, EventType::Warning, Reason::InvalidSpec, &message, &reference).await;
    Ok(Action::await_change())
}

/// Reports why nothing is rolled out, and changes nothing else.
pub(crate) async fn block(
    md: &ModelDeployment,
    ctx: &Context,
    blocked: crate::validate::Blocked,
) -> Result<Action, Error> {
    info!(name = %md.name_any(), reason = blocked.reason.as_str(), message = %blocked.message, "not rolled out");
    write_status(md, ctx, &status::blocked(blocked.reason, &blocked.message), json!({})).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

pub(crate) async fn write_status(
    md: &ModelDeployment,
    ctx: &Context,
    observed: &[Observed],
    extra: serde_json::Value,
) -> Result<(), Error> {
    let old: ModelDeploymentStatus = md.status.clone().unwrap_or_default();
    let conditions = status::to_conditions(
        observed,
        &old.conditions,
        md.metadata.generation,
        Time(k8s_openapi::jiff::Timestamp::now()),
    );
    publish_transitions(md, ctx, &old, observed).await;
    let mut status = json!({ "observedGeneration": md.metadata.generation, "conditions": conditions });
    if let (Some(obj), Some(more)) = (status.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    let patch = json!({ "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "status": status });
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &md.namespace().unwrap_or_default());
    api.patch_status(&md.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
    Ok(())
}

/// One Event per condition whose reason changed.
async fn publish_transitions(md: &ModelDeployment, ctx: &Context, old: &ModelDeploymentStatus, observed: &[Observed]) {
    for o in observed {
        let before = old.conditions.iter().find(|c| c.type_ == o.type_).map(|c| c.reason.as_str());
        if before == Some(o.reason.as_str()) || (o.reason == Reason::AsExpected && before.is_none()) {
            continue;
        }
        let bad = matches!(o.type_, "Degraded" | "RolledBack") && o.status
            || matches!(o.type_, "Ready") && !o.status && o.reason != Reason::RolloutInProgress;
        let type_ = if bad { EventType::Warning } else { EventType::Normal };
        let note = format!("{}: {}", o.type_, o.message);
        publish_event(ctx, type_, o.reason, &note, &md.object_ref(&())).await;
    }
}

/// Publishes one Event; a failure to publish is logged, never fatal to the reconcile.
pub(crate) async fn publish_event(
    ctx: &Context,
    type_: EventType,
    reason: Reason,
    note: &str,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
) {
    let event = Event {
        type_,
        reason: reason.as_str().into(),
        // The Events API limits the note to 1 kB.
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        warn!(error = %e, "could not publish event");
    }
}

/// Server-side applies every child. Destructured without `..`: a new child kind
/// must be handled here.
pub(crate) async fn apply(
    client: &Client,
    ns: &str,
    name: &str,
    children: build::Children,
) -> Result<Deployment, Error> {
    let build::Children { service_account, manifest, workload, service, egress_policy, disruption_budget } = children;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    ssa(&Api::<ServiceAccount>::namespaced(client.clone(), ns), &service_account, &params).await?;
    ssa(&Api::<ConfigMap>::namespaced(client.clone(), ns), &manifest, &params).await?;
    let applied = ssa(&Api::<Deployment>::namespaced(client.clone(), ns), &workload, &params).await?;
    ssa(&Api::<Service>::namespaced(client.clone(), ns), &service, &params).await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    match egress_policy {
        Some(policy) => {
            ssa(&policies, &policy, &params).await?;
        }
        None => {
            // Explicit opt-out: remove a policy an earlier spec asked for.
            if policies.get_opt(&format!("{name}-egress")).await?.is_some() {
                policies.delete(&format!("{name}-egress"), &DeleteParams::default()).await?;
            }
        }
    }
    ssa(&Api::<PodDisruptionBudget>::namespaced(client.clone(), ns), &disruption_budget, &params).await?;
    Ok(applied)
}

pub(crate) async fn ssa<K>(api: &Api<K>, obj: &K, params: &PatchParams) -> Result<K, Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.patch(&obj.name_any(), params, &Patch::Apply(obj)).await?)
}
