//! Server-side apply that skips what is already as desired, and tells the watches which
//! events are only the echo of the operator's own writes.
//!
//! Every child is applied with one field manager and `force`, so an apply also restores a
//! field someone edited. An apply of an unchanged object is still a write request the API
//! server must decode, merge and compare; with a thousand ModelDeployments, and every child
//! event re-queueing its owner, those no-op applies were most of the operator's calls. So
//! this remembers, per child, the desired object's hash and a fingerprint of the object the
//! apply returned: its generation (which moves with every change to the spec, but not with
//! status updates) or, for kinds without one, its resourceVersion; plus the values of the
//! labels and annotations the operator sets (not those others add, such as the
//! Deployment controller's revision annotation) and the owners. The apply is skipped while the cached child still has that
//! fingerprint and the desired object has not changed. Anyone else's change to the spec or
//! metadata, or a deletion, changes the fingerprint, and the next reconcile applies again.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use crate::build::Children;
use crate::cache::{Caches, Meta};

use crate::error::Error;
use crate::field_manager::FIELD_MANAGER;

/// A child: kind, namespace, name.
type Key = (String, String, String);

#[derive(Default)]
pub struct Applier {
    last: Mutex<HashMap<Key, Applied>>,
}

struct Applied {
    desired: u64,
    /// The label and annotation keys the operator sets on the child.
    keys: Keys,
    fingerprint: u64,
    resource_version: Option<String>,
}

impl Applied {
    /// Whether `meta` is the object this apply returned or, with `ignore_status`, differs
    /// from it only in status.
    fn shows(&self, meta: &ObjectMeta, ignore_status: bool) -> bool {
        match ignore_status {
            true => self.fingerprint == fingerprint(meta, &self.keys),
            false => self.resource_version.is_some() && self.resource_version == meta.resource_version,
        }
    }
}

#[derive(Clone, Default)]
struct Keys {
    labels: Vec<String>,
    annotations: Vec<String>,
}

/// What an apply did.
pub enum Outcome<K, C> {
    /// The API server's copy after the apply.
    Applied(K),
    /// Nothing to do: the child is as this replica last applied it; here is the cached copy.
    Unchanged(Arc<C>),
}

impl Applier {
    /// Applies `obj` unless the child's cached copy `current` (full or metadata only;
    /// `None` when absent) still has the fingerprint of the last apply of this same `obj`.
    pub async fn apply<K, C>(&self, api: &Api<K>, obj: &K, current: Option<Arc<C>>) -> Result<Outcome<K, C>, Error>
    where
        K: Resource<DynamicType = ()> + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
        C: Resource,
    {
        let key = key::<K>(obj.namespace().unwrap_or_default(), obj.name_any());
        let desired = hash(obj)?;
        self.ensure_ours(api, obj, current.as_deref().map(Resource::meta)).await?;
        if let Some(current) = current {
            let unchanged =
                self.lock().get(&key).is_some_and(|a| a.desired == desired && a.shows(current.meta(), true));
            if unchanged {
                return Ok(Outcome::Unchanged(current));
            }
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = api.patch(&obj.name_any(), &params, &Patch::Apply(obj)).await?;
        let keys = Keys {
            labels: obj.meta().labels.iter().flatten().map(|(k, _)| k.clone()).collect(),
            annotations: obj.meta().annotations.iter().flatten().map(|(k, _)| k.clone()).collect(),
        };
        let record = Applied {
            desired,
            fingerprint: fingerprint(applied.meta(), &keys),
            keys,
            resource_version: applied.resource_version(),
        };
        self.lock().insert(key, record);
        Ok(Outcome::Applied(applied))
    }

    /// Fails with [`Error::ForeignChild`] when the object under `obj`'s name is not
    /// controlled by `obj`'s controller. `current` is the cached copy; without one (the
    /// cache holds only objects with the operator's labels: absent, not seen yet, or
    /// someone else's) the API server is asked, once: after this replica's first apply the
    /// cache lag is covered by its own record.
    pub async fn ensure_ours<K>(&self, api: &Api<K>, obj: &K, current: Option<&ObjectMeta>) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match current {
            Some(current) => ensure_controlled(obj, current),
            None if !self.lock().contains_key(&key::<K>(obj.namespace().unwrap_or_default(), obj.name_any())) => {
                match api.get_metadata_opt(&obj.name_any()).await? {
                    Some(existing) => ensure_controlled(obj, &existing.metadata),
                    None => Ok(()),
                }
            }
            None => Ok(()),
        }
    }

