//! taimatsu-operator: reconciles ModelDeployments into inference-worker workloads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use prometheus_client::registry::Registry;
use taimatsu_core::{AddressScope, EgressRanges};
use taimatsu_operator::audit::{AuditConfig, ControlPlaneAudit};
use taimatsu_operator::build::NetworkSettings;
use taimatsu_operator::webhook::{self, ClientAuth, Requesters, TlsSettings, WebhookConfig};
use taimatsu_operator::{build, context, controller, leader, metrics};
use taimatsu_telemetry::LogFormat;
use tracing::info;

/// Configuration, from flags or the environment.
#[derive(Debug, Parser)]
// A flag given twice takes its last value, so a wrapper can override a default it set.
#[command(version, about, args_override_self = true)]
struct Args {
    /// Default inference-worker image (air-gapped clusters point this at their registry).
    #[arg(long, env = "TAIMATSU_WORKER_IMAGE", default_value = "registry.local/taimatsu/inference-worker:0.1.0")]
    worker_image: String,
    /// In-house Hugging Face mirror that `hf://` sources resolve against. Unset: hf:// sources
    /// fail to fetch rather than reach the public hub.
    #[arg(long, env = "TAIMATSU_HF_MIRROR")]
    hf_mirror: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "TAIMATSU_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "taimatsu-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "TAIMATSU_LEASE_NAME", default_value = "taimatsu-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds without renewal after which another replica takes over.
    #[arg(long, env = "TAIMATSU_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// How long the leader keeps leading while its Lease renewals fail (an API server
    /// restart), counted from its last successful renewal; below the lease duration.
    /// Default: two thirds of it (10 s of 15 s, as client-go).
    #[arg(long, env = "TAIMATSU_LEASE_RENEW_DEADLINE_SECONDS")]
    lease_renew_deadline_seconds: Option<u64>,
    /// Log format: json (default, for log pipelines) or text.
    #[arg(long, env = "TAIMATSU_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Control-plane audit file (JSON lines, hash-chained), on a persistent volume in
    /// production. Empty: no file (stdout only).
    #[arg(long, env = "TAIMATSU_AUDIT_LOG", default_value = "/var/lib/taimatsu/audit/control-plane.jsonl")]
    audit_log: String,
    /// Also write control-plane audit records to stdout, for the cluster's log pipeline.
    #[arg(long, env = "TAIMATSU_AUDIT_STDOUT", default_value_t = true, action = clap::ArgAction::Set)]
    audit_stdout: bool,
    /// ConfigMap (in the lease namespace) anchoring the audit chain's head, so that every
    /// leader continues one chain.
    #[arg(long, env = "TAIMATSU_AUDIT_HEAD", default_value = "taimatsu-audit-head")]
    audit_head: String,
    /// Address of the admission webhook that records who changes ModelDeployments and
    /// Models. Empty: no webhook.
    #[arg(long, env = "TAIMATSU_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    webhook_addr: String,
    /// Directory with the webhook's tls.crt and tls.key. Without them the operator
    /// generates a CA and certificate and publishes the CA in --webhook-configuration.
    #[arg(long, env = "TAIMATSU_WEBHOOK_CERT_DIR", default_value = "/etc/taimatsu/webhook")]
    webhook_cert_dir: String,
    /// Names a generated webhook certificate is valid for (DNS names or IP addresses).
    #[arg(
        long,
        env = "TAIMATSU_WEBHOOK_DNS_NAMES",
        value_delimiter = ',',
        default_value = "taimatsu-operator-webhook.taimatsu-system.svc"
    )]
    webhook_dns_names: Vec<String>,
    /// Who may call the webhook: `certificate` (a client certificate from
    /// --webhook-client-ca-file, which the API server presents when its AdmissionConfiguration
    /// gives it one; see docs/security.md) or `none` (anyone who reaches the port: only where
    /// the API server cannot be configured, since any caller can then forge admission records).
    #[arg(long, env = "TAIMATSU_WEBHOOK_CLIENT_AUTH", default_value = "certificate")]
    webhook_client_auth: String,
    /// PEM file of the CA(s) that issue the API server's webhook client certificate. Use a CA
    /// that signs nothing else, or set --webhook-client-names.
    #[arg(long, env = "TAIMATSU_WEBHOOK_CLIENT_CA_FILE", default_value = "")]
    webhook_client_ca_file: String,
    /// Names (subject common name or DNS alternative name) the webhook client certificate
    /// must carry one of. Empty: any certificate from the CA.
    #[arg(long, env = "TAIMATSU_WEBHOOK_CLIENT_NAMES", value_delimiter = ',', default_value = "")]
    webhook_client_names: Vec<String>,
    /// The pod addresses rollout analysis may contact, as comma-separated CIDR blocks: the
    /// cluster's pod network (e.g. 10.244.0.0/16). A pod whose reported IP lies outside
    /// fails its analysis without being contacted. Empty: any pod IP, except addresses no
    /// pod has (link-local, where metadata services live; unspecified; multicast).
    #[arg(long, env = "TAIMATSU_ANALYSIS_POD_CIDRS", default_value = "", value_parser = parse_scope)]
    analysis_pod_cidrs: AddressScope,
    /// The ValidatingWebhookConfiguration whose caBundle receives a generated CA.
    #[arg(long, env = "TAIMATSU_WEBHOOK_CONFIGURATION", default_value = "taimatsu-operator")]
    webhook_configuration: String,
    #[command(flatten)]
    network: NetworkArgs,
}

