//! A fake Kubernetes API on loopback serving one coordination.k8s.io/v1 Lease as
//! csi-provisioner's leader election leaves it, and a kubeconfig that points at it. Tests and
//! benchmarks use it to run controllers with `--leader-lease` and to hand leadership over.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

/// The Lease's holder and acquire time; `None` for a Lease without a holder.
type Holder = Arc<Mutex<Option<(String, SystemTime)>>>;

pub struct FakeLease {
    pub namespace: String,
    pub name: String,
    holder: Holder,
    reads: Arc<std::sync::atomic::AtomicU64>,
    dir: tempfile::TempDir,
}

fn micro_time(t: SystemTime) -> Value {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let ts = k8s_openapi::jiff::Timestamp::try_from(t).expect("a time after 1970");
    serde_json::to_value(MicroTime(ts)).expect("json")
}

async fn get_lease(
    State((ns, name, holder, reads)): State<(
        String,
        String,
        Holder,
        Arc<std::sync::atomic::AtomicU64>,
    )>,
    Path((want_ns, want_name)): Path<(String, String)>,
) -> (StatusCode, String) {
    reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if want_ns != ns || want_name != name {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
            "message": format!("leases.coordination.k8s.io \"{want_name}\" not found")});
        return (StatusCode::NOT_FOUND, body.to_string());
    }
    let mut spec = json!({"leaseDurationSeconds": 15});
    if let Some((who, at)) = holder.lock().expect("lock").clone() {
        spec["holderIdentity"] = Value::String(who);
        spec["acquireTime"] = micro_time(at);
        spec["renewTime"] = micro_time(SystemTime::now());
    }
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": spec,
    });
    (StatusCode::OK, lease.to_string())
}

/// A kubeconfig for an unauthenticated API server at `url`.
pub fn write_kubeconfig(path: &std::path::Path, url: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n"
        ),
    )
    .expect("kubeconfig");
}

impl FakeLease {
    /// Serves Lease `namespace/name` held by `holder` since `acquired`.
    pub async fn start(namespace: &str, name: &str, holder: &str, acquired: SystemTime) -> Self {
        let state: Holder = Arc::new(Mutex::new(Some((holder.to_owned(), acquired))));
        let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let app = Router::new()
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                get(get_lease),
            )
            .with_state((
                namespace.to_owned(),
                name.to_owned(),
                state.clone(),
                reads.clone(),
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("fake lease api") });
        let dir = tempfile::tempdir().expect("tempdir");
        write_kubeconfig(&dir.path().join("kubeconfig"), &url);
        FakeLease {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            holder: state,
            reads,
            dir,
        }
    }

    /// Hands the lease to `holder` at `acquired` (`None`: released, no holder).
    pub fn set(&self, holder: Option<(&str, SystemTime)>) {
        *self.holder.lock().expect("lock") = holder.map(|(h, t)| (h.to_owned(), t));
    }

    /// The KUBECONFIG for a process that should read this Lease.
    pub fn kubeconfig(&self) -> String {
        self.dir.path().join("kubeconfig").display().to_string()
    }

    /// The `--leader-lease` value naming this Lease.
    pub fn flag(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// How often the Lease was read.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::SeqCst)
    }
}
