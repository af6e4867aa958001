//! The ModelDeployment controller: dereference → validate → build → apply → status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use taimatsu_core::AddressScope;
use taimatsu_crds::v1alpha1::{AcceleratorProfile, Model, ModelDeployment, ModelDeploymentStatus};
use tracing::{Instrument, info, warn};

use crate::apply::{Applier, Outcome};
use crate::audit::ControlPlaneAudit;
use crate::build::{self, Settings, labels};
use crate::cache::{self, Caches, Meta, Writers};
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
    /// What reconciles read, kept by the controller's watches.
    pub caches: Caches,
    /// Skips applies of children already as desired.
    pub applier: Arc<Applier>,
    /// The pod addresses rollout analysis may contact (`--analysis-pod-cidrs`).
    pub analysis_scope: AddressScope,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<Guarded>, u32>>,
    /// The status this replica last wrote per ModelDeployment (namespace, name), until the
    /// cache shows it.
    statuses: Mutex<HashMap<(String, String), serde_json::Value>>,
}

impl Context {
    /// The context, and the write side of its caches for `run` to fill.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Metrics,
        identity: &str,
        audit: Arc<ControlPlaneAudit>,
        requesters: Requesters,
        analysis_scope: AddressScope,
    ) -> (Self, Writers) {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(identity.to_owned()) };
        let (caches, writers) = Caches::new();
        let ctx = Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            audit,
            requesters,
            caches,
            applier: Arc::default(),
            analysis_scope,
            failures: Mutex::default(),
            statuses: Mutex::default(),
        };
        (ctx, writers)
    }
}

/// Reconciles in flight at once: enough to keep the API server busy and to fill the audit
/// trail's group commits, few enough to bound the memory a burst of changes takes (without
/// a bound, a thousand new ModelDeployments took the operator to 235 MB).
pub const CONCURRENCY: u16 = 32;

/// Runs the controller until `shutdown` resolves. Every watch both fills a cache and
/// triggers reconciles, so each kind is watched once.
pub async fn run(
    ctx: Arc<Context>,
    writers: Writers,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let wc = watcher::Config::default().any_semantic();
    let owned = watcher::Config::default().labels(labels::DEPLOYMENT_LABEL);
    // Every change of a ModelDeployment triggers, its status too: a rollout step may wait
    // for the next reconcile, and the operator's own status write is what brings it.
    let (store, mds_writer) = reflector::store();
    let mds = watcher(Api::<Guarded>::all(client.clone()), wc.clone())
        .default_backoff()
        .modify(|md| cache::trim_managed_fields(md.meta_mut()))
        .reflect(mds_writer)
        .applied_objects();
    let controller =
        Controller::for_stream(mds, store.clone()).with_config(ControllerConfig::default().concurrency(CONCURRENCY));
    let (by_model, by_profile) = (store.clone(), store.clone());
    let gauge_store = store.clone();
    let Writers { models, profiles, namespaces, deployments, pods, manifests, services, policies, budgets, accounts } =
        writers;
    // Children trigger when someone else changed them: the echo of the operator's own
    // apply does not, nor does a status update of a child whose status is never read.
    let a = ctx.applier.clone();
    let deployments = cache::full(
        Api::<Deployment>::all(client.clone()),
        owned.clone(),
        deployments,
        cache::trim_deployment,
        move |d| !a.is_echo::<Deployment>(d.meta(), false),
    );
    let manifests = owned_metadata::<ConfigMap>(&ctx, owned.clone(), manifests);
    let services = owned_metadata::<Service>(&ctx, owned.clone(), services);
    let policies = owned_metadata::<NetworkPolicy>(&ctx, owned.clone(), policies);
    let budgets = owned_metadata::<PodDisruptionBudget>(&ctx, owned.clone(), budgets);
    let accounts = owned_metadata::<ServiceAccount>(&ctx, owned.clone(), accounts);
    // Namespaces trigger nothing: a label change there takes effect at the next reconcile.
    let namespaces = cache::metadata::<Namespace>(client.clone(), watcher::Config::default(), namespaces, |_| false);
    let pods = cache::full(Api::<Pod>::all(client.clone()), owned, pods, cache::trim_pod, |_| true);
    controller
        .owns_stream(deployments)
        .owns_stream(manifests)
        .owns_stream(services)
        .owns_stream(policies)
        .owns_stream(budgets)
        .owns_stream(accounts)
        .watches_stream(pods, |pod| {
            let name = pod.labels().get(labels::DEPLOYMENT_LABEL).cloned();
            name.map(|n| ObjectRef::new(&n).within(&pod.namespace().unwrap_or_default()))
        })
        .watches_stream(namespaces, |_| None::<ObjectRef<Guarded>>)
        .watches_stream(
            cache::full(Api::<Model>::all(client.clone()), wc.clone(), models, cache::keep_all, |_| true),
            move |model| {
                users(&by_model, |md| md.namespace() == model.namespace() && md.spec.model_ref.name == model.name_any())
            },
        )
        .watches_stream(
            cache::full(Api::<AcceleratorProfile>::all(client.clone()), wc, profiles, cache::keep_all, |_| true),
            move |profile| users(&by_profile, |md| profile_name(md).as_deref() == Some(profile.name_any().as_str())),
        )
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

/// A watch of an owned kind whose content is never read back: metadata only, triggering
/// on any change but the operator's own apply and status updates.
fn owned_metadata<K>(
    ctx: &Context,
    config: watcher::Config,
    writer: Writer<Meta<K>>,
) -> impl futures::Stream<Item = watcher::Result<Meta<K>>> + use<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let applier = ctx.applier.clone();
    cache::metadata::<K>(ctx.client.clone(), config, writer, move |m| !applier.is_echo::<K>(&m.metadata, true))
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
    if let Err(cache) = ctx.caches.ready().await {
        warn!(cache, "reconcile postponed: a cache is not listed yet");
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
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
    // The same status again (an idle reconcile): nothing to write. "The same" as both the
    // cached object and this replica's last write: the cache can lag that write, and a
    // status equal to the stale copy may differ from what the API server now holds.
    let current = serde_json::to_value(&old).unwrap_or_default();
    let mut merged = current.clone();
    if let (Some(merged), Some(new)) = (merged.as_object_mut(), status.as_object()) {
        for (key, value) in new {
            match value {
                serde_json::Value::Null => merged.remove(key),
                v => merged.insert(key.clone(), v.clone()),
            };
        }
    }
    let key = (md.namespace().unwrap_or_default(), md.name_any());
    if merged == current {
        let mut statuses = ctx.statuses.lock().unwrap_or_else(|p| p.into_inner());
        match statuses.get(&key) {
            None => return Ok(()),
            // The cache shows this replica's last write: nothing left to remember (so the
            // map holds only writes the cache has not caught up with, not every deployment
            // ever seen).
            Some(last) if *last == merged => {
                statuses.remove(&key);
                return Ok(());
            }
            Some(_) => {}
        }
    }
    // A merge patch, not an apply: the status is the operator's alone, and a server-side
    // apply to a custom resource costs the API server a typed merge of the whole object.
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &md.namespace().unwrap_or_default());
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    api.patch_status(&md.name_any(), &params, &Patch::Merge(json!({ "status": status }))).await?;
    ctx.statuses.lock().unwrap_or_else(|p| p.into_inner()).insert(key, merged);
    Ok(())
}