/// What the worker NetworkPolicies let through besides the spec (see docs/install.md).
#[derive(Debug, clap::Args)]
struct NetworkArgs {
    /// Labels of the operator's own pods (`k=v,k=v`), which worker pods admit on their API
    /// and metrics ports for rollout analysis. Their namespace is --lease-namespace.
    #[arg(long, env = "TAIMATSU_OPERATOR_POD_LABELS", default_value = "app.kubernetes.io/name=taimatsu", value_parser = parse_labels)]
    operator_pod_labels: Labels,
    /// A namespace (an ingress controller's, a gateway's) whose pods may call every
    /// deployment's API port (8000). Repeat or separate with commas.
    #[arg(long = "ingress-namespace", env = "TAIMATSU_INGRESS_NAMESPACES", value_delimiter = ',')]
    ingress_namespaces: Vec<String>,
    /// A namespace whose pods may scrape the workers' metrics port (9090), which has no
    /// authentication. Repeat or separate with commas.
    #[arg(long = "monitoring-namespace", env = "TAIMATSU_MONITORING_NAMESPACES", value_delimiter = ',')]
    monitoring_namespaces: Vec<String>,
    /// Namespace of the cluster DNS pods, the only DNS servers workers may query.
    #[arg(long, env = "TAIMATSU_DNS_NAMESPACE", default_value = "kube-system")]
    dns_namespace: String,
    /// Labels of the cluster DNS pods (`k=v,k=v`).
    #[arg(long, env = "TAIMATSU_DNS_POD_LABELS", default_value = "k8s-app=kube-dns", value_parser = parse_labels)]
    dns_pod_labels: Labels,
    /// Address ranges of the model mirrors (comma-separated CIDR blocks), opened to workers
    /// on their model source's port: needed when sources are named by host name.
    #[arg(long, env = "TAIMATSU_MIRROR_CIDRS", default_value = "", value_parser = parse_cidrs)]
    mirror_cidrs: Cidrs,
    /// The ranges users may open with spec.access.egress.allowedCidrs (comma-separated CIDR
    /// blocks); a requested range must lie inside one. Empty: none may be opened.
    #[arg(long, env = "TAIMATSU_EGRESS_ALLOWED_CIDRS", default_value = "", value_parser = parse_egress_ranges)]
    egress_allowed_cidrs: EgressRanges,
}

/// Parsed `k=v,k=v` labels (a newtype: clap would read a bare map as repeated values).
#[derive(Clone, Debug)]
struct Labels(BTreeMap<String, String>);

/// Validated CIDR blocks, kept as written for the NetworkPolicies.
#[derive(Clone, Debug)]
struct Cidrs(Vec<String>);

