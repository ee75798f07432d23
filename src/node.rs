//! The CSI Node service: mounts S3 Files access points into pods.
//!
//! - `NodePublishVolume` runs the mount helper (`mount -t s3files <fs>[:<path>] <target> -o
//!   accesspoint=<fsap>,...`). Publishing the same volume to the same target again succeeds
//!   without a second mount; a target that is a mount of something else is `AlreadyExists`.
//!   A broken mount left at the target is detached and replaced.
//! - `NodeUnpublishVolume` unmounts (detaching lazily when the mount does not let go) and
//!   removes the target; a target that is not mounted or does not exist is success.
//! - `NodeGetVolumeStats` is one bounded `statfs`; a mount that does not answer is reported
//!   as an abnormal volume condition, not an error.
//!
//! Which volume was published where is recorded in `state_dir`, so idempotency survives a
//! restart of the plugin (the mount table of an NFS mount only shows `127.0.0.1:/`).

pub mod efs_utils;
pub mod k8s;
pub mod watchdog;

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::controller::{TOPOLOGY_ZONE_ID_KEY, TOPOLOGY_ZONE_KEY};
use crate::csi::{self, node_server::Node, node_service_capability};
use crate::error::{Error, Result};
use crate::mount::{MountError, MountSpec, Mounter, mountinfo, options};
use crate::rpc::{self, csi_service_impl};
use crate::volume::{CapabilityCheck, VolumeHandle, check_capabilities};
use efs_utils::MemoryBudget;

/// The longest node id the CSI spec allows in `NodeGetInfoResponse`.
pub const MAX_NODE_ID_BYTES: usize = 256;

/// Volume context keys a volume may carry (from the controller, or set on static PVs).
const CONTEXT_KEYS: &[&str] = &[
    "accessPointRoot",
    "bucket",
    "mounttargetip",
    "encryptInTransit",
    "azid",
];

/// Where this node is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTopology {
    /// e.g. `us-east-1a`.
    pub zone: Option<String>,
    /// e.g. `use1-az1`; passed to the helper as `azid` so it needs no instance metadata.
    pub zone_id: Option<String>,
    /// e.g. `us-east-1`, from the Node's `topology.kubernetes.io/region` label; used when no
    /// `--region` is given.
    pub region: Option<String>,
}

/// Node settings from the command line.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    pub topology: NodeTopology,
    /// Passed to the helper as `region` when set (the flag, else the Node's region label).
    pub region: Option<String>,
    /// Where published volumes are recorded.
    pub state_dir: PathBuf,
    /// The efs-proxy memory budget of the node container (`None`: no budget, as with the local
    /// helper, which runs no efs-proxy).
    pub memory_budget: Option<MemoryBudget>,
}

/// The Node service.
#[derive(Clone)]
pub struct NodeService {
    config: Arc<NodeConfig>,
    mounter: Arc<dyn Mounter>,
    busy: Arc<Mutex<HashSet<PathBuf>>>,
    /// Held while a publication is checked against the others (ReadWriteOncePod, the memory
    /// budget) and recorded, so two publishes cannot both pass.
    admission: Arc<tokio::sync::Mutex<()>>,
}

struct TargetLock {
    busy: Arc<Mutex<HashSet<PathBuf>>>,
    target: PathBuf,
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.target);
    }
}

/// A publication, as recorded on disk. It is written before the helper runs, so a mount that
/// completes after the node gave up on the helper (a timeout) is recognised and adopted by the
/// retry that asks for the same thing.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Record {
    volume_id: String,
    readonly: bool,
    /// The request's mount flags, checked and in order; absent in records of older versions
    /// of the plugin. What the node adds from its own configuration (region, azid) is left out:
    /// a plugin restarted with other settings still recognises its mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mount_flags: Option<Vec<String>>,
    /// The target, and what its efs-proxy may take of the memory budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<PathBuf>,
    /// Published with SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod): no other target may have it.
    #[serde(default)]
    single_writer: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proxy_mib: Option<u64>,
}

