//! What every reconcile shares: the client, the watch caches, the audit trail, the
//! applier's memory of its last applies, and the operator's settings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::Client;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use taimatsu_core::AddressScope;
use taimatsu_crds::v1alpha1::{ModelDeployment, ModelDeploymentStatus};

use crate::apply::{Applier, ChildWriter};
use crate::audit::ControlPlaneAudit;
use crate::build::Settings;
use crate::cache::{Caches, Writers};
use crate::field_manager::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::webhook::Requesters;

/// A ModelDeployment as watched: one that does not decode (stored under an older
/// schema, say) arrives as an error instead of breaking the watch for every object.
pub type Guarded = DeserializeGuard<ModelDeployment>;

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
    pub(crate) failures: Mutex<HashMap<ObjectRef<Guarded>, u32>>,
    /// The status this replica last wrote per ModelDeployment (namespace, name), until the
    /// cache shows it.
    pub(crate) statuses: Mutex<HashMap<(String, String), ModelDeploymentStatus>>,
}

impl Context {
    /// The context, and the write side of its caches for the controller to fill.
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

impl Context {
    /// Applies children with this context's client, applier and caches.
    pub fn children(&self) -> ChildWriter<'_> {
        ChildWriter { client: &self.client, applier: &self.applier, caches: &self.caches }
    }
}