    /// Whether a watch event shows a child of kind `K` as this replica's last apply left
    /// it: the very object the apply returned or, with `ignore_status`, one that differs
    /// from it only in status. Such an event need not trigger a reconcile.
    pub fn is_echo<K: Resource<DynamicType = ()>>(&self, meta: &ObjectMeta, ignore_status: bool) -> bool {
        let key = key::<K>(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
        self.lock().get(&key).is_some_and(|a| a.shows(meta, ignore_status))
    }

    /// Deletes a child in the background (already gone is fine: the cache lags a
    /// deletion) and forgets its last apply.
    pub async fn delete<K>(&self, api: &Api<K>, ns: &str, name: &str) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        delete_if_present(api, name, &DeleteParams::background()).await?;
        self.lock().remove(&key::<K>(ns.to_owned(), name.to_owned()));
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Applied>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What applying a ModelDeployment's children needs: the client, the applier's memory and
/// the caches that hold the children as last seen.
#[derive(Clone, Copy)]
pub struct ChildWriter<'a> {
    pub client: &'a Client,
    pub applier: &'a Applier,
    pub caches: &'a Caches,
}

impl ChildWriter<'_> {
    /// Server-side applies every child (skipping those already as desired) and returns the
    /// worker Deployment as applied. The NetworkPolicies go first, so that no worker pod
    /// ever runs without them. Destructured without `..`: a new child kind must be handled
    /// here.
    pub async fn apply_all(&self, ns: &str, name: &str, children: Children) -> Result<Deployment, Error> {
        let Children { service_account, manifest, workload, service, ingress_policy, egress_policy, disruption_budget } =
            children;
        let (client, caches) = (self.client, self.caches);
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
        // Every name checked before anything is written: a conflict on the last child must
        // not leave the first ones applied.
        self.check(&policies, &ingress_policy, &caches.policies).await?;
        if let Some(policy) = &egress_policy {
            self.check(&policies, policy, &caches.policies).await?;
        }
        self.check(&Api::namespaced(client.clone(), ns), &service_account, &caches.accounts).await?;
        self.check(&Api::namespaced(client.clone(), ns), &manifest, &caches.manifests).await?;
        let current = self.caches.deployment(ns, &workload.name_any());
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
        self.applier.ensure_ours(&deployments, &workload, current.as_deref().map(Resource::meta)).await?;
        self.check(&Api::namespaced(client.clone(), ns), &service, &caches.services).await?;
        self.check(&Api::namespaced(client.clone(), ns), &disruption_budget, &caches.budgets).await?;

        self.apply(&policies, &ingress_policy, &caches.policies).await?;
        match egress_policy {
            Some(policy) => self.apply(&policies, &policy, &caches.policies).await?,
            None => {
                // Explicit opt-out: remove a policy an earlier spec asked for.
                let policy = format!("{name}-egress");
                if caches.policies.get(&ObjectRef::new(&policy).within(ns)).is_some() {
                    self.applier.delete(&policies, ns, &policy).await?;
                }
            }
        }
        self.apply(&Api::namespaced(client.clone(), ns), &service_account, &caches.accounts).await?;
        self.apply(&Api::namespaced(client.clone(), ns), &manifest, &caches.manifests).await?;
        let applied = self.apply_workload(ns, &workload).await?;
        self.apply(&Api::namespaced(client.clone(), ns), &service, &caches.services).await?;
        self.apply(&Api::namespaced(client.clone(), ns), &disruption_budget, &caches.budgets).await?;
        Ok(applied)
    }

    /// [`Applier::ensure_ours`] for a child cached as metadata.
    async fn check<K>(&self, api: &Api<K>, obj: &K, cached: &Store<Meta<K>>) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let current = cached.get(&ObjectRef::new(&obj.name_any()).within(&obj.namespace().unwrap_or_default()));
        self.applier.ensure_ours(api, obj, current.as_deref().map(|m| &m.metadata)).await
    }

    /// Applies a child whose content the operator never reads back (cached as metadata).
    pub async fn apply<K>(&self, api: &Api<K>, obj: &K, cached: &Store<Meta<K>>) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()> + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let current = cached.get(&ObjectRef::new(&obj.name_any()).within(&obj.namespace().unwrap_or_default()));
        self.applier.apply(api, obj, current).await?;
        Ok(())
    }

    /// Applies a worker Deployment and returns it as the API server (or the cache) has it.
    pub async fn apply_workload(&self, ns: &str, workload: &Deployment) -> Result<Deployment, Error> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let current = self.caches.deployment(ns, &workload.name_any());
        Ok(match self.applier.apply(&api, workload, current).await? {
            Outcome::Applied(d) => d,
            Outcome::Unchanged(d) => d.as_ref().clone(),
        })
    }
}

