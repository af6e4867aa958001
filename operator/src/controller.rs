//! The ModelDeployment controller: the watches that fill the caches and trigger
//! reconciles, and the reconcile itself, which reads as the pipeline it is —
//! dereference → validate → decide → build → apply → report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use taimatsu_crds::v1alpha1::{AcceleratorProfile, Model, ModelDeployment};
use tracing::{Instrument, warn};

use crate::api_client;
use crate::build::{self, labels};
use crate::cache::{self, Meta, Writers};
use crate::context::{Context, Guarded};
use crate::error::Error;
use crate::metrics::ErrorLabels;
use crate::report;
use crate::revision::plan::{self, Target};
use crate::rollout::{Rollout, SpecInputs};
use crate::status::Reason;
use crate::validate;

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
    let wc = api_client::watch_config().any_semantic();
    let owned = api_client::watch_config().labels(labels::DEPLOYMENT_LABEL);
    // Every change of a ModelDeployment triggers, its status too: a rollout step may wait
    // for the next reconcile, and the operator's own status write is what brings it.
    let (store, mds_writer) = reflector::store();
    let mds = watcher(Api::<Guarded>::all(client.clone()), wc.clone())
        .backoff(crate::watch_backoff::watch_backoff())
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
    let namespaces = cache::metadata::<Namespace>(client.clone(), api_client::watch_config(), namespaces, |_| false);
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
        Err(invalid) => report::invalid(invalid, ctx).await,
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
    // Dereference and validate (pure): what the spec resolves to. A pin names a recorded
    // revision, which was validated when it was recorded; the policy check covers what the
    // current spec adds to every revision (its NetworkPolicies).
    let (target, spec) =
        match (validate::check_policy(md, &ctx.settings.network.egress_allowed), md.spec.rollback.to_revision) {
            (Err(violation), _) => (Target::Blocked(violation), None),
            (Ok(()), Some(n)) => (Target::Pinned(n), None),
            (Ok(()), None) => resolve(md, ctx),
        };
    // Decide, then build → apply → report what was decided, one decision at a time, until
    // one ends the reconcile.
    let mut rollout = Rollout::start(md, ctx, target, spec).await?;
    loop {
        let decision = plan::decide(&rollout.observed(), Timestamp::now());
        match rollout.execute(decision).await {
            Ok(Some(action)) => return Ok(action),
            Ok(None) => {}
            // Someone else's object under a child's name: reported, and retried at the next
            // change (or in five minutes) rather than at the error backoff.
            Err(conflict @ Error::ForeignChild { .. }) => {
                let blocked = validate::Blocked { reason: Reason::Conflict, message: conflict.to_string() };
                return report::block(md, ctx, &blocked).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Dereferences the spec's Model, AcceleratorProfile and namespace policy from the caches
/// and validates them: the spec's revision hash, or why it cannot roll out.
fn resolve(md: &ModelDeployment, ctx: &Context) -> (Target, Option<SpecInputs>) {
    let ns = md.namespace().unwrap_or_default();
    let Some(model) = ctx.caches.model(&ns, &md.spec.model_ref.name) else {
        return (Target::Blocked(validate::model_not_found(md)), None);
    };
    if let Err(blocked) = validate::check_source(&model, ctx.settings.hf_mirror.as_deref()) {
        return (Target::Blocked(blocked), None);
    }
    let profile = profile_name(md).and_then(|p| ctx.caches.profile(&p));
    let allows_unpinned = ctx.caches.namespace_label(&ns, validate::ALLOW_UNPINNED_LABEL).is_some_and(|v| v == "true");
    match validate::check(md, Some(&model), profile.as_deref(), allows_unpinned) {
        Err(blocked) => (Target::Blocked(blocked), None),
        Ok(validate::Validated { model: checked, digest }) => {
            let hash = build::revision_hash(md, checked, &digest, profile.as_deref());
            (Target::Spec(hash.clone()), Some(SpecInputs { model, profile, digest, hash }))
        }
    }
}
