//! The cluster state a reconcile reads, kept in memory by the controller's own watches
//! instead of fetched with a GET or LIST on every reconcile. With a thousand
//! ModelDeployments those reads were most of the API server's work
//! (`benchmarks/operator.md`).
//!
//! - Owned kinds whose content the operator never reads (Services, NetworkPolicies,
//!   PodDisruptionBudgets, ServiceAccounts, manifest ConfigMaps) are kept as metadata only:
//!   their resourceVersion is what tells `apply.rs` that an apply can be skipped.
//! - `managedFields` are dropped from everything kept: they are most of an applied
//!   object's size and nothing here reads them.
//! - A store lags the API server by the latest watch event. What a reconcile must not read
//!   stale, its revision records, is still read from the API server (`revision/store.rs`).

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use taimatsu_crds::v1alpha1::{AcceleratorProfile, Model};

use crate::build::labels;

/// Metadata of an owned child.
pub type Meta<K> = PartialObjectMeta<K>;

/// Read side: what reconciles look at.
#[derive(Clone)]
pub struct Caches {
    pub models: Store<Model>,
    pub profiles: Store<AcceleratorProfile>,
    pub namespaces: Store<Meta<Namespace>>,
    pub deployments: Store<Deployment>,
    pub pods: Store<Pod>,
    pub manifests: Store<Meta<ConfigMap>>,
    pub services: Store<Meta<Service>>,
    pub policies: Store<Meta<NetworkPolicy>>,
    pub budgets: Store<Meta<PodDisruptionBudget>>,
    pub accounts: Store<Meta<ServiceAccount>>,
}

/// Write side: consumed once by the controller, which turns each into a watch stream
/// that both fills the store and triggers reconciles.
pub struct Writers {
    pub models: Writer<Model>,
    pub profiles: Writer<AcceleratorProfile>,
    pub namespaces: Writer<Meta<Namespace>>,
    pub deployments: Writer<Deployment>,
    pub pods: Writer<Pod>,
    pub manifests: Writer<Meta<ConfigMap>>,
    pub services: Writer<Meta<Service>>,
    pub policies: Writer<Meta<NetworkPolicy>>,
    pub budgets: Writer<Meta<PodDisruptionBudget>>,
    pub accounts: Writer<Meta<ServiceAccount>>,
}

impl Caches {
    pub fn new() -> (Caches, Writers) {
        let (models, models_w) = reflector::store();
        let (profiles, profiles_w) = reflector::store();
        let (namespaces, namespaces_w) = reflector::store();
        let (deployments, deployments_w) = reflector::store();
        let (pods, pods_w) = reflector::store();
        let (manifests, manifests_w) = reflector::store();
        let (services, services_w) = reflector::store();
        let (policies, policies_w) = reflector::store();
        let (budgets, budgets_w) = reflector::store();
        let (accounts, accounts_w) = reflector::store();
        let caches = Caches {
            models,
            profiles,
            namespaces,
            deployments,
            pods,
            manifests,
            services,
            policies,
            budgets,
            accounts,
        };
        let writers = Writers {
            models: models_w,
            profiles: profiles_w,
            namespaces: namespaces_w,
            deployments: deployments_w,
            pods: pods_w,
            manifests: manifests_w,
            services: services_w,
            policies: policies_w,
            budgets: budgets_w,
            accounts: accounts_w,
        };
        (caches, writers)
    }

    /// Resolves once every store holds its first complete list: until then an absent
    /// object could mean "not listed yet", and a reconcile would act on that. An error
    /// names a store that is not ready after 10 s, or whose watch was dropped.
    pub async fn ready(&self) -> Result<(), &'static str> {
        listed("models", &self.models).await?;
        listed("profiles", &self.profiles).await?;
        listed("namespaces", &self.namespaces).await?;
        listed("deployments", &self.deployments).await?;
        listed("pods", &self.pods).await?;
        listed("manifests", &self.manifests).await?;
        listed("services", &self.services).await?;
        listed("policies", &self.policies).await?;
        listed("budgets", &self.budgets).await?;
        listed("accounts", &self.accounts).await
    }

    pub fn model(&self, ns: &str, name: &str) -> Option<Arc<Model>> {
        self.models.get(&ObjectRef::new(name).within(ns))
    }

    pub fn profile(&self, name: &str) -> Option<Arc<AcceleratorProfile>> {
        self.profiles.get(&ObjectRef::new(name))
    }

    pub fn namespace_label(&self, ns: &str, label: &str) -> Option<String> {
        self.namespaces.get(&ObjectRef::new(ns)).and_then(|n| n.labels().get(label).cloned())
    }

    pub fn deployment(&self, ns: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments.get(&ObjectRef::new(name).within(ns))
    }

    /// The pods of one revision of the ModelDeployment `md`.
    pub fn pods(&self, ns: &str, md: &str, revision: &str) -> Vec<Pod> {
        self.pods
            .state()
            .iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(ns)
                    && belongs_to(p.as_ref(), md)
                    && p.labels().get(labels::REVISION_LABEL).map(String::as_str) == Some(revision)
            })
            .map(|p| p.as_ref().clone())
            .collect()
    }
}

