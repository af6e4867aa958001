//! One reconcile of a ModelDeployment's revisions: record what the spec asks for, move
//! pods from the stable revision to the desired one a step at a time, judge the rollout,
//! and return serving to the stable revision when it fails. Every decision is appended to
//! the control-plane audit trail before it is acted on, so a failure to audit stops the
//! decision (the reconcile fails and retries) instead of acting unrecorded.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::{CHANGE_CAUSE_ANNOTATION, ModelDeployment};
use tracing::info;

use crate::analysis::{self, Verdict};
use crate::build::{self, Inputs, labels};
use crate::cache;
use crate::controller::{self, Context};
use crate::error::Error;
use crate::revision::plan::{self, Pods, Step};
use crate::revision::record::spec_manager;
use crate::revision::{Outcome, RevisionRecord, Snapshot, store};
use crate::status::{self, Reason};
use crate::validate::{self, Blocked};

/// What the spec (not a pin) asks for.
enum SpecRevision {
    Blocked(Blocked),
    Recorded(RevisionRecord),
    New(Snapshot),
}

pub async fn reconcile(md: &ModelDeployment, ctx: &Context) -> Result<Action, Error> {
    let ns = md.namespace().ok_or(Error::NoNamespace)?;
    let name = md.name_any();
    let client = &ctx.client;
    let generation = md.metadata.generation.unwrap_or_default();
    let mut records = store::list(client, &ns, &name).await?;
    let pinned = md.spec.rollback.to_revision;

    // The desired revision: the pinned one, or the spec's (recorded now if it is new).
    let desired = match pinned {
        Some(n) => match records.iter().find(|r| r.number == n) {
            Some(r) => r.clone(),
            None => {
                let message = format!(
                    "spec.rollback.toRevision: revision {n} is not recorded (never created, or pruned by revisionHistoryLimit): `kubectl taimatsu history {name}` lists the revisions; pick one or remove toRevision"
                );
                return controller::block(md, ctx, Blocked { reason: Reason::RevisionNotFound, message }).await;
            }
        },
        None => match spec_revision(md, ctx, &ns, &records).await? {
            SpecRevision::Blocked(b) => return controller::block(md, ctx, b).await,
            SpecRevision::Recorded(r) => r,
            SpecRevision::New(mut snapshot) => {
                if let Some(user) = requester(ctx, &ns, &name, generation).await? {
                    snapshot.requested_by = user;
                }
                let number = plan::latest(&records).map_or(1, |r| r.number + 1);
                let from = plan::stable(&records).map(|r| r.number);
                // Both audited before the record exists: a crash in between repeats them on
                // retry, and the chain keeps each decision once.
                let fields = revision_fields(&snapshot, number);
                let mut started = fields.clone();
                started["from"] = json!(from);
                audit_all(ctx, md, vec![("revision-created", fields), ("rollout-started", started)]).await?;
                let record = store::create(client, md, number, &snapshot, &Timestamp::now().to_string()).await?;
                event(
                    ctx,
                    md,
                    EventType::Normal,
                    Reason::RevisionCreated,
                    format!("revision {number} created ({}); rolling out", describe(&snapshot)),
                )
                .await;
                records.push(record.clone());
                record
            }
        },
    };
    // Two records may share content (A → B → A); a stable revision with the desired
    // content is the desired one's own Deployment.
    let stable = plan::stable(&records)
        .filter(|s| s.number != desired.number && s.snapshot.hash != desired.snapshot.hash)
        .cloned();

    if plan::stays_failed(&desired, pinned.is_some(), generation) {
        return hold(md, ctx, &ns, &desired, stable.as_ref()).await;
    }
    let desired = match desired.outcome {
        Outcome::Progressing | Outcome::Active => desired,
        previous => restart(md, ctx, &ns, desired, previous, pinned.is_some(), stable.as_ref()).await?,
    };

    // Observe both revisions and take the next step.
    let replicas = md.spec.replicas;
    let (desired_deployment, desired_pods) = observe(ctx, &ns, &name, &desired.snapshot.hash);
    let stable_observed = stable.as_ref().map(|s| observe(ctx, &ns, &name, &s.snapshot.hash).0);
    let step = match &stable_observed {
        None => Step { desired: replicas, stable: 0 },
        Some(s) => plan::step(&md.spec.rollout, replicas, pods(desired_deployment.as_ref()), pods(s.as_ref())),
    };
    remove_revisions_except(
        ctx,
        &ns,
        &name,
        &[Some(&desired), stable.as_ref()].into_iter().flatten().collect::<Vec<_>>(),
    )
    .await?;
    let applied = apply_revision(ctx, md, &desired, step.desired, true).await?;
    if let Some(s) = &stable {
        apply_revision(ctx, md, s, step.stable, false).await?;
    }
    let state = status::revision_state(Some(&applied), &desired_pods, replicas);

    // Judge the rollout.
    let mut desired = desired;
    let mut analysing = None;
    if desired.outcome == Outcome::Progressing {
        let elapsed = elapsed_seconds(desired.rollout_started.as_deref());
        if let Some(failure) = plan::failure(&desired_pods, elapsed, md.spec.rollout.progress_deadline_seconds) {
            fail(md, ctx, &ns, &desired, stable.as_ref(), &failure).await?;
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        let stable_drained = stable_observed.as_ref().is_none_or(|s| pods(s.as_ref()) == Pods::default());
        if state.available && stable_drained {
            match analysis::analyse(md, ctx, &ns, &desired, &desired_pods).await? {
                Verdict::Passed(seen) => {
                    succeed(md, ctx, &ns, &desired, &records, &seen).await?;
                    desired.outcome = Outcome::Active;
                    // The replaced revision is drained: remove its workload now rather than
                    // at the next reconcile, which nothing may trigger for a while (the
                    // operator's own status write does not).
                    remove_revisions_except(ctx, &ns, &name, &[&desired]).await?;
                }
                Verdict::Failed(why) => {
                    fail(md, ctx, &ns, &desired, stable.as_ref(), &(Reason::AnalysisFailed, why)).await?;
                    return Ok(Action::requeue(Duration::from_millis(200)));
                }
                Verdict::Waiting(remaining) => analysing = Some(remaining),
            }
        }
    }
    let complete = desired.outcome == Outcome::Active && state.available;
    prune(md, ctx, &ns, &records, desired.number).await?;

    let serving = if complete { Some(&desired) } else { stable.as_ref() };
    let stable_available = stable_observed.as_ref().is_some_and(|s| pods(s.as_ref()).available > 0);
    let progress = status::Progress {
        replicas,
        desired_number: desired.number,
        desired: &state,
        complete,
        failed: None,
        serving: stable.as_ref().map(|s| (s.number, stable_available)),
        rolled_back: false,
        analysing,
    };
    let extra = status_fields(md, &desired, serving, None, &state);
    controller::write_status(md, ctx, &status::serving(&progress), extra).await?;
    let requeue = match (complete, analysing) {
        (true, _) => Duration::from_secs(600),
        (false, Some(remaining)) => remaining.max(Duration::from_secs(1)),
        (false, None) => Duration::from_secs(15),
    };
    Ok(Action::requeue(requeue))
}

/// Dereferences and validates the spec, then finds its revision among the records.
async fn spec_revision(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    records: &[RevisionRecord],
) -> Result<SpecRevision, Error> {
    let model = ctx.caches.model(ns, &md.spec.model_ref.name);
    let profile_name =
        md.spec.placement.as_ref().and_then(|p| p.accelerator_profile_ref.as_ref()).map(|r| r.name.clone());
    let profile = profile_name.and_then(|p| ctx.caches.profile(&p));
    let allows_unpinned = ctx.caches.namespace_label(ns, validate::ALLOW_UNPINNED_LABEL).is_some_and(|v| v == "true");
    let validate::Validated { model, digest } =
        match validate::check(md, model.as_deref(), profile.as_deref(), allows_unpinned) {
            Ok(v) => v,
            Err(b) => return Ok(SpecRevision::Blocked(b)),
        };
    let hash = build::revision_hash(md, model, &digest, profile.as_deref());
    Ok(match plan::latest(records) {
        Some(latest) if latest.snapshot.hash == hash => SpecRevision::Recorded(latest.clone()),
        _ => SpecRevision::New(Snapshot::of(md, model, &digest, profile.as_deref(), &hash)),
    })
}

/// Starts the rollout of a recorded revision again: a manual rollback to it (pinned), a
/// retry of a failed one, or a roll-forward after a pin was removed.
async fn restart(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    mut record: RevisionRecord,
    previous: Outcome,
    pinned: bool,
    stable: Option<&RevisionRecord>,
) -> Result<RevisionRecord, Error> {
    let kind = match (pinned, previous) {
        (true, _) => "rollback-manual",
        (false, Outcome::Failed) => "rollout-retried",
        _ => "rollout-started",
    };
    let mut fields = revision_fields(&record.snapshot, record.number);
    fields["from"] = json!(stable.map(|s| s.number));
    fields["previousOutcome"] = json!(previous.as_str());
    let generation = md.metadata.generation.unwrap_or_default();
    let who = requester(ctx, ns, &md.name_any(), generation).await?.unwrap_or_else(|| spec_manager(md));
    fields["requestedBy"] = json!(who);
    fields["changeCause"] = json!(md.annotations().get(CHANGE_CAUSE_ANNOTATION));
    audit(ctx, md, kind, fields).await?;
    let now = Timestamp::now().to_string();
    store::set_outcome(&ctx.client, ns, &record, Outcome::Progressing, None, Some(&now), None).await?;
    let what = if pinned { "rolling back to" } else { "rolling out" };
    event(
        ctx,
        md,
        EventType::Normal,
        Reason::RolloutStarted,
        format!("{what} revision {} ({})", record.number, describe(&record.snapshot)),
    )
    .await;
    record.outcome = Outcome::Progressing;
    record.rollout_started = Some(now);
    Ok(record)
}

/// Marks the desired revision failed, with the decision to roll back when there is a
/// stable revision to return to and automatic rollback is on.
async fn fail(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    desired: &RevisionRecord,
    stable: Option<&RevisionRecord>,
    (reason, message): &(Reason, String),
) -> Result<(), Error> {
    let mut fields = revision_fields(&desired.snapshot, desired.number);
    fields["reason"] = json!(reason.as_str());
    fields["message"] = json!(message);
    // The failure and what it causes, recorded together.
    let mut records = vec![("rollout-failed", fields.clone())];
    if *reason == Reason::DigestMismatch {
        records.push(("model-verification-failed", fields));
    }
    if let Some(s) = stable.filter(|_| md.spec.rollback.automatic) {
        let rollback = json!({ "from": desired.number, "to": s.number, "reason": reason.as_str(), "message": message });
        records.push(("rollback-automatic", rollback));
    }
    audit_all(ctx, md, records).await?;
    let generation = md.metadata.generation.unwrap_or_default();
    let text = format!("{}: {message}", reason.as_str());
    store::set_outcome(&ctx.client, ns, desired, Outcome::Failed, Some(&text), None, Some(generation)).await?;
    info!(name = %md.name_any(), revision = desired.number, reason = reason.as_str(), "rollout failed");
    Ok(())
}

/// A failed desired revision: serve the stable one at full size (automatic rollback), or
/// leave everything as it is for the operator's user to decide.
async fn hold(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    desired: &RevisionRecord,
    stable: Option<&RevisionRecord>,
) -> Result<Action, Error> {
    let failure = Reason::parse_failure(desired.outcome_reason.as_deref().unwrap_or_default());
    let name = md.name_any();
    let rolled_back = stable.is_some() && md.spec.rollback.automatic;
    let (state, serving_available) = match stable.filter(|_| rolled_back) {
        Some(s) => {
            remove_revisions_except(ctx, ns, &name, &[s]).await?;
            let applied = apply_revision(ctx, md, s, md.spec.replicas, true).await?;
            let (_, pods) = observe(ctx, ns, &name, &s.snapshot.hash);
            let state = status::revision_state(Some(&applied), &pods, md.spec.replicas);
            let available = state.ready_replicas > 0;
            (state, available)
        }
        None => {
            let (deployment, pods) = observe(ctx, ns, &name, &desired.snapshot.hash);
            (status::revision_state(deployment.as_ref(), &pods, md.spec.replicas), false)
        }
    };
    if rolled_back && md.status.as_ref().is_none_or(|s| s.failed_revision != Some(desired.number)) {
        let s = stable.map(|s| s.number).unwrap_or_default();
        let note = format!("revision {} failed ({}): serving revision {s}", desired.number, failure.0.as_str());
        event(ctx, md, EventType::Warning, Reason::RolledBack, note).await;
    }
    let progress = status::Progress {
        replicas: md.spec.replicas,
        desired_number: desired.number,
        desired: &state,
        complete: false,
        failed: Some(&failure),
        serving: stable.map(|s| (s.number, serving_available)),
        rolled_back,
        analysing: None,
    };
    let serving = stable.filter(|_| rolled_back);
    let extra = status_fields(md, desired, serving, Some(desired.number), &state);
    controller::write_status(md, ctx, &status::serving(&progress), extra).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// The desired revision has every replica available and the stable one is drained.
async fn succeed(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    desired: &RevisionRecord,
    records: &[RevisionRecord],
    analysis: &str,
) -> Result<(), Error> {
    let replaced: Vec<&RevisionRecord> = records
        .iter()
        .filter(|r| r.number != desired.number && matches!(r.outcome, Outcome::Active | Outcome::Progressing))
        .collect();
    let mut fields = revision_fields(&desired.snapshot, desired.number);
    fields["replaced"] = json!(replaced.iter().map(|r| r.number).collect::<Vec<_>>());
    if !analysis.is_empty() {
        fields["analysis"] = json!(analysis);
    }
    audit(ctx, md, "rollout-succeeded", fields).await?;
    store::set_outcome(&ctx.client, ns, desired, Outcome::Active, None, None, None).await?;
    for r in replaced {
        // Replaced by an older revision: that was a rollback.
        let outcome = if desired.number < r.number { Outcome::RolledBack } else { Outcome::Superseded };
        store::set_outcome(
            &ctx.client,
            ns,
            r,
            outcome,
            Some(&format!("replaced by revision {}", desired.number)),
            None,
            None,
        )
        .await?;
    }
    event(ctx, md, EventType::Normal, Reason::RolloutSucceeded, format!("revision {} is serving", desired.number))
        .await;
    Ok(())
}

/// Removes the records past `spec.rollback.revisionHistoryLimit`, audited.
async fn prune(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    records: &[RevisionRecord],
    desired: i64,
) -> Result<(), Error> {
    let pruned = plan::pruned(records, md.spec.rollback.revision_history_limit, desired);
    if pruned.is_empty() {
        return Ok(());
    }
    let numbers: Vec<i64> = pruned.iter().map(|r| r.number).collect();
    let fields = json!({
        "revisions": numbers,
        "revisionHistoryLimit": md.spec.rollback.revision_history_limit,
        "digests": pruned.iter().map(|r| r.snapshot.model_digest.clone()).collect::<Vec<_>>(),
    });
    audit(ctx, md, "history-pruned", fields).await?;
    for r in pruned {
        store::delete(&ctx.client, ns, r).await?;
    }
    event(ctx, md, EventType::Normal, Reason::HistoryPruned, format!("pruned revisions {numbers:?}")).await;
    Ok(())
}

/// Server-side applies one revision's workload at `replicas`: with every shared child
/// (Service, policy, budget…) for the desired revision, its Deployment and manifest only
/// for the stable one.
async fn apply_revision(
    ctx: &Context,
    md: &ModelDeployment,
    record: &RevisionRecord,
    replicas: i32,
    everything: bool,
) -> Result<Deployment, Error> {
    let (mut deployment, model, profile) = record.snapshot.materialize(md);
    deployment.spec.replicas = replicas;
    let inputs = Inputs {
        deployment: &deployment,
        model: &model,
        profile: profile.as_ref(),
        model_digest: record.snapshot.model_digest.clone(),
        revision: record.snapshot.hash.clone(),
        settings: &ctx.settings,
    };
    let children = build::build(&inputs);
    let ns = md.namespace().unwrap_or_default();
    if everything {
        return controller::apply(ctx, &ns, &md.name_any(), children).await;
    }
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    controller::apply_child(ctx, &maps, &children.manifest, &ctx.caches.manifests).await?;
    controller::apply_workload(ctx, &ns, &children.workload).await
}

/// A revision's worker Deployment and pods, as the watches last saw them.
fn observe(ctx: &Context, ns: &str, name: &str, hash: &str) -> (Option<Deployment>, Vec<Pod>) {
    let deployment = ctx.caches.deployment(ns, &labels::revision_name(name, hash)).map(|d| d.as_ref().clone());
    (deployment, ctx.caches.pods(ns, name, hash))
}

fn pods(deployment: Option<&Deployment>) -> Pods {
    let Some(d) = deployment else { return Pods::default() };
    let status = d.status.clone().unwrap_or_default();
    Pods {
        wanted: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        existing: status.replicas.unwrap_or(0),
        available: status.available_replicas.unwrap_or(0),
    }
}

/// Deletes the worker Deployments and manifests of every revision but `keep`.
async fn remove_revisions_except(ctx: &Context, ns: &str, name: &str, keep: &[&RevisionRecord]) -> Result<(), Error> {
    let hashes: Vec<&str> = keep.iter().map(|r| r.snapshot.hash.as_str()).collect();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    for d in cache::other_revisions(&ctx.caches.deployments, ns, name, &hashes) {
        info!(deployment = %d, "removing the worker Deployment of a revision that no longer serves");
        ctx.applier.delete(&deployments, ns, &d).await?;
    }
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    for m in cache::other_revisions(&ctx.caches.manifests, ns, name, &hashes) {
        ctx.applier.delete(&maps, ns, &m).await?;
    }
    Ok(())
}

fn status_fields(
    md: &ModelDeployment,
    desired: &RevisionRecord,
    serving: Option<&RevisionRecord>,
    failed: Option<i64>,
    state: &status::RevisionState,
) -> Value {
    let (name, ns) = (md.name_any(), md.namespace().unwrap_or_default());
    json!({
        "desiredRevision": desired.number,
        "servingRevision": serving.map(|s| s.number),
        "failedRevision": failed,
        "servingModelDigest": serving.map(|s| s.snapshot.model_digest.clone()),
        "replicas": state.replicas,
        "readyReplicas": state.ready_replicas,
        "endpoint": format!("http://{name}.{ns}.svc:{}/v1", labels::API_PORT),
    })
}

/// The audit fields describing a revision.
fn revision_fields(snapshot: &Snapshot, number: i64) -> Value {
    json!({
        "revision": number,
        "revisionHash": snapshot.hash,
        "model": snapshot.model_name,
        "modelDigest": snapshot.model_digest,
        "source": without_userinfo(&snapshot.model.source.uri),
        "quantization": snapshot.quantization,
        "engine": snapshot.engine.kind,
        "requestedBy": snapshot.requested_by,
        "changeCause": snapshot.change_cause,
        "generation": snapshot.generation,
    })
}

/// A source URI as the audit trail records it: credentials belong in a Secret, but a URI
/// written as `https://user:token@host/…` must not carry them into the trail.
fn without_userinfo(uri: &str) -> String {
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://{host}{}", &rest[authority_end..]),
                None => uri.to_owned(),
            }
        }
        None => uri.to_owned(),
    }
}