/// One Event per transition: the conditions whose reason changed, together, under the
/// reason of the first bad one (or of the first changed one). One per transition rather
/// than one per condition: conditions move together (Ready and Progressing), and every
/// Event is a write the API server and etcd must absorb.
async fn publish_transitions(md: &ModelDeployment, ctx: &Context, old: &ModelDeploymentStatus, observed: &[Observed]) {
    let changed: Vec<&Observed> = observed
        .iter()
        .filter(|o| {
            let before = old.conditions.iter().find(|c| c.type_ == o.type_).map(|c| c.reason.as_str());
            before != Some(o.reason.as_str()) && !(o.reason == Reason::AsExpected && before.is_none())
        })
        .collect();
    let bad = |o: &&Observed| {
        matches!(o.type_, "Degraded" | "RolledBack") && o.status
            || matches!(o.type_, "Ready") && !o.status && o.reason != Reason::RolloutInProgress
    };
    let Some(lead) = changed.iter().find(|o| bad(o)).or(changed.first()) else { return };
    let type_ = if bad(lead) { EventType::Warning } else { EventType::Normal };
    let note = changed.iter().map(|o| format!("{}: {}", o.type_, o.message)).collect::<Vec<_>>().join("; ");
    publish_event(ctx, type_, lead.reason, &note, &md.object_ref(&())).await;
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

/// Server-side applies every child (skipping those already as desired). Destructured
/// without `..`: a new child kind must be handled here.
pub(crate) async fn apply(ctx: &Context, ns: &str, name: &str, children: build::Children) -> Result<Deployment, Error> {
    let build::Children { service_account, manifest, workload, service, egress_policy, disruption_budget } = children;
    let (client, caches) = (&ctx.client, &ctx.caches);
    apply_child(ctx, &Api::namespaced(client.clone(), ns), &service_account, &caches.accounts).await?;
    apply_child(ctx, &Api::namespaced(client.clone(), ns), &manifest, &caches.manifests).await?;
    let applied = apply_workload(ctx, ns, &workload).await?;
    apply_child(ctx, &Api::namespaced(client.clone(), ns), &service, &caches.services).await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    match egress_policy {
        Some(policy) => apply_child(ctx, &policies, &policy, &caches.policies).await?,
        None => {
            // Explicit opt-out: remove a policy an earlier spec asked for.
            let policy = format!("{name}-egress");
            if caches.policies.get(&ObjectRef::new(&policy).within(ns)).is_some() {
                ctx.applier.delete(&policies, ns, &policy).await?;
            }
        }
    }
    apply_child(ctx, &Api::namespaced(client.clone(), ns), &disruption_budget, &caches.budgets).await?;
    Ok(applied)
}

/// Applies a child whose content the operator never reads back (cached as metadata).
pub(crate) async fn apply_child<K>(ctx: &Context, api: &Api<K>, obj: &K, cached: &Store<Meta<K>>) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let current = cached.get(&ObjectRef::new(&obj.name_any()).within(&obj.namespace().unwrap_or_default()));
    ctx.applier.apply(api, obj, current).await?;
    Ok(())
}

/// Applies a worker Deployment and returns it as the API server (or the cache) has it.
pub(crate) async fn apply_workload(ctx: &Context, ns: &str, workload: &Deployment) -> Result<Deployment, Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let current = ctx.caches.deployment(ns, &workload.name_any());
    Ok(match ctx.applier.apply(&api, workload, current).await? {
        Outcome::Applied(d) => d,
        Outcome::Unchanged(d) => d.as_ref().clone(),
    })
}