/// What the operator reads of a ModelDeployment's managedFields is who last changed its
/// spec (`revision::record::spec_manager`): the entries that touch the spec are kept, each
/// cut down to that fact, and the rest (status writes, the bulk) are dropped.
pub fn trim_managed_fields(meta: &mut ObjectMeta) {
    if let Some(entries) = meta.managed_fields.as_mut() {
        entries
            .retain(|m| m.subresource.is_none() && m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").is_some()));
        for m in entries.iter_mut() {
            m.fields_v1 = Some(FieldsV1(serde_json::json!({ "f:spec": {} })));
        }
    }
}

/// Waits until `store` has its first complete list, for at most 10 s.
async fn listed<K: Resource<DynamicType = ()> + Clone + 'static>(
    name: &'static str,
    store: &Store<K>,
) -> Result<(), &'static str> {
    // Asked again every second: a reconcile that waited on a store at start-up was seen (in
    // the cluster tests) not to be woken when the store became ready.
    for _ in 0..10 {
        match tokio::time::timeout(std::time::Duration::from_secs(1), store.wait_until_ready()).await {
            Ok(Ok(())) => return Ok(()),
            // The watches were dropped: the controller is stopping.
            Ok(Err(_)) => return Err(name),
            Err(_) => {}
        }
    }
    tracing::warn!(cache = name, "the cache has not been listed after 10 s: is its watch refused (RBAC)?");
    Err(name)
}

/// Nothing to trim.
pub fn keep_all<K>(_: &mut K) {}

/// What the operator reads of its worker Deployments is their replicas, generation and
/// status: the pod template (most of a Deployment) is not kept.
pub fn trim_deployment(d: &mut Deployment) {
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// What the operator reads of worker pods is their labels and status.
pub fn trim_pod(p: &mut Pod) {
    p.spec = None;
}

/// Whether a child carries the label of the ModelDeployment `md`.
pub fn belongs_to(obj: &impl Resource, md: &str) -> bool {
    obj.meta().labels.as_ref().and_then(|l| l.get(labels::DEPLOYMENT_LABEL)).map(String::as_str) == Some(md)
}

/// The names of `md`'s children in `store` whose revision is not among `keep`.
pub fn other_revisions<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    ns: &str,
    md: &str,
    keep: &[&str],
) -> Vec<String> {
    store
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(ns) && belongs_to(o.as_ref(), md))
        .filter(|o| o.labels().get(labels::REVISION_LABEL).is_some_and(|r| !keep.contains(&r.as_str())))
        .map(|o| o.name_any())
        .collect()
}

/// A watch of full objects that fills `writer` with what `trim` leaves of them and yields
/// the objects whose event is `wanted` as a trigger (deletions always are: a deleted child
/// is recreated).
pub fn full<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    trim: impl Fn(&mut K) + Send + 'static,
    wanted: impl Fn(&K) -> bool + Send + 'static,
) -> impl Stream<Item = watcher::Result<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let events = watcher(api, config)
        .backoff(crate::watch_backoff::watch_backoff())
        .modify(move |o| {
            o.meta_mut().managed_fields = None;
            trim(o);
        })
        .reflect(writer);
    triggers(events, wanted)
}

/// A watch of metadata only that fills `writer` and yields the wanted triggers.
pub fn metadata<K>(
    client: Client,
    config: watcher::Config,
    writer: Writer<Meta<K>>,
    wanted: impl Fn(&Meta<K>) -> bool + Send + 'static,
) -> impl Stream<Item = watcher::Result<Meta<K>>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    // An Api of PartialObjectMeta makes metadata-only requests.
    let events = watcher(Api::<Meta<K>>::all(client), config)
        .backoff(crate::watch_backoff::watch_backoff())
        .modify(|o| o.metadata.managed_fields = None)
        .reflect(writer);
    triggers(events, wanted)
}

fn triggers<K: Send + 'static>(
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    wanted: impl Fn(&K) -> bool + Send + 'static,
) -> impl Stream<Item = watcher::Result<K>> {
    events
        .filter_map(move |event| {
            futures::future::ready(match event {
                Ok(watcher::Event::Delete(o)) => Some(Ok(o)),
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => wanted(&o).then_some(Ok(o)),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(e) => Some(Err(e)),
            })
        })
        .boxed()
}