fn describe(snapshot: &Snapshot) -> String {
    format!("{} {} {}", snapshot.model_name, snapshot.quantization, snapshot.model_digest)
}

/// Appends one control-plane decision about `md` to the audit trail.
async fn audit(ctx: &Context, md: &ModelDeployment, event: &str, fields: Value) -> Result<(), Error> {
    audit_all(ctx, md, vec![(event, fields)]).await
}

/// Appends decisions about `md` that belong together, as consecutive records.
async fn audit_all(ctx: &Context, md: &ModelDeployment, decisions: Vec<(&str, Value)>) -> Result<(), Error> {
    let records = decisions.into_iter().map(|(event, fields)| decision_record(md, event, fields)).collect();
    ctx.audit.append_all(records).await?;
    Ok(())
}

fn decision_record(md: &ModelDeployment, event: &str, mut fields: Value) -> Value {
    // One decision per (object, generation, event, revision): what a retry after a crash
    // between auditing and acting repeats, and the audit trail records once.
    let subject = [&fields["revision"], &fields["from"], &fields["revisions"]]
        .into_iter()
        .find(|v| !v.is_null())
        .map(|v| v.to_string())
        .unwrap_or_default();
    let decision =
        format!("{}:{}:{event}:{subject}", md.uid().unwrap_or_default(), md.metadata.generation.unwrap_or_default());
    if let Some(obj) = fields.as_object_mut() {
        obj.insert("decision".into(), json!(decision));
        obj.insert("event".into(), json!(event));
        obj.insert("namespace".into(), json!(md.namespace()));
        obj.insert("modelDeployment".into(), json!(md.name_any()));
        obj.insert("uid".into(), json!(md.uid()));
    }
    fields
}

