//! `kubectl taimatsu`: revision history, declarative rollback, status, audit
//! verification, and Model manifests from a Hugging Face Hub mirror. Installed on the PATH as `kubectl-taimatsu`, kubectl runs it as a plugin.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use taimatsu_core::audit_chain;
use taimatsu_crds::v1alpha1::{CHANGE_CAUSE_ANNOTATION, ModelDeployment};
use taimatsu_operator::model_manifest;
use taimatsu_operator::revision::{Outcome, RevisionRecord, store};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl taimatsu",
    version,
    about = "History, rollback, status and audit verification for Taimatsu ModelDeployments; Model manifests from a Hub mirror"
)]
struct Cli {
    /// Namespace of the ModelDeployment (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The revisions of a ModelDeployment: model, digest, quantization, time, who, why, outcome.
    History { name: String },
    /// Serve an earlier revision: sets spec.rollback.toRevision and the change-cause annotation.
    /// In a GitOps cluster, make the same change in Git instead (the tool would revert this one).
    Rollback {
        name: String,
        #[arg(long)]
        to_revision: i64,
        /// Why; recorded with the rollback in the audit trail.
        #[arg(long)]
        reason: String,
    },
    /// Serve what the spec describes again: removes spec.rollback.toRevision.
    Resume {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// Desired, serving and failed revisions, replicas, endpoint and conditions.
    Status { name: String },
    /// The control-plane audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Models.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Prints the Model of a Hugging Face Hub repository, from an in-house mirror: the
    /// revision pinned to its commit, every file with its size and sha256 (LFS files from
    /// the mirror's model API, small files hashed from their bytes). HF_TOKEN is sent
    /// when set. Needs no cluster.
    Manifest {
        /// `hf://<org>/<name>@<revision>`; a branch or tag is written as the commit it names now.
        source: String,
        /// The mirror's base URL (what HF_ENDPOINT would be for the Hub's own clients).
        #[arg(long)]
        mirror: String,
        /// PEM CA bundle that signs the mirror's certificate.
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        /// metadata.name (default: the repository name in lower case).
        #[arg(long)]
        name: Option<String>,
        /// spec.architecture (default: config.json's model_type).
        #[arg(long)]
        architecture: Option<String>,
        /// spec.parameters, e.g. 135M.
        #[arg(long)]
        parameters: Option<String>,
        /// spec.contextLength (default: config.json's max_position_embeddings).
        #[arg(long)]
        context_length: Option<i64>,
        /// spec.license (default: the model card's license).
        #[arg(long)]
        license: Option<String>,
        /// Only this file of the repository (repeatable), e.g. one quantization of a GGUF repository.
        #[arg(long = "file")]
        only: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verifies audit files (one or several segments of one chain, in any order) and names
    /// the first bad record. Works offline on copies of the files.
    Verify {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Also check that the chain reaches the head recorded in the cluster (the ConfigMap
        /// taimatsu-audit-head in this namespace): records cut off the end are detected.
        #[arg(long)]
        against_cluster: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Audit { command: AuditCommand::Verify { files, against_cluster: false } } = &cli.command {
        return verify(files, None);
    }
    if let Command::Model { command } = cli.command {
        return model(command).await;
    }
    let client = Client::try_default().await?;
    let ns = cli.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
    match cli.command {
        Command::History { name } => history(&client, &ns, &name).await,
        Command::Rollback { name, to_revision, reason } => {
            let records = store::list(&client, &ns, &name).await?;
            if !records.iter().any(|r| r.number == to_revision) {
                let known: Vec<i64> = records.iter().map(|r| r.number).collect();
                anyhow::bail!("{ns}/{name} has no revision {to_revision}; recorded revisions: {known:?}");
            }
            pin(&client, &ns, &name, json!(to_revision), &reason).await?;
            println!(
                "{ns}/{name}: rolling back to revision {to_revision}; follow with `kubectl taimatsu status {name}`"
            );
            Ok(())
        }
        Command::Resume { name, reason } => {
            pin(&client, &ns, &name, json!(null), &reason).await?;
            println!("{ns}/{name}: serving the spec again");
            Ok(())
        }
        Command::Status { name } => status(&client, &ns, &name).await,
        Command::Audit { command: AuditCommand::Verify { files, .. } } => {
            let heads: Api<ConfigMap> = Api::namespaced(client, &ns);
            let head = heads
                .get_opt("taimatsu-audit-head")
                .await?
                .and_then(|m| m.data?.get("last-record").cloned())
                .ok_or_else(|| anyhow::anyhow!("no audit head ConfigMap taimatsu-audit-head in namespace {ns} (use -n with the operator's namespace)"))?;
            verify(&files, Some(&head))
        }
        Command::Model { .. } => unreachable!("handled without a cluster above"),
    }
}

/// `model manifest`: the Model YAML on stdout, what is left to fill in on stderr.
async fn model(command: ModelCommand) -> anyhow::Result<()> {
    let ModelCommand::Manifest { source, mirror, ca, name, architecture, parameters, context_length, license, only } =
        command;
    let source = taimatsu_core::HfSource::parse(&source)?;
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let hub = model_manifest::HubClient::new(&mirror, ca.as_deref(), token)?;
    let fields = model_manifest::ModelFields { name, architecture, parameters, context_length, license, only };
    let generated = model_manifest::generate(&hub, &source, &fields).await?;
    print!("{}", generated.yaml);
    if !generated.missing.is_empty() {
        let flags: Vec<String> = generated.missing.iter().map(|f| format!("spec.{f}")).collect();
        eprintln!("fill in {} before applying (or pass them as flags): the API requires them", flags.join(", "));
    }
    Ok(())
}

/// Sets (or clears, with null) `spec.rollback.toRevision`, with the reason as change-cause.
async fn pin(client: &Client, ns: &str, name: &str, revision: serde_json::Value, reason: &str) -> anyhow::Result<()> {
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let patch = json!({
        "metadata": { "annotations": { CHANGE_CAUSE_ANNOTATION: reason } },
        "spec": { "rollback": { "toRevision": revision } },
    });
    api.patch(
        name,
        &PatchParams { field_manager: Some("kubectl-taimatsu".into()), ..Default::default() },
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

async fn history(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let records = store::list(client, ns, name).await?;
    if records.is_empty() {
        anyhow::bail!("{ns}/{name} has no recorded revisions (is the name right, and the operator running?)");
    }
    println!(
        "{:<4} {:<12} {:<28} {:<20} {:<9} {:<8} {:<22} {:<24} CAUSE",
        "REV", "OUTCOME", "MODEL", "DIGEST", "QUANT", "ENGINE", "CREATED", "BY"
    );
    for r in &records {
        println!("{}", history_line(r));
    }
    Ok(())
}

fn history_line(r: &RevisionRecord) -> String {
    let s = &r.snapshot;
    let digest: String = s.model_digest.chars().take(19).collect();
    let outcome = match (&r.outcome, &r.outcome_reason) {
        (Outcome::Failed, Some(why)) => format!("failed ({})", why.split(':').next().unwrap_or_default()),
        (o, _) => o.as_str().to_owned(),
    };
    format!(
        "{:<4} {:<12} {:<28} {:<20} {:<9} {:<8} {:<22} {:<24} {}",
        r.number,
        outcome,
        s.model_name,
        digest,
        s.quantization.to_string(),
        s.engine.kind.to_string(),
        r.created.clone().unwrap_or_default(),
        s.requested_by,
        s.change_cause.clone().unwrap_or_default()
    )
}

async fn status(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let md = api.get(name).await?;
    let s = md.status.unwrap_or_default();
    let show = |v: Option<i64>| v.map_or("-".to_owned(), |n| n.to_string());
    println!("{ns}/{name}");
    println!("  desired revision:  {}", show(s.desired_revision));
    println!("  serving revision:  {}", show(s.serving_revision));
    if let Some(failed) = s.failed_revision {
        println!("  failed revision:   {failed} (not retried until the spec changes)");
    }
    if let Some(pin) = md.spec.rollback.to_revision {
        println!("  pinned to:         {pin} (spec.rollback.toRevision)");
    }
    println!("  replicas:          {} ready of {}", s.ready_replicas.unwrap_or(0), md.spec.replicas);
    println!("  model digest:      {}", s.serving_model_digest.unwrap_or_else(|| "-".into()));
    println!("  endpoint:          {}", s.endpoint.unwrap_or_else(|| "-".into()));
    for c in s.conditions {
        println!("  {:<12} {:<5} {:<26} {}", c.type_, c.status, c.reason, c.message);
    }
    Ok(())
}

/// Merges and verifies audit segments; with `head`, also checks the chain reaches it.
fn verify(files: &[std::path::PathBuf], head: Option<&str>) -> anyhow::Result<()> {
    let contents: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display())))
        .collect::<Result<_, _>>()?;
    let slices: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
    let merged = audit_chain::merge_segments(&slices)?;
    let report = audit_chain::verify(&merged.log).map_err(|e| anyhow::anyhow!("audit chain broken at merged {e}"))?;
    if let Some(head) = head {
        let v: serde_json::Value = serde_json::from_str(head)?;
        let (seq, hash) = (v["seq"].as_u64().unwrap_or(0), v["hash"].as_str().unwrap_or_default());
        if report.records < seq {
            anyhow::bail!(
                "the files end at record {} but the cluster's head is record {seq}: records {}..{seq} are missing (cut off, or a segment was not given)",
                report.records,
                report.records + 1
            );
        }
        let line = merged.log.split(|b| *b == b'\n').nth(seq.saturating_sub(1) as usize).unwrap_or_default();
        let at: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
        if at["hash"].as_str() != Some(hash) {
            anyhow::bail!("record {seq} differs from the cluster's head (hash {hash}): the files were altered");
        }
    }
    println!(
        "ok: {} records, last hash {}{}{}",
        report.records,
        report.last_hash,
        if merged.incomplete_tails > 0 {
            format!("; {} torn last line(s) ignored", merged.incomplete_tails)
        } else {
            String::new()
        },
        if head.is_some() { "; reaches the cluster's head" } else { "" }
    );
    Ok(())
}