/// An existing object may be applied over only when its controller is the desired
/// object's (this ModelDeployment): a Service or NetworkPolicy someone else made under a
/// child's name, or an object merely carrying the operator's labels, is not taken over.
fn ensure_controlled<K: Resource<DynamicType = ()>>(desired: &K, existing: &ObjectMeta) -> Result<(), Error> {
    let controller = |meta: &ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| (o.uid.clone(), o.kind.clone(), o.name.clone()))
    };
    let ours = controller(desired.meta()).map(|(uid, _, _)| uid);
    match controller(existing) {
        Some((uid, _, _)) if Some(&uid) == ours.as_ref() => Ok(()),
        theirs => Err(Error::ForeignChild {
            kind: K::kind(&()).into_owned(),
            namespace: desired.namespace().unwrap_or_default(),
            name: desired.name_any(),
            holder: match theirs {
                Some((_, kind, name)) => format!("controlled by {kind} {name}"),
                None => "controlled by nothing (made by hand or by another tool)".to_owned(),
            },
        }),
    }
}

fn key<K: Resource<DynamicType = ()>>(ns: String, name: String) -> Key {
    (K::kind(&()).into_owned(), ns, name)
}

/// Deletes `name`; one that is already gone is not an error.
pub async fn delete_if_present<K>(api: &Api<K>, name: &str, params: &DeleteParams) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// What identifies a child's spec and the metadata the operator sets, but not its status.
fn fingerprint(meta: &ObjectMeta, keys: &Keys) -> u64 {
    let mut h = DefaultHasher::new();
    match meta.generation {
        Some(generation) => generation.hash(&mut h),
        None => meta.resource_version.hash(&mut h),
    }
    for (keys, values) in [(&keys.labels, &meta.labels), (&keys.annotations, &meta.annotations)] {
        for k in keys {
            values.as_ref().and_then(|v| v.get(k)).hash(&mut h);
        }
    }
    meta.owner_references.as_ref().map(|o| o.iter().map(|r| r.uid.as_str()).collect::<Vec<_>>()).hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

fn hash<K: serde::Serialize>(obj: &K) -> Result<u64, Error> {
    let bytes = serde_json::to_vec(obj).map_err(|e| Error::Serialize(e.to_string()))?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    use super::*;

    fn meta() -> ObjectMeta {
        ObjectMeta {
            generation: Some(3),
            resource_version: Some("100".into()),
            labels: Some(BTreeMap::from([("taimatsu.dev/model-deployment".into(), "chat".into())])),
            annotations: Some(BTreeMap::from([("deployment.kubernetes.io/revision".into(), "4".into())])),
            owner_references: Some(vec![OwnerReference { uid: "u-1".into(), ..Default::default() }]),
            ..Default::default()
        }
    }

    fn keys() -> Keys {
        Keys { labels: vec!["taimatsu.dev/model-deployment".into()], annotations: vec![] }
    }

    #[test]
    fn the_fingerprint_ignores_status_and_what_others_add() {
        let base = fingerprint(&meta(), &keys());
        // A status update moves the resourceVersion, not the generation.
        assert_eq!(fingerprint(&ObjectMeta { resource_version: Some("101".into()), ..meta() }, &keys()), base);
        // The Deployment controller's own annotation, and labels the operator does not set.
        let mut others = meta();
        others.annotations.as_mut().unwrap().insert("deployment.kubernetes.io/revision".into(), "5".into());
        others.labels.as_mut().unwrap().insert("team".into(), "ml".into());
        assert_eq!(fingerprint(&others, &keys()), base);
    }

    #[test]
    fn the_fingerprint_moves_with_the_spec_the_operators_metadata_owners_and_deletion() {
        let base = fingerprint(&meta(), &keys());
        let changed = [
            ObjectMeta { generation: Some(4), ..meta() },
            ObjectMeta {
                labels: Some(BTreeMap::from([("taimatsu.dev/model-deployment".into(), "x".into())])),
                ..meta()
            },
            ObjectMeta { owner_references: Some(vec![]), ..meta() },
            ObjectMeta { deletion_timestamp: Some(Time("2026-12-02T00:00:00Z".parse().unwrap())), ..meta() },
        ];
        for (i, m) in changed.iter().enumerate() {
            assert_ne!(fingerprint(m, &keys()), base, "case {i}");
        }
        // Kinds without a generation: the resourceVersion stands in.
        let unversioned = ObjectMeta { generation: None, ..meta() };
        let moved = ObjectMeta { generation: None, resource_version: Some("101".into()), ..meta() };
        assert_ne!(fingerprint(&unversioned, &keys()), fingerprint(&moved, &keys()));
    }

    #[test]
    fn an_echo_is_the_applied_object_or_with_status_ignored_only_its_status_changed() {
        let applied = Applied {
            desired: 1,
            keys: keys(),
            fingerprint: fingerprint(&meta(), &keys()),
            resource_version: Some("100".into()),
        };
        assert!(applied.shows(&meta(), false));
        let status_only = ObjectMeta { resource_version: Some("101".into()), ..meta() };
        assert!(!applied.shows(&status_only, false));
        assert!(applied.shows(&status_only, true));
        assert!(!applied.shows(&ObjectMeta { generation: Some(4), ..meta() }, true));
    }
}
