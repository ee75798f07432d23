//! Prometheus metrics of the driver: CSI calls by method and code with latency, and S3 Files API
//! calls by operation and outcome with latency. Served on `--metrics-address` at `/metrics`.
//!
//! There is no global registry: `Metrics` is created in `main` and handed to the server, which
//! puts it in each request's extensions for `rpc::call`, and to the cloud client.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The driver's metrics.
pub struct Metrics {
    registry: Registry,
    rpcs: Family<RpcLabels, Counter>,
    rpc_seconds: Family<MethodLabel, Histogram>,
    api_calls: Family<ApiLabels, Counter>,
    api_seconds: Family<OperationLabel, Histogram>,
    cloud_reachable: Gauge,
    restored_objects: Counter,
    restored_bytes: Counter,
    restores_running: Gauge,
    snapshot_warnings: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let rpcs = Family::<RpcLabels, Counter>::default();
        let rpc_seconds = Family::<MethodLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let api_calls = Family::<ApiLabels, Counter>::default();
        let api_seconds = Family::<OperationLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let mut registry = Registry::with_prefix("s3files_csi");
        registry.register(
            "rpc",
            "CSI calls served, by method and gRPC code",
            rpcs.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "Time to serve a CSI call",
            rpc_seconds.clone(),
        );
        registry.register(
            "api_calls",
            "S3 Files API calls (after the SDK's retries), by operation and outcome: ok, throttled, not_found, conflict, quota, validation, access_denied, transient, other",
            api_calls.clone(),
        );
        registry.register(
            "api_duration_seconds",
            "Time of an S3 Files API call, retries included",
            api_seconds.clone(),
        );
        let cloud_reachable = Gauge::default();
        registry.register(
            "cloud_api_reachable",
            "1 when the last background ping of the S3 Files API succeeded, else 0 (the controller)",
            cloud_reachable.clone(),
        );
        let restored_objects = Counter::default();
        registry.register(
            "restored_objects",
            "Objects copied by restores of snapshots and clones (the controller)",
            restored_objects.clone(),
        );
        let restored_bytes = Counter::default();
        registry.register(
            "restored_bytes",
            "Bytes copied server-side by restores of snapshots and clones (the controller)",
            restored_bytes.clone(),
        );
        let restores_running = Gauge::default();
        registry.register(
            "restores_running",
            "Restores of snapshots and clones this controller is copying now",
            restores_running.clone(),
        );
        let snapshot_warnings = Counter::default();
        registry.register(
            "snapshot_lifecycle_warnings",
            "Snapshots taken where a bucket lifecycle rule may expire the versions they need",
            snapshot_warnings.clone(),
        );
        Metrics {
            registry,
            rpcs,
            rpc_seconds,
            api_calls,
            api_seconds,
            cloud_reachable,
            restored_objects,
            restored_bytes,
            restores_running,
            snapshot_warnings,
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn observe_rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        self.rpcs
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
        self.rpc_seconds
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// What the cloud monitor's last ping found.
    pub fn set_cloud_reachable(&self, reachable: bool) {
        self.cloud_reachable.set(i64::from(reachable));
    }

    pub fn observe_api(&self, operation: &str, outcome: &str, elapsed: Duration) {
        self.api_calls
            .get_or_create(&ApiLabels {
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.api_seconds
            .get_or_create(&OperationLabel {
                operation: operation.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// One object of `bytes` copied by a restore.
    pub fn restored(&self, bytes: u64) {
        self.restored_objects.inc();
        self.restored_bytes.inc_by(bytes);
    }

    /// A restore began (`+1`) or ended (`-1`).
    pub fn restore_running(&self, delta: i64) {
        self.restores_running.inc_by(delta);
    }

    /// A snapshot was taken under a lifecycle rule that may expire its versions.
    pub fn snapshot_warning(&self) {
        self.snapshot_warnings.inc();
    }

    /// Calls of `operation` with `outcome` so far.
    pub fn api_calls(&self, operation: &str, outcome: &str) -> u64 {
        self.api_calls
            .get_or_create(&ApiLabels {
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .get()
    }

    /// Everything in OpenMetrics text format.
    pub fn render(&self) -> String {
        render_registry(&self.registry)
    }

    /// Serves `/metrics` on `addr` until the process ends.
    pub async fn serve(self: Arc<Self>, addr: std::net::SocketAddr) -> anyhow::Result<()> {
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(address = %listener.local_addr()?, "serving metrics");
        let app = axum::Router::new().route(
            "/metrics",
            get(move || {
                let metrics = self.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        );
        axum::serve(listener, app).await?;
        Ok(())
    }
}

/// A registry in OpenMetrics text format (empty if encoding fails, which it does not for
/// counters and histograms).
pub fn render_registry(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_and_rendered() {
        let m = Metrics::default();
        m.observe_rpc("CreateVolume", tonic::Code::Ok, Duration::from_millis(12));
        m.observe_api("CreateAccessPoint", "throttled", Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains(r#"s3files_csi_rpc_total{method="CreateVolume",code="Ok"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"s3files_csi_api_calls_total{operation="CreateAccessPoint",outcome="throttled"} 1"#), "{text}");
        assert!(
            text.contains("s3files_csi_rpc_duration_seconds_bucket"),
            "{text}"
        );
        assert_eq!(m.api_calls("CreateAccessPoint", "throttled"), 1);
    }
}
