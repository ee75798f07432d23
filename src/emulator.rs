//! A local emulator of the Amazon S3 Files control-plane API (REST-JSON, version 2025-05-05).
//!
//! It serves all 21 operations of the service model with its paths, methods, status codes,
//! member names, validation rules and error shapes (`x-amzn-errortype` header and
//! `{errorCode, message}` body), so the official SDKs and the AWS CLI work against it unchanged
//! (`AWS_ENDPOINT_URL_S3FILES=http://127.0.0.1:PORT`). Any SigV4 credentials are accepted.
//!
//! Admin endpoints, outside the API's paths:
//! - `GET|PUT /_emulator/faults`: the fault configuration (see [`faults`]).
//! - `GET /_emulator/storage`: where the buckets' data lives, for the local data plane.
//! - `GET /metrics`: call counters in Prometheus text format.

pub mod faults;
pub mod model;
pub mod store;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::{debug, info, warn};

use faults::{FaultConfig, Faults};
use store::{ApiError, ApiResult, ErrorKind, IdGen, Journal, Outcome, Query, Settings, State};

/// Every operation of the service model.
pub const OPERATIONS: &[&str] = &[
    "CreateAccessPoint",
    "CreateFileSystem",
    "CreateMountTarget",
    "DeleteAccessPoint",
    "DeleteFileSystem",
    "DeleteFileSystemPolicy",
    "DeleteMountTarget",
    "GetAccessPoint",
    "GetFileSystem",
    "GetFileSystemPolicy",
    "GetMountTarget",
    "GetSynchronizationConfiguration",
    "ListAccessPoints",
    "ListFileSystems",
    "ListMountTargets",
    "ListTagsForResource",
    "PutFileSystemPolicy",
    "PutSynchronizationConfiguration",
    "TagResource",
    "UntagResource",
    "UpdateMountTarget",
];

/// Where the data of the buckets that file systems name lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BucketStore {
    /// Bucket `b` is the directory `<root>/b`.
    Local { root: PathBuf },
    /// An S3-compatible endpoint.
    S3 { endpoint: String },
}

/// Emulator configuration, built from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub settings: Settings,
    /// Persist state here; `None` keeps it in memory only.
    pub state_dir: Option<PathBuf>,
    pub buckets: BucketStore,
    pub faults: FaultConfig,
    /// Seed for ids and fault dice, for reproducible runs.
    pub seed: Option<u64>,
}

struct Inner {
    state: State,
    journal: Option<Journal>,
    ids: IdGen,
    /// Overrides `settings.ready_after` when set at run time.
    ready_after: Option<f64>,
}

/// The emulator: state, faults and settings, shared by all requests.
pub struct Emulator {
    inner: Mutex<Inner>,
    settings: Settings,
    buckets: BucketStore,
    pub faults: Faults,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Emulator {
    /// Loads persisted state, if any.
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        config
            .faults
            .validate(OPERATIONS)
            .map_err(anyhow::Error::msg)?;
        let (state, journal) = match &config.state_dir {
            Some(dir) => {
                let (state, journal) = Journal::open(dir)?;
                (state, Some(journal))
            }
            None => (State::default(), None),
        };
        info!(
            file_systems = state.file_systems.len(),
            access_points = state.access_points.len(),
            mount_targets = state.mount_targets.len(),
            "emulator state loaded"
        );
        Ok(Arc::new(Emulator {
            inner: Mutex::new(Inner {
                state,
                journal,
                ids: IdGen::new(config.seed),
                ready_after: None,
            }),
            settings: config.settings,
            buckets: config.buckets,
            faults: Faults::new(config.faults, config.seed),
        }))
    }

    /// Serves one API call: faults first, then the operation under the state lock; changes are
    /// journaled before the answer is sent.
    async fn call(
        &self,
        op: &'static str,
        run: impl FnOnce(&State, &Settings, &mut IdGen, f64) -> ApiResult<Outcome>,
    ) -> Response {
        let result = match self.faults.before(op).await {
            Some(err) => Err(err),
            // Applied (and journaled) first; then the answer may be lost.
            None => self
                .execute(run)
                .and_then(|answer| match self.faults.after(op) {
                    Some(lost) => Err(lost),
                    None => Ok(answer),
                }),
        };
        match result {
            Ok((status, body)) => {
                self.faults.count(op, "ok");
                json_response(status, &body)
            }
            Err(err) => {
                self.faults.count(op, err.kind.type_name());
                debug!(op, kind = err.kind.type_name(), message = %err.message, "answered with an error");
                error_response(&err)
            }
        }
    }

