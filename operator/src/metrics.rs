//! Prometheus metrics of the operator. Labels are bounded: error categories only.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub category: &'static str,
}

pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub managed_deployments: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            managed_deployments: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("taimatsu_operator");
        r.register("reconciles", "Reconciliations run", m.reconciles.clone());
        r.register("reconcile_errors", "Reconciliations that failed, by category", m.reconcile_errors.clone());
        r.register("reconcile_duration_seconds", "Time spent in one reconciliation", m.reconcile_duration.clone());
        r.register(
            "managed_model_deployments",
            "ModelDeployments in the operator's cache",
            m.managed_deployments.clone(),
        );
        m
    }
}
