//! The executor of the rollout state machine ([`crate::revision::plan::decide`]): it keeps
//! what one reconcile knows of a ModelDeployment — its revision records, the spec's
//! validated references, what it has done so far — carries out each [`Decision`] and tells
//! whether the reconcile goes on. Every decision is appended to the control-plane audit
//! trail before it is acted on, so a failure to audit stops the decision (the reconcile
//! fails and retries) instead of acting unrecorded.

mod actions;
mod records;
mod workload;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use taimatsu_crds::v1alpha1::{AcceleratorProfile, Model, ModelDeployment, ModelDeploymentStatus};

use crate::build::labels;
use crate::context::Context;
use crate::error::Error;
use crate::report;
use crate::revision::plan::{Decision, Done, Observed, Target, Workload, Workloads};
use crate::revision::{RevisionRecord, store};
use crate::status::RevisionState;

/// How many decisions one reconcile carries out at most. A reconcile takes at most about
/// seven (create, scale, analyse, succeed, prune, report); more means the state machine
/// goes round in circles, which is reported instead of looping.
const MAX_DECISIONS: usize = 16;

/// The spec's references once validated: what a new revision records.
pub struct SpecInputs {
    pub model: Arc<Model>,
    pub profile: Option<Arc<AcceleratorProfile>>,
    /// Manifest digest of the model (`sha256:…`, or `unpinned`).
    pub digest: String,
    /// The revision hash of the spec's content.
    pub hash: String,
}

/// One reconcile's rollout: what it knows and what it has done.
pub struct Rollout<'a> {
    md: &'a ModelDeployment,
    ctx: &'a Context,
    ns: String,
    name: String,
    target: Target,
    spec: Option<SpecInputs>,
    records: Vec<RevisionRecord>,
    done: Done,
    decisions: usize,
}

impl<'a> Rollout<'a> {
    /// Reads the revision records of `md`, whose spec resolves to `target`.
    pub async fn start(
        md: &'a ModelDeployment,
        ctx: &'a Context,
        target: Target,
        spec: Option<SpecInputs>,
    ) -> Result<Self, Error> {
        let ns = md.namespace().ok_or(Error::NoNamespace)?;
        let name = md.name_any();
        let records = store::list(&ctx.client, &ns, &name).await?;
        Ok(Rollout { md, ctx, ns, name, target, spec, records, done: Done::default(), decisions: 0 })
    }

    /// What [`crate::revision::plan::decide`] looks at now.
    pub fn observed(&self) -> Observed<'_> {
        let md = self.md;
        Observed {
            name: &self.name,
            target: &self.target,
            generation: md.metadata.generation.unwrap_or_default(),
            records: &self.records,
            rollout: &md.spec.rollout,
            replicas: md.spec.replicas,
            automatic_rollback: md.spec.rollback.automatic,
            history_limit: md.spec.rollback.revision_history_limit,
            reported_failed: md.status.as_ref().and_then(|s| s.failed_revision),
            workloads: self,
            done: &self.done,
        }
    }

    /// Carries out `decision`; `Some` when it ends the reconcile.
    pub async fn execute(&mut self, decision: Decision) -> Result<Option<Action>, Error> {
        self.decisions += 1;
        if self.decisions > MAX_DECISIONS {
            return Err(Error::Stuck(format!("no end after {MAX_DECISIONS} decisions; the last was {decision:?}")));
        }
        match decision {
            Decision::Block(blocked) => return report::block(self.md, self.ctx, &blocked).await.map(Some),
            Decision::CreateRevision { number, from } => self.create_revision(number, from).await?,
            Decision::Restart { revision, kind, previous, from } => {
                self.restart(revision, kind, previous, from).await?
            }
            Decision::Hold { failed, rollback_to, stable, announce } => {
                return self.hold(failed, rollback_to, stable, announce).await.map(Some);
            }
            Decision::Scale { desired, stable, step } => self.scale(desired, stable, step).await?,
            Decision::Fail { revision, reason, message, rollback_to } => {
                self.fail(revision, reason, &message, rollback_to).await?;
                return Ok(Some(Action::requeue(Duration::from_millis(200))));
            }
            Decision::Analyse { revision } => self.analyse(revision).await?,
            Decision::Succeed { revision, replaced, analysis } => self.succeed(revision, &replaced, &analysis).await?,
            Decision::Prune { revisions } => self.prune(&revisions).await?,
            Decision::Report(r) => {
                let desired = self.record(r.desired)?;
                let serving = if r.complete { Some(desired) } else { r.stable.and_then(|(n, _)| self.find(n)) };
                let progress = crate::status::Progress {
                    replicas: self.md.spec.replicas,
                    desired_number: r.desired,
                    desired: &r.state,
                    complete: r.complete,
                    failed: None,
                    serving: r.stable,
                    rolled_back: false,
                    analysing: r.analysing,
                };
                let conditions = crate::status::serving(&progress);
                let fill = |s: &mut ModelDeploymentStatus| self.fill_status(s, desired, serving, None, &r.state);
                report::write_status(self.md, self.ctx, &conditions, fill).await?;
                return Ok(Some(Action::requeue(r.requeue)));
            }
        }
        Ok(None)
    }

    fn find(&self, number: i64) -> Option<&RevisionRecord> {
        self.records.iter().find(|r| r.number == number)
    }

    /// The record `number`, which a decision names.
    fn record(&self, number: i64) -> Result<&RevisionRecord, Error> {
        self.find(number)
            .ok_or_else(|| Error::Stuck(format!("a decision names revision {number}, which is not recorded")))
    }

    /// The status fields of the revisions (the conditions are written beside them).
    fn fill_status(
        &self,
        status: &mut ModelDeploymentStatus,
        desired: &RevisionRecord,
        serving: Option<&RevisionRecord>,
        failed: Option<i64>,
        state: &RevisionState,
    ) {
        status.desired_revision = Some(desired.number);
        status.serving_revision = serving.map(|s| s.number);
        status.failed_revision = failed;
        status.serving_model_digest = serving.map(|s| s.snapshot.model_digest.clone());
        status.replicas = Some(state.replicas);
        status.ready_replicas = Some(state.ready_replicas);
        status.endpoint = Some(format!("http://{}.{}.svc:{}/v1", self.name, self.ns, labels::API_PORT));
    }
}

impl Workloads for Rollout<'_> {
    fn of(&self, hash: &str) -> Workload {
        let (deployment, pod_list) = workload::observe(self.ctx, &self.ns, &self.name, hash);
        Workload { pods: workload::pods(deployment.as_ref()), pod_list }
    }
}