    fn execute(
        &self,
        run: impl FnOnce(&State, &Settings, &mut IdGen, f64) -> ApiResult<Outcome>,
    ) -> ApiResult<(u16, Value)> {
        let mut inner = self.inner.lock().map_err(|_| {
            ApiError::new(
                ErrorKind::Internal,
                "InternalFailure",
                "emulator state is poisoned by an earlier panic",
            )
        })?;
        let Inner {
            state,
            journal,
            ids,
            ready_after,
        } = &mut *inner;
        let settings = match ready_after {
            Some(r) => std::borrow::Cow::Owned(Settings {
                ready_after: *r,
                ..self.settings.clone()
            }),
            None => std::borrow::Cow::Borrowed(&self.settings),
        };
        let outcome = run(state, &settings, ids, now())?;
        if outcome.changes.is_empty() {
            return Ok(outcome.answer);
        }
        let persist_error = |e: std::io::Error| {
            warn!(error = %e, "could not persist state");
            ApiError::new(
                ErrorKind::Internal,
                "InternalFailure",
                format!("could not persist state: {e}"),
            )
        };
        // Journal first: a change is durable before it is visible or acknowledged.
        if let Some(journal) = journal.as_mut() {
            journal.append(&outcome.changes).map_err(persist_error)?;
        }
        for change in outcome.changes {
            state.apply(change);
        }
        if let Some(journal) = journal.as_mut()
            && let Err(e) = journal.compact_if_due(state)
        {
            // The journal still holds every change; compaction is retried after the next one.
            warn!(error = %e, "could not compact the state journal");
        }
        Ok(outcome.answer)
    }

    /// The axum router serving the API and the admin endpoints.
    pub fn router(self: &Arc<Self>) -> Router {
        use axum::routing::put;
        Router::new()
            .route(
                "/file-systems",
                put(create_file_system).get(list_file_systems),
            )
            .route(
                "/file-systems/{id}",
                get(get_file_system).delete(delete_file_system),
            )
            .route(
                "/file-systems/{id}/policy",
                get(get_policy).put(put_policy).delete(delete_policy),
            )
            .route(
                "/file-systems/{id}/synchronization-configuration",
                get(get_sync).put(put_sync),
            )
            .route(
                "/access-points",
                put(create_access_point).get(list_access_points),
            )
            .route(
                "/access-points/{id}",
                get(get_access_point).delete(delete_access_point),
            )
            .route(
                "/mount-targets",
                put(create_mount_target).get(list_mount_targets),
            )
            .route(
                "/mount-targets/{id}",
                get(get_mount_target)
                    .put(update_mount_target)
                    .delete(delete_mount_target),
            )
            .route(
                "/resource-tags/{id}",
                get(list_tags).post(tag_resource).delete(untag_resource),
            )
            .route("/_emulator/faults", get(get_faults).put(put_faults))
            .route("/_emulator/storage", get(get_storage))
            .route("/_emulator/health", get(|| async { "ok" }))
            .route("/metrics", get(metrics))
            .fallback(unknown_operation)
            .with_state(self.clone())
    }