impl Record {
    /// Whether a mount made for `self` serves a request for `wanted`.
    fn serves(&self, wanted: &Record) -> bool {
        self.volume_id == wanted.volume_id
            && self.readonly == wanted.readonly
            && self.single_writer == wanted.single_writer
            && match (&self.mount_flags, &wanted.mount_flags) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// Checks a node id: non-empty, at most 256 bytes, no control characters.
pub fn validate_node_id(node_id: &str) -> std::result::Result<(), String> {
    if node_id.trim().is_empty() {
        return Err(
            "node id is empty; pass --node-id or set NODE_ID (usually spec.nodeName)".into(),
        );
    }
    if node_id.len() > MAX_NODE_ID_BYTES {
        return Err(format!(
            "node id is {} bytes, over the CSI limit of {MAX_NODE_ID_BYTES}",
            node_id.len()
        ));
    }
    if node_id.chars().any(char::is_control) {
        return Err(format!("node id {node_id:?} contains control characters"));
    }
    Ok(())
}

/// An absolute path without `..`, as CSI requires of target paths.
fn checked_path(field: &'static str, raw: &str) -> Result<PathBuf> {
    if raw.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    let path = Path::new(raw);
    if !path.is_absolute() {
        return Err(Error::invalid(
            field,
            format!("{raw:?} must be an absolute path"),
        ));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::invalid(
            field,
            format!("{raw:?} must not contain '..'"),
        ));
    }
    Ok(path.to_owned())
}

/// The mount flags of a capability, split, checked and deduplicated (empty when invalid:
/// `options` refuses those first).
fn request_flags(cap: &csi::VolumeCapability) -> Vec<String> {
    match &cap.access_type {
        Some(csi::volume_capability::AccessType::Mount(m)) => {
            options::user_options(&m.mount_flags).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// Why a failed mount may have needed instance metadata: the options lack `region=` or `azid=`.
fn imds_hint(options: &[String]) -> Option<String> {
    let missing: Vec<&str> = ["region", "azid"]
        .into_iter()
        .filter(|name| !options.iter().any(|o| o.split('=').next() == Some(*name)))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the node passed no {}, so mount.s3files asked instance metadata; set the node's region and zone id (chart value region, Node labels topology.kubernetes.io/region and topology.k8s.aws/zone-id)",
            missing.join(" or ")
        )
    })
}

fn mount_error(err: MountError) -> Error {
    match err {
        MountError::HelperMissing { .. } => Error::FailedPrecondition(err.to_string()),
        MountError::HelperTimedOut { .. } => Error::Unavailable(err.to_string()),
        MountError::HelperFailed { .. } | MountError::Broken { .. } => {
            Error::Internal(err.to_string())
        }
        MountError::Io { context, source } => Error::io(context, source),
    }
}

impl NodeService {
    pub fn new(config: NodeConfig, mounter: Arc<dyn Mounter>) -> Self {
        NodeService {
            config: Arc::new(config),
            mounter,
            busy: Arc::new(Mutex::new(HashSet::new())),
            admission: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn lock(&self, target: &Path) -> Result<TargetLock> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(target.to_owned()) {
            return Err(Error::Busy(target.display().to_string()));
        }
        Ok(TargetLock {
            busy: self.busy.clone(),
            target: target.to_owned(),
        })
    }

    fn record_path(&self, target: &Path) -> PathBuf {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(target.as_os_str().as_encoded_bytes());
        self.config.state_dir.join(format!("{digest:x}.json"))
    }

    fn read_record(&self, target: &Path) -> Option<Record> {
        let bytes = std::fs::read(self.record_path(target)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write_record(&self, target: &Path, record: &Record) -> Result<()> {
        std::fs::create_dir_all(&self.config.state_dir)
            .map_err(|e| Error::io(format!("creating {}", self.config.state_dir.display()), e))?;
        let path = self.record_path(target);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(record).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(&tmp, bytes)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// The publications whose target is mounted now, from the records and the mount table
    /// (so the answer survives a plugin restart, and a record whose mount went away, after a
    /// reboot, counts for nothing).
    async fn live_publications(&self) -> Result<Vec<Record>> {
        let table = self.mounter.mounts().await.map_err(mount_error)?;
        let Ok(entries) = std::fs::read_dir(&self.config.state_dir) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .filter_map(std::result::Result::ok)
            .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Record>(&b).ok())
            .filter(|r| {
                r.target
                    .as_ref()
                    .is_some_and(|t| mountinfo::mount_at(&table, t).is_some())
            })
            .collect())
    }

    fn remove_record(&self, target: &Path) {
        let _ = std::fs::remove_file(self.record_path(target));
    }

    /// The mount options for a publication, checked.
    fn options(
        &self,
        handle: &VolumeHandle,
        req: &csi::NodePublishVolumeRequest,
        readonly: bool,
    ) -> Result<Vec<String>> {
        let mut options = Vec::new();
        if let Some(ap) = &handle.access_point_id {
            options.push(format!("accesspoint={ap}"));
        }
        if readonly {
            options.push("ro".to_owned());
        }
        let ctx: &HashMap<String, String> = &req.volume_context;
        for key in ctx.keys() {
            let ours = CONTEXT_KEYS.contains(&key.as_str())
                || key.starts_with("csi.storage.k8s.io/")
                || key.starts_with("storage.kubernetes.io/");
            if !ours {
                return Err(Error::invalid(
                    "volume_context",
                    format!(
                        "{key:?} is not a volume attribute of this driver; known: {}",
                        CONTEXT_KEYS.join(", ")
                    ),
                ));
            }
        }
        if let Some(v) = ctx.get("encryptInTransit")
            && v != "true"
        {
            return Err(Error::invalid(
                "volume_context",
                "encryptInTransit must be true: S3 Files mounts are always encrypted",
            ));
        }
        for (key, check) in [
            (
                "mounttargetip",
                options::check_ip as fn(&str) -> std::result::Result<(), String>,
            ),
            ("azid", options::check_zone_id),
        ] {
            if let Some(v) = ctx.get(key) {
                check(v)
                    .map_err(|why| Error::invalid("volume_context", format!("{key}: {why}")))?;
            }
        }
        let flags: &[String] = match req
            .volume_capability
            .as_ref()
            .and_then(|c| c.access_type.as_ref())
        {
            Some(csi::volume_capability::AccessType::Mount(m)) => &m.mount_flags,
            _ => &[],
        };
        let mut user = Vec::new();
        for flag in
            options::user_options(flags).map_err(|why| Error::invalid("mount_flags", why))?
        {
            let name = flag.split('=').next().unwrap_or(&flag);
            if name == "accesspoint" {
                let given = flag.split_once('=').map(|(_, v)| v).unwrap_or("");
                if handle.access_point_id.as_deref() != Some(given) {
                    return Err(Error::invalid(
                        "mount_flags",
                        format!("{flag} contradicts the volume handle's access point; remove it"),
                    ));
                }
                continue;
            }
            if name == "rw" && readonly {
                return Err(Error::invalid(
                    "mount_flags",
                    "rw contradicts a read-only publication",
                ));
            }
            if !options.contains(&flag) {
                user.push(flag);
            }
        }
        let has = |name: &str| {
            user.iter()
                .any(|o: &String| o.split('=').next() == Some(name))
        };
        if !has("mounttargetip")
            && let Some(ip) = ctx.get("mounttargetip")
        {
            options.push(format!("mounttargetip={ip}"));
        }
        // mount.s3files needs both; without them it asks instance metadata, which pods on EKS
        // often cannot reach.
        if !has("azid")
            && let Some(z) = ctx.get("azid").or(self.config.topology.zone_id.as_ref())
        {
            options.push(format!("azid={z}"));
        }
        if !has("region")
            && let Some(r) = &self.config.region
        {
            options.push(format!("region={r}"));
        }
        options.extend(user);
        Ok(options)
    }

    async fn publish(
        &self,
        req: csi::NodePublishVolumeRequest,
    ) -> Result<csi::NodePublishVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "must not be empty"));
        }
        let target = checked_path("target_path", &req.target_path)?;
        let Some(cap) = req.volume_capability.as_ref() else {
            return Err(Error::invalid("volume_capability", "is required"));
        };
        match check_capabilities(std::slice::from_ref(cap)) {
            CapabilityCheck::Supported => {}
            CapabilityCheck::Invalid(why) | CapabilityCheck::Unsupported(why) => {
                return Err(Error::invalid("volume_capability", why));
            }
        }
        let handle =
            VolumeHandle::parse(&req.volume_id).map_err(|why| Error::invalid("volume_id", why))?;
        let reader_only = cap.access_mode.as_ref().is_some_and(|m| {
            use csi::volume_capability::access_mode::Mode;
            matches!(
                Mode::try_from(m.mode),
                Ok(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
            )
        });
        let readonly = req.readonly || reader_only;
        let single_writer = cap.access_mode.as_ref().is_some_and(|m| {
            m.mode == csi::volume_capability::access_mode::Mode::SingleNodeSingleWriter as i32
        });
        let options = self.options(&handle, &req, readonly)?;
        let _lock = self.lock(&target)?;

        let source = match &handle.subpath {
            Some(p) => format!("{}:{p}", handle.file_system_id),
            None => handle.file_system_id.clone(),
        };
        let wanted = Record {
            volume_id: req.volume_id.clone(),
            readonly,
            mount_flags: Some(request_flags(cap)),
            target: Some(target.clone()),
            single_writer,
            proxy_mib: None,
        };
        let table = self.mounter.mounts().await.map_err(mount_error)?;
        if let Some(existing) = mountinfo::mount_at(&table, &target) {
            match self.mounter.stats(&target).await {
                Err(MountError::Broken { reason, .. }) => {
                    warn!(target = %target.display(), %reason, "replacing a broken mount");
                    self.mounter.unmount(&target).await.map_err(mount_error)?;
                }
                _ => {
                    return match self.read_record(&target) {
                        Some(record) if record.serves(&wanted) => {
                            Ok(csi::NodePublishVolumeResponse {})
                        }
                        Some(record) => Err(Error::AlreadyExists(format!(
                            "{} is already published from volume {} (readonly={}, mount flags {:?}); unpublish it first",
                            target.display(),
                            record.volume_id,
                            record.readonly,
                            record.mount_flags.unwrap_or_default().join(",")
                        ))),
                        None => Err(Error::AlreadyExists(format!(
                            "{} is already a mount point ({} from {}) that this driver did not make",
                            target.display(),
                            existing.fs_type,
                            existing.source
                        ))),
                    };
                }
            }
        }
        tokio::fs::create_dir_all(&target)
            .await
            .map_err(|e| Error::io(format!("creating target {}", target.display()), e))?;
        let mut wanted = wanted;
        let mut options = options;
        let admission = self.admission.lock().await;
        let live = self.live_publications().await?;
        let others = live
            .iter()
            .filter(|r| r.target.as_deref() != Some(target.as_path()));
        if let Some(other) = others
            .clone()
            .find(|r| r.volume_id == req.volume_id && (single_writer || r.single_writer))
        {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is already published on this node at {} and one of the two asks for ReadWriteOncePod (SINGLE_NODE_SINGLE_WRITER); unpublish it there first",
                req.volume_id,
                other.target.as_deref().unwrap_or(Path::new("?")).display()
            )));
        }
        if let Some(budget) = &self.config.memory_budget {
            let used: u64 = others.filter_map(|r| r.proxy_mib).sum();
            let fitted = budget
                .fit(&options, used)
                .map_err(Error::ResourceExhausted)?;
            if !fitted.added.is_empty() {
                warn!(
                    target = %target.display(),
                    added = %fitted.added.join(","),
                    used_mib = used,
                    budget_mib = budget.budget_mib,
                    "the efs-proxy memory budget is nearly spent; mounting with less proxy memory"
                );
            }
            options = fitted.options;
            wanted.proxy_mib = Some(fitted.cost_mib);
        }
        // Recorded first: if the helper outlives its deadline and mounts anyway, the retry finds
        // this record next to the mount and adopts it.
        self.write_record(&target, &wanted)?;
        drop(admission);
        let spec = MountSpec {
            source,
            target: target.clone(),
            options,
        };
        info!(source = %spec.source, options = %spec.options.join(","), "mounting");
        self.mounter.mount(&spec).await.map_err(|e| {
            match (mount_error(e), imds_hint(&spec.options)) {
                (Error::Internal(m), Some(hint)) => Error::Internal(format!("{m} ({hint})")),
                (err, _) => err,
            }
        })?;
        Ok(csi::NodePublishVolumeResponse {})
    }

    async fn unpublish(
        &self,
        req: csi::NodeUnpublishVolumeRequest,
    ) -> Result<csi::NodeUnpublishVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "must not be empty"));
        }
        let target = checked_path("target_path", &req.target_path)?;
        let _lock = self.lock(&target)?;
        // Stacked mounts (a publish retried on a broken mount) are peeled one by one.
        for _ in 0..8 {
            let table = self.mounter.mounts().await.map_err(mount_error)?;
            if mountinfo::mount_at(&table, &target).is_none() {
                break;
            }
            self.mounter.unmount(&target).await.map_err(mount_error)?;
        }
        match tokio::fs::remove_dir(&target).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("removing target {}", target.display()),
                    e,
                ));
            }
        }
        self.remove_record(&target);
        Ok(csi::NodeUnpublishVolumeResponse {})
    }

    async fn volume_stats(
        &self,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> Result<csi::NodeGetVolumeStatsResponse> {
        use csi::volume_usage::Unit;
        if req.volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "must not be empty"));
        }
        if req.volume_path.is_empty() {
            return Err(Error::invalid("volume_path", "must not be empty"));
        }
        // A path no volume can be at (relative, with '..') is a volume path not found: the
        // spec keeps INVALID_ARGUMENT for missing fields.
        let path = checked_path("volume_path", &req.volume_path)
            .map_err(|_| Error::NotFound(format!("volume path {:?}", req.volume_path)))?;
        if !tokio::fs::try_exists(&path).await.unwrap_or(true) {
            return Err(Error::NotFound(format!("volume path {}", path.display())));
        }
        let table = self.mounter.mounts().await.map_err(mount_error)?;
        if mountinfo::mount_at(&table, &path).is_none() {
            return Err(Error::NotFound(format!(
                "volume {} is not mounted at {}",
                req.volume_id,
                path.display()
            )));
        }
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Ok(match self.mounter.stats(&path).await {
            Ok(s) => csi::NodeGetVolumeStatsResponse {
                usage: vec![
                    csi::VolumeUsage {
                        available: to_i64(s.available_bytes),
                        total: to_i64(s.total_bytes),
                        used: to_i64(s.used_bytes),
                        unit: Unit::Bytes as i32,
                    },
                    csi::VolumeUsage {
                        available: to_i64(s.free_inodes),
                        total: to_i64(s.total_inodes),
                        used: to_i64(s.used_inodes),
                        unit: Unit::Inodes as i32,
                    },
                ],
                volume_condition: Some(csi::VolumeCondition {
                    abnormal: false,
                    message: "mounted and answering".into(),
                }),
            },
            Err(MountError::Broken { reason, .. }) => csi::NodeGetVolumeStatsResponse {
                usage: Vec::new(),
                volume_condition: Some(csi::VolumeCondition {
                    abnormal: true,
                    message: format!(
                        "the mount does not answer ({reason}); deleting the pod remounts it"
                    ),
                }),
            },
            Err(e) => return Err(mount_error(e)),
        })
    }
}