async fn event(ctx: &Context, md: &ModelDeployment, type_: EventType, reason: Reason, note: String) {
    controller::publish_event(ctx, type_, reason, &note, &md.object_ref(&())).await;
}

fn elapsed_seconds(started: Option<&str>) -> i64 {
    started.and_then(|s| s.parse::<Timestamp>().ok()).map_or(0, |t| Timestamp::now().duration_since(t).as_secs())
}

/// Who asked for `generation`: as this replica's webhook saw it, else as another replica's
/// webhook recorded it in the audit head (with two replicas, the Service sends half the
/// admissions to the one that does not lead). None without a webhook.
async fn requester(ctx: &Context, ns: &str, name: &str, generation: i64) -> Result<Option<String>, Error> {
    if let Some(user) = ctx.requesters.get(ns, name, generation) {
        return Ok(Some(user));
    }
    if !ctx.requesters.webhook_serves() {
        return Ok(None);
    }
    Ok(ctx.audit.requester(ns, name, generation).await?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_a_source_uri_never_reach_the_audit_trail() {
        assert_eq!(super::without_userinfo("https://bot:s3cr3t@mirror.internal/q/"), "https://mirror.internal/q/");
        assert_eq!(super::without_userinfo("s3://bucket/a@b/c"), "s3://bucket/a@b/c");
        assert_eq!(super::without_userinfo("pvc://models/q"), "pvc://models/q");
    }
}