    /// Binds `listen` and serves until `shutdown` resolves. Returns the bound address first
    /// through `on_bound` (useful with port 0).
    /// Serves on a free loopback port in a background task, for as long as the process runs
    /// (benchmarks); returns the address once it listens.
    pub async fn serve_on_loopback(self: &Arc<Self>) -> anyhow::Result<SocketAddr> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let serving = self.clone();
        tokio::spawn(async move {
            let listen = SocketAddr::from(([127, 0, 0, 1], 0));
            let _ = serving
                .serve(listen, std::future::pending(), move |addr| {
                    let _ = tx.send(addr);
                })
                .await;
        });
        Ok(rx.await?)
    }

    pub async fn serve(
        self: Arc<Self>,
        listen: SocketAddr,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
        on_bound: impl FnOnce(SocketAddr),
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        on_bound(local);
        info!(address = %local, "S3 Files emulator listening");
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await?;
        info!("emulator stopped");
        Ok(())
    }

    /// Changes how long new resources stay `creating` (for tests).
    pub fn set_ready_after(&self, seconds: f64) {
        // Settings are read under the state lock, so swap them there.
        if let Ok(mut inner) = self.inner.lock() {
            inner.ready_after = Some(seconds);
        }
    }

    /// Makes sure file system `id` exists over `bucket_arn`, available, with a mount target in
    /// every emulated zone, so deployments (the chart's local profile) can name it in a
    /// StorageClass before anything runs. Idempotent: an existing `id` is left as it is.
    pub fn preset_file_system(&self, id: &str, bucket_arn: &str) -> anyhow::Result<()> {
        validate::file_system_id("--preset-file-system", id)
            .map_err(|e| anyhow::anyhow!("{}", e.0))?;
        let fail = |e: ApiError| anyhow::anyhow!("presetting {id}: {}", e.message);
        self.execute(|state, settings, ids, now| {
            if state.file_systems.contains_key(id) {
                return Ok(Outcome {
                    changes: vec![],
                    answer: (200, Value::Null),
                });
            }
            let request = model::CreateFileSystemRequest {
                bucket: Some(bucket_arn.to_owned()),
                role_arn: Some(format!(
                    "arn:aws:iam::{}:role/s3files-local",
                    settings.account_id
                )),
                client_token: Some(format!("preset-{id}")),
                ..Default::default()
            };
            let mut outcome = state.create_file_system(settings, ids, request, now)?;
            for change in &mut outcome.changes {
                if let store::Change::PutFileSystem(fs) = change {
                    fs.arn = fs.arn.replace(&fs.id, id);
                    fs.id = id.to_owned();
                    fs.available_at = now;
                }
            }
            Ok(outcome)
        })
        .map_err(fail)?;
        let zones = self.settings.zone_ids.clone();
        for zone in zones {
            // The first subnet id that the emulator maps into this zone.
            let Some(subnet) = (1..10_000u32)
                .map(|i| format!("subnet-{i:017x}"))
                .find(|s| self.settings.zone_of(s) == zone)
            else {
                continue;
            };
            self.execute(|state, settings, ids, now| {
                let exists = state
                    .live_mount_targets(now)
                    .any(|m| m.file_system_id == id && m.availability_zone_id == zone);
                if exists {
                    return Ok(Outcome {
                        changes: vec![],
                        answer: (200, Value::Null),
                    });
                }
                let request = model::CreateMountTargetRequest {
                    file_system_id: Some(id.to_owned()),
                    subnet_id: Some(subnet.clone()),
                    ..Default::default()
                };
                let mut outcome = state.create_mount_target(settings, ids, request, now)?;
                for change in &mut outcome.changes {
                    if let store::Change::PutMountTarget(mt) = change {
                        mt.available_at = now;
                    }
                }
                Ok(outcome)
            })
            .map_err(fail)?;
        }
        // Local buckets are directories; the S3 bucket of `--bucket-endpoint` is made by the
        // caller. Checked on every start: the directory may be gone while the state stayed.
        ensure_bucket(&self.buckets, bucket_arn).map_err(fail)?;
        info!(file_system = id, bucket = bucket_arn, "file system preset");
        Ok(())
    }

    /// Number of access points currently stored (for tests and benchmarks).
    pub fn access_point_count(&self) -> usize {
        self.inner
            .lock()
            .map(|i| i.state.access_points.len())
            .unwrap_or(0)
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if body.is_null() {
        return code.into_response();
    }
    let mut resp = (code, body.to_string()).into_response();
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

fn error_response(err: &ApiError) -> Response {
    let mut resp = json_response(err.kind.http_status(), &err.body());
    resp.headers_mut().insert(
        "x-amzn-errortype",
        HeaderValue::from_static(err.kind.type_name()),
    );
    resp
}

fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::new(
            ErrorKind::Validation,
            "SerializationException",
            format!("invalid request body at '{path}': {}", e.inner()),
        )
    })
}