fn node_capability(t: node_service_capability::rpc::Type) -> csi::NodeServiceCapability {
    csi::NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(
            node_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

/// Readiness of the node plugin: the mount helper can be run.
pub struct HelperReadiness(pub Arc<dyn Mounter>);

#[tonic::async_trait]
impl crate::identity::ReadinessCheck for HelperReadiness {
    fn name(&self) -> &str {
        "mount-helper"
    }
    async fn check(&self) -> std::result::Result<(), String> {
        self.0.helper_available()
    }
}

csi_service_impl! {
    impl Node for NodeService, service "Node";
    implemented {
        async fn node_get_info(
            &self,
            request: Request<csi::NodeGetInfoRequest>,
        ) -> std::result::Result<Response<csi::NodeGetInfoResponse>, Status> {
            rpc::call("NodeGetInfo", request, |_| async {
                let mut segments = HashMap::new();
                if let Some(z) = &self.config.topology.zone {
                    segments.insert(TOPOLOGY_ZONE_KEY.to_owned(), z.clone());
                }
                if let Some(z) = &self.config.topology.zone_id {
                    segments.insert(TOPOLOGY_ZONE_ID_KEY.to_owned(), z.clone());
                }
                Ok(csi::NodeGetInfoResponse {
                    node_id: self.config.node_id.clone(),
                    // Shared file systems put no per-node limit on mounts.
                    max_volumes_per_node: 0,
                    accessible_topology: (!segments.is_empty()).then_some(csi::Topology { segments }),
                })
            })
            .await
        }

        async fn node_get_capabilities(
            &self,
            request: Request<csi::NodeGetCapabilitiesRequest>,
        ) -> std::result::Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
            use node_service_capability::rpc::Type;
            rpc::call("NodeGetCapabilities", request, |_| async {
                Ok(csi::NodeGetCapabilitiesResponse {
                    capabilities: [Type::GetVolumeStats, Type::VolumeCondition, Type::SingleNodeMultiWriter]
                        .into_iter()
                        .map(node_capability)
                        .collect(),
                })
            })
            .await
        }

        async fn node_publish_volume(
            &self,
            request: Request<csi::NodePublishVolumeRequest>,
        ) -> std::result::Result<Response<csi::NodePublishVolumeResponse>, Status> {
            rpc::call("NodePublishVolume", request, |req| self.publish(req)).await
        }

        async fn node_unpublish_volume(
            &self,
            request: Request<csi::NodeUnpublishVolumeRequest>,
        ) -> std::result::Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
            rpc::call("NodeUnpublishVolume", request, |req| self.unpublish(req)).await
        }

        async fn node_get_volume_stats(
            &self,
            request: Request<csi::NodeGetVolumeStatsRequest>,
        ) -> std::result::Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
            rpc::call("NodeGetVolumeStats", request, |req| self.volume_stats(req)).await
        }
    }
    unimplemented {
        node_stage_volume("NodeStageVolume", NodeStageVolumeRequest) -> NodeStageVolumeResponse;
        node_unstage_volume("NodeUnstageVolume", NodeUnstageVolumeRequest)
            -> NodeUnstageVolumeResponse;
        node_expand_volume("NodeExpandVolume", NodeExpandVolumeRequest)
            -> NodeExpandVolumeResponse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked_against_the_spec_limit() {
        assert!(validate_node_id("ip-10-0-0-1.ec2.internal").is_ok());
        assert!(validate_node_id(&"n".repeat(256)).is_ok());
        assert!(validate_node_id(&"n".repeat(257)).is_err());
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id("   ").is_err());
        assert!(validate_node_id("a\nb").is_err());
    }

    #[test]
    fn target_paths_must_be_absolute_without_dotdot() {
        assert!(checked_path("t", "/var/lib/kubelet/pods/x/mount").is_ok());
        assert!(checked_path("t", "").is_err());
        assert!(checked_path("t", "relative/path").is_err());
        assert!(checked_path("t", "/var/lib/../../etc").is_err());
    }

    fn service() -> NodeService {
        let config = NodeConfig {
            node_id: "n1".into(),
            topology: NodeTopology {
                zone: Some("us-east-1a".into()),
                zone_id: Some("use1-az1".into()),
                region: None,
            },
            region: Some("us-east-1".into()),
            state_dir: std::env::temp_dir(),
            memory_budget: None,
        };
        NodeService::new(config, Arc::new(crate::mount::fake::FakeMounter::default()))
    }

    fn request(flags: &[&str], ctx: &[(&str, &str)]) -> csi::NodePublishVolumeRequest {
        use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
        csi::NodePublishVolumeRequest {
            volume_id: "s3files:fs-0123456789abcdef0::fsap-0123456789abcdef1".into(),
            target_path: "/var/lib/kubelet/pods/p/volumes/v/mount".into(),
            volume_capability: Some(csi::VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume {
                    mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
                    ..Default::default()
                })),
                access_mode: Some(AccessMode {
                    mode: Mode::MultiNodeMultiWriter as i32,
                }),
            }),
            volume_context: ctx
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_node_passes_only_documented_options_and_always_region_and_azid() {
        let svc = service();
        let handle = VolumeHandle::parse("s3files:fs-0123456789abcdef0::fsap-0123456789abcdef1")
            .expect("handle");
        // (mount flags, volume context, read-only)
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], bool);
        let table: &[Case] = &[
            (&[], &[], false),
            (&[], &[], true),
            (&["noatime,actimeo=30", "tls", "iam"], &[], false),
            (
                &["accesspoint=fsap-0123456789abcdef1", "nodirects3read"],
                &[("mounttargetip", "10.0.0.5")],
                false,
            ),
            (&["azid=use1-az2", "region=us-east-1"], &[], true),
            (
                &[],
                &[("azid", "use1-az3"), ("encryptInTransit", "true")],
                false,
            ),
            (
                &["mounttargetip=10.0.0.9"],
                &[("mounttargetip", "10.0.0.5")],
                false,
            ),
        ];
        for (flags, ctx, readonly) in table {
            let options = svc
                .options(&handle, &request(flags, ctx), *readonly)
                .expect("valid request");
            for option in &options {
                assert!(
                    options::is_passable(option),
                    "{option} is not in the documented list ({flags:?})"
                );
            }
            for name in ["accesspoint", "azid", "region", "mounttargetip"] {
                let n = options
                    .iter()
                    .filter(|o| o.split('=').next() == Some(name))
                    .count();
                assert!(n <= 1, "{name} passed {n} times: {options:?}");
            }
            assert!(
                options.iter().any(|o| o.starts_with("azid=")),
                "{options:?}"
            );
            assert!(
                options.iter().any(|o| o.starts_with("region=")),
                "{options:?}"
            );
            assert_eq!(options.iter().any(|o| o == "ro"), *readonly, "{options:?}");
        }
    }
}