impl NetworkArgs {
    fn settings(&self, operator_namespace: &str) -> NetworkSettings {
        NetworkSettings {
            operator_namespace: operator_namespace.to_owned(),
            operator_pod_labels: self.operator_pod_labels.0.clone(),
            ingress_namespaces: self.ingress_namespaces.clone(),
            monitoring_namespaces: self.monitoring_namespaces.clone(),
            dns_namespace: self.dns_namespace.clone(),
            dns_pod_labels: self.dns_pod_labels.0.clone(),
            mirror_cidrs: self.mirror_cidrs.0.clone(),
            egress_allowed: self.egress_allowed_cidrs.clone(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let format = if args.log_format == "text" { LogFormat::Text } else { LogFormat::Json };
    // Traces go out over OTLP when the standard OTEL_EXPORTER_OTLP_* variables say where.
    let _telemetry = taimatsu_telemetry::init("taimatsu-operator", format, "info,kube=warn");
    let identity = args.identity.clone().unwrap_or_else(|| format!("taimatsu-operator-{}", std::process::id()));

    let client = taimatsu_operator::api_client::client().await?;
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let http = serve_http(args.http_addr, registry, ready.clone()).await?;

    // Every replica audits (its webhook records changes whether or not it leads); the
    // chain's head in the API server keeps them one chain.
    let audit = Arc::new(ControlPlaneAudit::open(
        client.clone(),
        AuditConfig {
            file: (!args.audit_log.is_empty()).then(|| args.audit_log.clone().into()),
            stdout: args.audit_stdout,
            head_namespace: args.lease_namespace.clone(),
            head_name: args.audit_head.clone(),
            identity: identity.clone(),
        },
    )?);
    let requesters = Requesters::new(!args.webhook_addr.is_empty());
    let webhook = match args.webhook_addr.as_str() {
        "" => None,
        addr => {
            let config = WebhookConfig {
                addr: addr.parse().map_err(|e| anyhow::anyhow!("--webhook-addr {addr:?}: {e}"))?,
                tls: TlsSettings {
                    cert_dir: args.webhook_cert_dir.clone().into(),
                    dns_names: args.webhook_dns_names.clone(),
                    configuration: args.webhook_configuration.clone(),
                },
                client_auth: ClientAuth::from_flags(
                    &args.webhook_client_auth,
                    &args.webhook_client_ca_file,
                    &args.webhook_client_names,
                )?,
                egress_allowed: args.network.egress_allowed_cidrs.clone(),
            };
            Some(webhook::serve(client.clone(), config, audit.clone(), requesters.clone()).await?)
        }
    };

    let lease = leader::LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        duration: Duration::from_secs(args.lease_duration_seconds),
        renew: Duration::from_secs((args.lease_duration_seconds / 3).max(1)),
        renew_deadline: args.renew_deadline()?,
    };
    let mut leading = leader::campaign(client.clone(), lease);
    info!(%identity, "waiting for leadership");
    // Ready means "able to serve as a replica": standby replicas are ready too.
    ready.store(true, Ordering::SeqCst);
    tokio::select! {
        r = leading.wait_for(|l| *l) => { r?; }
        _ = shutdown_signal() => { info!("shutting down before leading"); return Ok(()); }
    }
    info!(%identity, "leading: starting the controller");

    let network = args.network.settings(&args.lease_namespace);
    let settings = build::Settings { worker_image: args.worker_image, hf_mirror: args.hf_mirror, network };
    let (ctx, writers) =
        context::Context::new(client, settings, metrics, &identity, audit, requesters, args.analysis_pod_cidrs);
    let mut lost = leading.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => info!("shutdown signal"),
            _ = lost.wait_for(|l| !*l) => info!("leadership lost: stopping so that one leader remains"),
        }
    };
    controller::run(Arc::new(ctx), writers, stop).await;
    http.abort();
    if let Some(webhook) = webhook {
        webhook.abort();
    }
    if !*leading.borrow() {
        // Exit non-zero so the pod restarts and campaigns again.
        anyhow::bail!("leadership lost");
    }
    Ok(())
}

async fn serve_http(
    addr: SocketAddr,
    registry: Registry,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let registry = Arc::new(registry);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut text = String::new();
                    match prometheus_client::encoding::text::encode(&mut text, &registry) {
                        Ok(()) => (StatusCode::OK, text),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(%addr, "serving /metrics, /healthz, /readyz");
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }))
}

impl Args {
    fn renew_deadline(&self) -> anyhow::Result<Duration> {
        let duration = self.lease_duration_seconds;
        let deadline = self.lease_renew_deadline_seconds.unwrap_or(duration * 2 / 3);
        if deadline >= duration {
            anyhow::bail!(
                "--lease-renew-deadline-seconds {deadline} must be below --lease-duration-seconds {duration}: \
                 a leader that kept leading past its lease could overlap a new one"
            );
        }
        Ok(Duration::from_secs(deadline))
    }
}

fn parse_scope(list: &str) -> Result<AddressScope, String> {
    AddressScope::parse_list(list).map_err(|e| e.to_string())
}

fn parse_egress_ranges(list: &str) -> Result<EgressRanges, String> {
    EgressRanges::parse_list(list).map_err(|e| e.to_string())
}

fn parse_cidrs(list: &str) -> Result<Cidrs, String> {
    AddressScope::parse_list(list).map_err(|e| e.to_string())?;
    Ok(Cidrs(list.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect()))
}

/// `k=v,k=v`; at least one label, since an empty selector would match every pod.
fn parse_labels(list: &str) -> Result<Labels, String> {
    let labels = list
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(format!("{pair:?} is not a label: write key=value, e.g. app.kubernetes.io/name=taimatsu")),
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    if labels.is_empty() {
        return Err("give at least one key=value label: an empty selector would select every pod".into());
    }
    Ok(Labels(labels))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