fn parse_query(raw: Option<String>) -> Query {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

type Emu = AxumState<Arc<Emulator>>;

macro_rules! with_body {
    ($emu:expr, $op:literal, $body:expr, |$state:ident, $settings:ident, $ids:ident, $now:ident, $req:ident| $run:expr) => {{
        let parsed = parse_body(&$body);
        $emu.call($op, move |$state, $settings, $ids, $now| {
            let $req = parsed?;
            let _ = (&$settings, &$ids, &$now);
            $run
        })
        .await
    }};
}

async fn create_file_system(AxumState(emu): Emu, body: Bytes) -> Response {
    let buckets = emu.buckets.clone();
    with_body!(emu, "CreateFileSystem", body, |state, s, ids, now, req| {
        let outcome = state.create_file_system(s, ids, req, now)?;
        if let Some(bucket) = outcome.answer.1.get("bucket").and_then(Value::as_str) {
            ensure_bucket(&buckets, bucket)?;
        }
        Ok(outcome)
    })
}

/// With local buckets, a file system's bucket directory (of `bucket`, an ARN) is created so
/// the data plane can use it. Idempotent.
fn ensure_bucket(buckets: &BucketStore, bucket: &str) -> ApiResult<()> {
    let BucketStore::Local { root } = buckets else {
        return Ok(());
    };
    let name = bucket.rsplit(":::").next().unwrap_or(bucket);
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(ApiError::new(
            ErrorKind::Validation,
            "BadRequest",
            format!("bucket name {name:?} is not valid"),
        ));
    }
    std::fs::create_dir_all(root.join(name)).map_err(|e| {
        ApiError::new(
            ErrorKind::Internal,
            "InternalFailure",
            format!("cannot create bucket directory: {e}"),
        )
    })
}

async fn list_file_systems(AxumState(emu): Emu, RawQuery(q): RawQuery) -> Response {
    let q = parse_query(q);
    emu.call("ListFileSystems", move |st, _, _, now| {
        st.list_file_systems(&q, now)
    })
    .await
}

async fn get_file_system(AxumState(emu): Emu, Path(id): Path<String>) -> Response {
    emu.call("GetFileSystem", move |st, _, _, now| {
        st.get_file_system(&id, now)
    })
    .await
}

async fn delete_file_system(
    AxumState(emu): Emu,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let q = parse_query(q);
    emu.call("DeleteFileSystem", move |st, _, _, now| {
        st.delete_file_system(&id, &q, now)
    })
    .await
}

async fn get_policy(AxumState(emu): Emu, Path(id): Path<String>) -> Response {
    emu.call("GetFileSystemPolicy", move |st, _, _, _| st.get_policy(&id))
        .await
}

async fn put_policy(AxumState(emu): Emu, Path(id): Path<String>, body: Bytes) -> Response {
    with_body!(emu, "PutFileSystemPolicy", body, |st, s, ids, now, req| st
        .put_policy(&id, req))
}

async fn delete_policy(AxumState(emu): Emu, Path(id): Path<String>) -> Response {
    emu.call("DeleteFileSystemPolicy", move |st, _, _, _| {
        st.delete_policy(&id)
    })
    .await
}

async fn get_sync(AxumState(emu): Emu, Path(id): Path<String>) -> Response {
    emu.call("GetSynchronizationConfiguration", move |st, _, _, _| {
        st.get_sync(&id)
    })
    .await
}

async fn put_sync(AxumState(emu): Emu, Path(id): Path<String>, body: Bytes) -> Response {
    with_body!(
        emu,
        "PutSynchronizationConfiguration",
        body,
        |st, s, ids, now, req| st.put_sync(&id, req)
    )
}

async fn create_access_point(AxumState(emu): Emu, body: Bytes) -> Response {
    with_body!(emu, "CreateAccessPoint", body, |st, s, ids, now, req| st
        .create_access_point(s, ids, req, now))
}

