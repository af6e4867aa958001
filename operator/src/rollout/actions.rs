//! What each decision does to the cluster: audit first, then act, then update what this
//! reconcile knows.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;
use taimatsu_crds::v1alpha1::{CHANGE_CAUSE_ANNOTATION, ModelDeploymentStatus};
use tracing::info;

use super::records::{audit, audit_all, describe, revision_fields};
use super::{Rollout, workload};
use crate::analysis;
use crate::error::Error;
use crate::report::{self, event};
use crate::revision::plan::{Applied, Restart, Step};
use crate::revision::record::spec_manager;
use crate::revision::{Outcome, RevisionRecord, Snapshot, store};
use crate::status::{self, Reason};

impl Rollout<'_> {
    /// Records the spec as revision `number`: audited (with the rollout it starts) before the
    /// record exists, so a crash in between repeats them on retry, and the chain keeps each
    /// decision once.
    pub(super) async fn create_revision(&mut self, number: i64, from: Option<i64>) -> Result<(), Error> {
        let (md, ctx) = (self.md, self.ctx);
        let spec = self.spec.as_ref().ok_or_else(|| Error::Stuck("a new revision without a validated spec".into()))?;
        let mut snapshot = Snapshot::of(md, &spec.model, &spec.digest, spec.profile.as_deref(), &spec.hash);
        if let Some(user) = self.requester().await? {
            snapshot.requested_by = user;
        }
        let fields = revision_fields(&snapshot, number);
        let mut started = fields.clone();
        started["from"] = json!(from);
        audit_all(ctx, md, vec![("revision-created", fields), ("rollout-started", started)]).await?;
        let record = store::create(&ctx.client, md, number, &snapshot, &Timestamp::now().to_string()).await?;
        let note = format!("revision {number} created ({}); rolling out", describe(&snapshot));
        event(ctx, md, EventType::Normal, Reason::RevisionCreated, note).await;
        self.records.push(record);
        Ok(())
    }

    /// Starts the rollout of a recorded revision again: a manual rollback to it, a retry
    /// of a failed one, or a roll-forward after a pin was removed.
    pub(super) async fn restart(
        &mut self,
        number: i64,
        kind: Restart,
        previous: Outcome,
        from: Option<i64>,
    ) -> Result<(), Error> {
        let (md, ctx) = (self.md, self.ctx);
        let who = self.requester().await?.unwrap_or_else(|| spec_manager(md));
        let record = self.record(number)?;
        let mut fields = revision_fields(&record.snapshot, number);
        fields["from"] = json!(from);
        fields["previousOutcome"] = json!(previous.as_str());
        fields["requestedBy"] = json!(who);
        fields["changeCause"] = json!(md.annotations().get(CHANGE_CAUSE_ANNOTATION));
        audit(ctx, md, kind.event(), fields).await?;
        let now = Timestamp::now().to_string();
        store::set_outcome(&ctx.client, &self.ns, record, Outcome::Progressing, None, Some(&now), None).await?;
        let what = if kind == Restart::ManualRollback { "rolling back to" } else { "rolling out" };
        let note = format!("{what} revision {number} ({})", describe(&record.snapshot));
        event(ctx, md, EventType::Normal, Reason::RolloutStarted, note).await;
        if let Some(record) = self.records.iter_mut().find(|r| r.number == number) {
            record.outcome = Outcome::Progressing;
            record.rollout_started = Some(now);
        }
        Ok(())
    }

    /// Scales the desired revision (with every shared child) and the stable one to `step`,
    /// after removing the workloads of every other revision.
    pub(super) async fn scale(&mut self, desired: i64, stable: Option<i64>, step: Step) -> Result<(), Error> {
        let (md, ctx) = (self.md, self.ctx);
        let desired = self.record(desired)?;
        let stable = stable.map(|n| self.record(n)).transpose()?;
        let (_, desired_pods) = workload::observe(ctx, &self.ns, &self.name, &desired.snapshot.hash);
        let stable_pods = stable.map(|s| {
            let (deployment, _) = workload::observe(ctx, &self.ns, &self.name, &s.snapshot.hash);
            (s.number, workload::pods(deployment.as_ref()))
        });
        let keep: Vec<&RevisionRecord> = [Some(desired), stable].into_iter().flatten().collect();
        workload::remove_except(ctx, &self.ns, &self.name, &keep).await?;
        let applied = workload::apply(ctx, md, desired, step.desired, true).await?;
        if let Some(s) = stable {
            workload::apply(ctx, md, s, step.stable, false).await?;
        }
        let state = status::revision_state(Some(&applied), &desired_pods, md.spec.replicas);
        self.done.applied = Some(Applied { state, stable: stable_pods });
        Ok(())
    }

    /// Marks the desired revision failed, with the decision to roll back to `rollback_to`.
    pub(super) async fn fail(
        &mut self,
        number: i64,
        reason: Reason,
        message: &str,
        rollback_to: Option<i64>,
    ) -> Result<(), Error> {
        let (md, ctx) = (self.md, self.ctx);
        let desired = self.record(number)?;
        let mut fields = revision_fields(&desired.snapshot, number);
        fields["reason"] = json!(reason.as_str());
        fields["message"] = json!(message);
        // The failure and what it causes, recorded together.
        let mut records = vec![("rollout-failed", fields.clone())];
        if reason == Reason::DigestMismatch {
            records.push(("model-verification-failed", fields));
        }
        if let Some(to) = rollback_to {
            let rollback = json!({ "from": number, "to": to, "reason": reason.as_str(), "message": message });
            records.push(("rollback-automatic", rollback));
        }
        audit_all(ctx, md, records).await?;
        let generation = md.metadata.generation.unwrap_or_default();
        let text = format!("{}: {message}", reason.as_str());
        store::set_outcome(&ctx.client, &self.ns, desired, Outcome::Failed, Some(&text), None, Some(generation))
            .await?;
        info!(name = %self.name, revision = number, reason = reason.as_str(), "rollout failed");
        Ok(())
    }

    /// A failed desired revision: serve `rollback_to` at full size (automatic rollback), or
    /// leave everything as it is for the operator's user to decide.
    pub(super) async fn hold(
        &mut self,
        failed: i64,
        rollback_to: Option<i64>,
        stable: Option<i64>,
        announce: bool,
    ) -> Result<Action, Error> {
        let (md, ctx) = (self.md, self.ctx);
        let desired = self.record(failed)?;
        let failure = Reason::parse_failure(desired.outcome_reason.as_deref().unwrap_or_default());
        let (state, serving_available) = match rollback_to.map(|n| self.record(n)).transpose()? {
            Some(s) => {
                workload::remove_except(ctx, &self.ns, &self.name, &[s]).await?;
                let applied = workload::apply(ctx, md, s, md.spec.replicas, true).await?;
                let (_, pods) = workload::observe(ctx, &self.ns, &self.name, &s.snapshot.hash);
                let state = status::revision_state(Some(&applied), &pods, md.spec.replicas);
                let available = state.ready_replicas > 0;
                (state, available)
            }
            None => {
                let (deployment, pods) = workload::observe(ctx, &self.ns, &self.name, &desired.snapshot.hash);
                (status::revision_state(deployment.as_ref(), &pods, md.spec.replicas), false)
            }
        };
        if announce {
            let s = rollback_to.unwrap_or_default();
            let note = format!("revision {failed} failed ({}): serving revision {s}", failure.0.as_str());
            event(ctx, md, EventType::Warning, Reason::RolledBack, note).await;
        }
        let progress = status::Progress {
            replicas: md.spec.replicas,
            desired_number: failed,
            desired: &state,
            complete: false,
            failed: Some(&failure),
            serving: stable.map(|s| (s, serving_available)),
            rolled_back: rollback_to.is_some(),
            analysing: None,
        };
        let serving = rollback_to.and_then(|n| self.find(n));
        let conditions = status::serving(&progress);
        let fill = |s: &mut ModelDeploymentStatus| self.fill_status(s, desired, serving, Some(failed), &state);
        report::write_status(md, ctx, &conditions, fill).await?;
        Ok(Action::requeue(Duration::from_secs(300)))
    }

    /// Starts or continues the analysis of the desired revision; a started one's state is
    /// stored on its record, so a restart or a new leader continues it.
    pub(super) async fn analyse(&mut self, number: i64) -> Result<(), Error> {
        let (md, ctx) = (self.md, self.ctx);
        let desired = self.record(number)?;
        let (_, pods) = workload::observe(ctx, &self.ns, &self.name, &desired.snapshot.hash);
        let outcome = analysis::analyse(md.spec.rollout.analysis.as_ref(), &ctx.analysis_scope, desired, &pods).await?;
        if let Some(started) = &outcome.started {
            store::set_analysis(&ctx.client, &self.ns, desired, started).await?;
        }
        self.done.analysis = Some(outcome.verdict);
        Ok(())
    }

    /// The desired revision has every replica available and the stable one is drained.
    pub(super) async fn succeed(
        &mut self,
        number: i64,
        replaced: &[(i64, Outcome)],
        analysis: &str,
    ) -> Result<(), Error> {
        let (md, ctx) = (self.md, self.ctx);
        let desired = self.record(number)?;
        let mut fields = revision_fields(&desired.snapshot, number);
        fields["replaced"] = json!(replaced.iter().map(|(n, _)| n).collect::<Vec<_>>());
        if !analysis.is_empty() {
            fields["analysis"] = json!(analysis);
        }
        audit(ctx, md, "rollout-succeeded", fields).await?;
        store::set_outcome(&ctx.client, &self.ns, desired, Outcome::Active, None, None, None).await?;
        for (n, outcome) in replaced {
            let why = format!("replaced by revision {number}");
            store::set_outcome(&ctx.client, &self.ns, self.record(*n)?, *outcome, Some(&why), None, None).await?;
        }
        event(ctx, md, EventType::Normal, Reason::RolloutSucceeded, format!("revision {number} is serving")).await;
        // The replaced revision is drained: remove its workload now rather than at the next
        // reconcile, which nothing may trigger for a while (the operator's own status write
        // does not).
        workload::remove_except(ctx, &self.ns, &self.name, &[desired]).await?;
        if let Some(record) = self.records.iter_mut().find(|r| r.number == number) {
            record.outcome = Outcome::Active;
        }
        Ok(())
    }

    /// Removes the records past `spec.rollback.revisionHistoryLimit`, audited.
    pub(super) async fn prune(&mut self, numbers: &[i64]) -> Result<(), Error> {
        let (md, ctx) = (self.md, self.ctx);
        let pruned = numbers.iter().map(|n| self.record(*n)).collect::<Result<Vec<_>, _>>()?;
        let fields = json!({
            "revisions": numbers,
            "revisionHistoryLimit": md.spec.rollback.revision_history_limit,
            "digests": pruned.iter().map(|r| r.snapshot.model_digest.clone()).collect::<Vec<_>>(),
        });
        audit(ctx, md, "history-pruned", fields).await?;
        for r in pruned {
            store::delete(&ctx.client, &self.ns, r).await?;
        }
        event(ctx, md, EventType::Normal, Reason::HistoryPruned, format!("pruned revisions {numbers:?}")).await;
        self.done.pruned = true;
        Ok(())
    }

    /// Who asked for this generation: as this replica's webhook saw it, else as another
    /// replica's webhook recorded it in the audit head (with two replicas, the Service sends
    /// half the admissions to the one that does not lead). None without a webhook.
    async fn requester(&self) -> Result<Option<String>, Error> {
        let (ctx, generation) = (self.ctx, self.md.metadata.generation.unwrap_or_default());
        if let Some(user) = ctx.requesters.get(&self.ns, &self.name, generation) {
            return Ok(Some(user));
        }
        if !ctx.requesters.webhook_serves() {
            return Ok(None);
        }
        Ok(ctx.audit.requester(&self.ns, &self.name, generation).await?)
    }
}