async fn list_access_points(AxumState(emu): Emu, RawQuery(q): RawQuery) -> Response {
    let q = parse_query(q);
    emu.call("ListAccessPoints", move |st, _, _, now| {
        st.list_access_points(&q, now)
    })
    .await
}

async fn get_access_point(AxumState(emu): Emu, Path(id): Path<String>) -> Response {
    emu.call("GetAccessPoint", move |st, _, _, now| {
        st.get_access_point(&id, now)
    })
    .await
}

async fn delete_access_point(AxumState(emu): Emu, Path(id): Path<String>) -> Response {
    emu.call("DeleteAccessPoint", move |st, _, _, _| {
        st.delete_access_point(&id)
    })
    .await
}

async fn create_mount_target(AxumState(emu): Emu, body: Bytes) -> Response {
    with_body!(emu, "CreateMountTarget", body, |st, s, ids, now, req| st
        .create_mount_target(s, ids, req, now))
}

async fn list_mount_targets(AxumState(emu): Emu, RawQuery(q): RawQuery) -> Response {
    let q = parse_query(q);
    emu.call("ListMountTargets", move |st, _, _, now| {
        st.list_mount_targets(&q, now)
    })
    .await
}

async fn get_mount_target(AxumState(emu): Emu, Path(id): Path<String>) -> Response {
    emu.call("GetMountTarget", move |st, _, _, now| {
        st.get_mount_target(&id, now)
    })
    .await
}

async fn update_mount_target(AxumState(emu): Emu, Path(id): Path<String>, body: Bytes) -> Response {
    with_body!(emu, "UpdateMountTarget", body, |st, s, ids, now, req| st
        .update_mount_target(s, &id, req, now))
}

async fn delete_mount_target(AxumState(emu): Emu, Path(id): Path<String>) -> Response {
    emu.call("DeleteMountTarget", move |st, s, _, now| {
        st.delete_mount_target(s, &id, now)
    })
    .await
}

async fn list_tags(AxumState(emu): Emu, Path(id): Path<String>, RawQuery(q): RawQuery) -> Response {
    let q = parse_query(q);
    emu.call("ListTagsForResource", move |st, _, _, _| {
        st.list_tags(&id, &q)
    })
    .await
}

async fn tag_resource(AxumState(emu): Emu, Path(id): Path<String>, body: Bytes) -> Response {
    with_body!(emu, "TagResource", body, |st, s, ids, now, req| st
        .tag_resource(s, &id, req))
}

async fn untag_resource(
    AxumState(emu): Emu,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let q = parse_query(q);
    emu.call("UntagResource", move |st, _, _, _| {
        st.untag_resource(&id, &q)
    })
    .await
}

async fn unknown_operation(req: axum::extract::Request) -> Response {
    let err = ApiError::new(
        ErrorKind::Validation,
        "UnknownOperation",
        format!(
            "no S3 Files operation is served at {} {}",
            req.method(),
            req.uri().path()
        ),
    );
    let mut resp = error_response(&err);
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut().insert(
        "x-amzn-errortype",
        HeaderValue::from_static("UnknownOperationException"),
    );
    resp
}

async fn get_faults(AxumState(emu): Emu) -> Response {
    json_response(
        200,
        &serde_json::to_value(emu.faults.config()).unwrap_or(Value::Null),
    )
}

async fn put_faults(AxumState(emu): Emu, body: Bytes) -> Response {
    let config: FaultConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid fault configuration: {e}\n"),
            )
                .into_response();
        }
    };
    if let Err(why) = config.validate(OPERATIONS) {
        return (
            StatusCode::BAD_REQUEST,
            format!("invalid fault configuration: {why}\n"),
        )
            .into_response();
    }
    info!(?config, "fault configuration replaced");
    emu.faults.set_config(config);
    get_faults(AxumState(emu)).await
}

async fn get_storage(AxumState(emu): Emu) -> Response {
    json_response(
        200,
        &serde_json::to_value(&emu.buckets).unwrap_or(Value::Null),
    )
}

async fn metrics(AxumState(emu): Emu) -> Response {
    let mut resp = emu.faults.render().into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
