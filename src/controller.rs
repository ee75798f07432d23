//! The CSI Controller service: one S3 Files access point per dynamically provisioned volume.
//!
//! - `CreateVolume` is idempotent by volume name: the client token is derived from it, a
//!   retried or crash-interrupted call finds and adopts the access point it made before, and the
//!   call returns only once the access point is `available` (bounded by `ready_timeout`).
//! - `DeleteVolume` deletes the access point (already gone is success) and, for StorageClasses
//!   with `onDelete: delete`, first the files under its root through the S3 API.
//! - Volumes are accessible from the zones where the file system has available mount targets.
//! - A second call for a volume that is still being worked on answers `Aborted`.

pub mod events;
pub mod gid;
pub mod listings;
pub mod params;
pub mod restore;
pub mod snapshots;
pub mod terms;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::cloud::{
    AccessPoint, CloudError, CreationPermissions, LifeCycle, NewAccessPoint, PosixUser, S3Files,
};
use crate::csi::{self, controller_server::Controller, controller_service_capability};
use crate::data::DataStore;
use crate::data::versions::Versions;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::rpc::{self, csi_service_impl};
use crate::volume::{CapabilityCheck, VolumeHandle, check_capabilities};
use gid::GidAllocator;
use listings::Listings;
use params::{OnDelete, ProvisionParams};
use terms::{Term, TermClock, TermSource};

/// How often one CreateVolume call gives up its access point to another with the same GID
/// before it answers Unavailable (the CO retries).
const MAX_GID_YIELDS: u32 = 5;

/// Topology key carrying the AWS availability zone id (`use1-az1`), set on EKS nodes.
pub const TOPOLOGY_ZONE_ID_KEY: &str = "topology.k8s.aws/zone-id";
/// The standard Kubernetes zone name key (`us-east-1a`).
pub const TOPOLOGY_ZONE_KEY: &str = "topology.kubernetes.io/zone";
/// Tag recording a StorageClass's `onDelete: delete` on the access point, read by DeleteVolume.
pub const TAG_ON_DELETE: &str = "s3files.csi.dev/on-delete";
/// Tag recording what a volume was created with (a digest of the request's capacity range,
/// parameters and capabilities), so a CreateVolume of the same name asking for something else
/// is `AlreadyExists`, also after a controller restart.
pub const TAG_REQUEST: &str = "s3files.csi.dev/request";
/// Tag naming the snapshot or volume a volume was restored or cloned from; its restore record
/// is deleted with it.
pub const TAG_CONTENT_SOURCE: &str = "s3files.csi.dev/content-source";

/// The digest a volume's [`TAG_REQUEST`] holds: the same for every retry of one request,
/// different when the capacity range, a parameter or a capability differs.
pub fn request_digest(req: &csi::CreateVolumeRequest) -> String {
    use sha2::{Digest, Sha256};
    use std::collections::BTreeSet;
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(req.name.as_bytes());
    // Only present sources take part, so digests of volumes without one stay as they were.
    match req
        .volume_content_source
        .as_ref()
        .and_then(|s| s.r#type.as_ref())
    {
        Some(csi::volume_content_source::Type::Snapshot(s)) => {
            field(b"snapshot");
            field(s.snapshot_id.as_bytes());
        }
        Some(csi::volume_content_source::Type::Volume(v)) => {
            field(b"volume");
            field(v.volume_id.as_bytes());
        }
        None => {}
    }
    let range = req.capacity_range.as_ref();
    field(&range.map_or(0, |r| r.required_bytes).to_be_bytes());
    field(&range.map_or(0, |r| r.limit_bytes).to_be_bytes());
    let params: std::collections::BTreeMap<_, _> = req.parameters.iter().collect();
    for (k, v) in params {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    let caps: BTreeSet<String> = req
        .volume_capabilities
        .iter()
        .map(|c| {
            let mode = c.access_mode.as_ref().map_or(0, |m| m.mode);
            match &c.access_type {
                Some(csi::volume_capability::AccessType::Mount(m)) => {
                    let flags: BTreeSet<String> =
                        crate::mount::options::user_options(&m.mount_flags)
                            .unwrap_or_default()
                            .into_iter()
                            .collect();
                    format!("mount:{mode}:{}:{:?}", m.fs_type, flags)
                }
                Some(csi::volume_capability::AccessType::Block(_)) => format!("block:{mode}"),
                None => format!("none:{mode}"),
            }
        })
        .collect();
    for c in caps {
        field(c.as_bytes());
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Controller settings from the command line.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Tag put on every access point the driver creates (unless a StorageClass says
    /// `enableTagging: false`); IAM policies can key on it.
    pub cluster_tag: (String, String),
    /// Tags from `--tags`, added to every access point.
    pub extra_tags: Vec<(String, String)>,
    /// How long CreateVolume waits for a new access point to become available.
    pub ready_timeout: Duration,
    /// How long file system and mount target facts are reused.
    pub fs_cache_ttl: Duration,
    /// How often the used GIDs of a file system are relearned.
    pub gid_refresh: Duration,
    /// How long after a leadership term began a create of the previous term can still land.
    pub gid_settle: Duration,
    /// How long a CreateVolume with a content source waits for its restore before it answers
    /// Aborted with the progress (the restore continues; the CO's retry joins it).
    pub restore_wait: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            cluster_tag: ("s3files.csi.dev/cluster".into(), "true".into()),
            extra_tags: Vec::new(),
            ready_timeout: Duration::from_secs(60),
            fs_cache_ttl: Duration::from_secs(60),
            gid_refresh: Duration::from_secs(15 * 60),
            gid_settle: Duration::from_secs(120),
            restore_wait: snapshots::DEFAULT_RESTORE_WAIT,
        }
    }
}

/// What the controller knows about a file system.
#[derive(Clone, Debug)]
struct FsInfo {
    bucket: String,
    prefix: String,
    /// Zone ids of available mount targets.
    zone_ids: Vec<String>,
}

/// A file system's cached facts and when they were fetched.
type FsSlot = Arc<tokio::sync::Mutex<Option<(Instant, FsInfo)>>>;

/// What every attempt of one CreateVolume sends.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    name: &'a str,
    params: &'a ProvisionParams,
    token: &'a str,
    digest: &'a str,
    tags: &'a [(String, String)],
}

struct Inner {
    cloud: Arc<dyn S3Files>,
    data: Option<Arc<dyn DataStore>>,
    config: ControllerConfig,
    gids: GidAllocator,
    terms: TermClock,
    listings: Listings,
    /// One slot per file system; its async lock makes concurrent requests wait for a single
    /// fetch instead of each calling the API (a cold start with 16 requests in flight would
    /// otherwise cost 32 calls).
    fs_cache: Mutex<HashMap<String, FsSlot>>,
    busy: Mutex<HashSet<String>>,
    /// Object versions, for snapshots and restores (a data store on S3).
    versions: Option<Arc<dyn Versions>>,
    metrics: Option<Arc<Metrics>>,
    restores: restore::Restores,
}

/// The Controller service.
#[derive(Clone)]
pub struct ControllerService {
    inner: Arc<Inner>,
}

/// Holds a volume's lock; dropping it releases the volume.
struct VolumeLock {
    inner: Arc<Inner>,
    key: String,
}

impl Drop for VolumeLock {
    fn drop(&mut self) {
        self.inner
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// The client token for a volume: its name when that fits the API's 64 characters, else a
/// SHA-256 of it (PV names are `pvc-<uid>`, 40 characters, so this is rare).
pub fn client_token(volume_name: &str) -> String {
    if volume_name.len() <= 64 && volume_name.chars().all(|c| c.is_ascii_graphic()) {
        volume_name.to_owned()
    } else {
        format!("{:x}", Sha256::digest(volume_name.as_bytes()))
    }
}

impl ControllerService {
    /// A controller that cannot tell leadership terms: every GID it draws is verified.
    pub fn new(
        cloud: Arc<dyn S3Files>,
        data: Option<Arc<dyn DataStore>>,
        config: ControllerConfig,
    ) -> Self {
        Self::with_terms(cloud, data, config, None)
    }

    /// A controller that reads leadership terms from `terms` (csi-provisioner's Lease).
    pub fn with_terms(
        cloud: Arc<dyn S3Files>,
        data: Option<Arc<dyn DataStore>>,
        config: ControllerConfig,
        terms: Option<Box<dyn TermSource>>,
    ) -> Self {
        let gids = GidAllocator::new(config.gid_refresh);
        let terms = TermClock::new(terms, config.gid_settle);
        ControllerService {
            inner: Arc::new(Inner {
                cloud,
                data,
                config,
                gids,
                terms,
                listings: Listings::default(),
                fs_cache: Mutex::new(HashMap::new()),
                busy: Mutex::new(HashSet::new()),
                versions: None,
                metrics: None,
                restores: restore::Restores::default(),
            }),
        }
    }

    /// Offers snapshots and clones over `versions`, counting restores in `metrics`. Called
    /// while building the service, before it is shared.
    pub fn with_snapshots(
        mut self,
        versions: Arc<dyn Versions>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                inner.versions = Some(versions);
                inner.metrics = metrics;
            }
            None => tracing::error!("with_snapshots on a shared controller; snapshots stay off"),
        }
        self
    }

    fn lock(&self, key: &str) -> Result<VolumeLock> {
        let mut busy = self.inner.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(key.to_owned()) {
            return Err(Error::Busy(key.to_owned()));
        }
        Ok(VolumeLock {
            inner: self.inner.clone(),
            key: key.to_owned(),
        })
    }

    /// File system facts, from the cache when fresh.
    async fn fs_info(&self, fs_id: &str) -> Result<FsInfo> {
        let ttl = self.inner.config.fs_cache_ttl;
        let slot = self
            .inner
            .fs_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(fs_id.to_owned())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some((at, info)) = slot.as_ref()
            && at.elapsed() < ttl
        {
            return Ok(info.clone());
        }
        let fs = match self.inner.cloud.get_file_system(fs_id).await {
            Ok(fs) => fs,
            Err(CloudError::NotFound(_)) => {
                return Err(Error::invalid_parameter(
                    params::FILE_SYSTEM_ID,
                    format!("file system {fs_id} does not exist in this account and region"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        if fs.status != LifeCycle::Available {
            return Err(Error::Unavailable(format!(
                "file system {fs_id} is {}{}; retry when it is available",
                fs.status,
                fs.status_message
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            )));
        }
        let mut zone_ids: Vec<String> = self
            .inner
            .cloud
            .list_mount_targets(fs_id)
            .await?
            .into_iter()
            .filter(|m| m.status == LifeCycle::Available)
            .filter_map(|m| m.availability_zone_id)
            .collect();
        zone_ids.sort();
        zone_ids.dedup();
        let info = FsInfo {
            bucket: fs.bucket,
            prefix: fs.prefix,
            zone_ids,
        };
        *slot = Some((Instant::now(), info.clone()));
        Ok(info)
    }

    async fn create_volume(
        &self,
        req: csi::CreateVolumeRequest,
    ) -> Result<csi::CreateVolumeResponse> {
        check_name(&req.name)?;
        match check_capabilities(&req.volume_capabilities) {
            CapabilityCheck::Supported => {}
            CapabilityCheck::Invalid(why) | CapabilityCheck::Unsupported(why) => {
                return Err(Error::invalid("volume_capabilities", why));
            }
        }
        let capacity = capacity_bytes(req.capacity_range.as_ref())?;
        if !req.mutable_parameters.is_empty() {
            return Err(Error::invalid(
                "mutable_parameters",
                "this driver does not modify volumes; remove the VolumeAttributesClass",
            ));
        }
        let params = ProvisionParams::parse(&req.name, &req.parameters)?;
        if params.on_delete == OnDelete::Delete && self.inner.data.is_none() {
            return Err(Error::invalid_parameter(
                params::ON_DELETE,
                "delete needs the controller's --data-store (the chart's controller.dataStore), which is not set; set it or use onDelete: retain",
            ));
        }
        let _lock = self.lock(&req.name)?;

        let content = match &req.volume_content_source {
            Some(source) => Some(self.content_source(source, &params.file_system_id).await?),
            None => None,
        };
        let fs = self.fs_info(&params.file_system_id).await?;
        let zones = accessible_zones(
            &params.file_system_id,
            &fs.zone_ids,
            req.accessibility_requirements.as_ref(),
        )?;

        let token = client_token(&req.name);
        let digest = request_digest(&req);
        let mut tags = Vec::new();
        if params.tagging {
            tags.push(self.inner.config.cluster_tag.clone());
            tags.extend(self.inner.config.extra_tags.iter().cloned());
            tags.extend(params.extra_tags.iter().cloned());
        }
        if params.on_delete == OnDelete::Delete {
            tags.push((TAG_ON_DELETE.to_owned(), "delete".to_owned()));
        }
        tags.push((TAG_REQUEST.to_owned(), digest.clone()));
        if let Some(source) = &content {
            tags.push((TAG_CONTENT_SOURCE.to_owned(), source.id.clone()));
        }
        let attempt = Attempt {
            name: &req.name,
            params: &params,
            token: &token,
            digest: &digest,
            tags: &tags,
        };
        let mut yielded = 0;
        let ap = loop {
            let term = if params.ids.needs_allocation() {
                self.inner.terms.current().await
            } else {
                None
            };
            let (ap, verify) = self.create_once(&attempt, term.as_ref()).await?;
            if !verify {
                break ap;
            }
            let Some(other) = self.gid_collision(&params, &ap, term.as_ref()).await? else {
                break ap;
            };
            // Not returned to anyone yet: this one yields and draws again.
            let gid = ap.posix_user.as_ref().map_or(0, |u| u.gid);
            warn!(access_point = %ap.id, other = %other, gid, "GID collision with another access point; deleting ours and drawing another GID");
            match self.inner.cloud.delete_access_point(&ap.id).await {
                Ok(()) | Err(CloudError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            self.inner.gids.mark_used(&params.file_system_id, gid).await;
            yielded += 1;
            if yielded >= MAX_GID_YIELDS {
                return Err(Error::Unavailable(format!(
                    "volume {}: the GIDs drawn collided {yielded} times with access points others made at the same time on file system {}; retry",
                    req.name, params.file_system_id
                )));
            }
        };
        let ap = self.wait_available(&params.file_system_id, ap).await?;
        if let Some(source) = &content {
            let root = ap
                .root_path
                .as_deref()
                .unwrap_or(&params.root_path)
                .trim_matches('/');
            if root.is_empty() {
                return Err(Error::invalid(
                    "volume_content_source",
                    "a restored volume needs a directory of its own, not the file system root",
                ));
            }
            let dest = format!("{}{root}/", fs.prefix);
            let owner = ap.posix_user.as_ref().map(|u| (u.uid, u.gid));
            self.restore(&req.name, &fs, &params.file_system_id, source, dest, owner)
                .await?;
        }
        let handle = VolumeHandle::for_access_point(&params.file_system_id, &ap.id);
        let accessible_topology = zones
            .into_iter()
            .map(|z| csi::Topology {
                segments: [(TOPOLOGY_ZONE_ID_KEY.to_owned(), z)].into(),
            })
            .collect();
        Ok(csi::CreateVolumeResponse {
            volume: Some(csi::Volume {
                capacity_bytes: capacity,
                volume_id: handle.to_string(),
                volume_context: [
                    (
                        "accessPointRoot".to_owned(),
                        ap.root_path
                            .clone()
                            .unwrap_or_else(|| params.root_path.clone()),
                    ),
                    ("bucket".to_owned(), fs.bucket.clone()),
                ]
                .into(),
                content_source: req.volume_content_source.clone(),
                accessible_topology,
            }),
        })
    }

    /// One attempt at the access point of a volume: draws a GID when the StorageClass allocates
    /// them, creates (or adopts what an earlier attempt made), and says whether its GID must be
    /// verified against other allocators' access points before the volume is returned.
    async fn create_once(
        &self,
        attempt: &Attempt<'_>,
        term: Option<&Term>,
    ) -> Result<(AccessPoint, bool)> {
        let Attempt {
            name,
            params,
            token,
            digest,
            tags,
        } = *attempt;
        let fs_id = params.file_system_id.as_str();
        let gids = &self.inner.gids;
        let mut adopted = None;
        let (uid, gid, grant) = if params.ids.needs_allocation() {
            let learn = || self.used_gids(fs_id);
            match gids
                .allocate(fs_id, params.ids.range, name, term, learn)
                .await
            {
                Ok(g) => (
                    params.ids.uid.unwrap_or(g.gid),
                    params.ids.gid.unwrap_or(g.gid),
                    Some(g),
                ),
                Err(Error::ResourceExhausted(why)) => {
                    // A retry of a volume that exists needs no new GID: find it by its token
                    // (a full range is rare, so the listing is too).
                    match self.find_by_token(params, token, None).await? {
                        Some(existing) => {
                            adopted = Some(existing);
                            (0, 0, None)
                        }
                        None => return Err(Error::ResourceExhausted(why)),
                    }
                }
                Err(e) => return Err(e),
            }
        } else {
            (
                params.ids.uid.unwrap_or(0),
                params.ids.gid.unwrap_or(0),
                None,
            )
        };
        let allocated = grant.map(|g| g.gid);
        let new = NewAccessPoint {
            file_system_id: params.file_system_id.clone(),
            client_token: token.to_owned(),
            posix_user: Some(PosixUser {
                uid,
                gid,
                secondary_gids: Vec::new(),
            }),
            root_path: Some(params.root_path.clone()),
            creation_permissions: Some(CreationPermissions {
                owner_uid: uid,
                owner_gid: gid,
                permissions: params.directory_perms.clone(),
            }),
            tags: tags.to_vec(),
        };
        // Whether the access point's GID may have been drawn from a view that misses another
        // allocator's work: a grant that says so, and anything made by an earlier attempt.
        let mut verify = grant.is_some_and(|g| g.verify);
        let created = match adopted {
            Some(existing) => {
                info!(access_point = %existing.id, "the volume exists; its GID range is full but it needs no new GID");
                verify = params.ids.needs_allocation();
                Ok(existing)
            }
            None => self.inner.cloud.create_access_point(&new).await,
        };
        if let Some(g) = allocated {
            gids.settled(fs_id, g).await;
        }
        let ap = match created {
            Ok(ap) => ap,
            Err(CloudError::Conflict {
                resource_id,
                message,
            }) => {
                // The token names an access point made by an earlier attempt for this volume
                // (with other parameters, e.g. a GID drawn before a restart): adopt it.
                let existing = self
                    .find_by_token(params, token, resource_id.as_deref())
                    .await?;
                if let Some(g) = allocated {
                    gids.release(fs_id, g).await;
                }
                let Some(existing) = existing else {
                    return Err(Error::AlreadyExists(format!(
                        "an access point conflicts with volume {name}: {message}"
                    )));
                };
                if existing.status == LifeCycle::Deleting {
                    return Err(Error::Unavailable(format!(
                        "access point {} of an earlier attempt for volume {name} is still being deleted; retry",
                        existing.id
                    )));
                }
                info!(access_point = %existing.id, "adopting the access point an earlier attempt created");
                if let Some(user) = &existing.posix_user {
                    gids.mark_used(fs_id, user.gid).await;
                }
                verify = params.ids.needs_allocation();
                existing
            }
            Err(e) => {
                // Free the GID unless the access point may exist after all (a timeout, a 5xx:
                // then the next relearn decides). A throttled call was refused unprocessed.
                let definitive = matches!(
                    e,
                    CloudError::Validation(_)
                        | CloudError::QuotaExceeded(_)
                        | CloudError::NotFound(_)
                        | CloudError::AccessDenied(_)
                        | CloudError::Throttled(_)
                );
                if let Some(g) = allocated {
                    if definitive {
                        gids.forget(fs_id, name).await;
                        gids.release(fs_id, g).await;
                    } else {
                        // The retry sends the same request, which the service answers with
                        // the access point if this call made it.
                        gids.remember(fs_id, name, g).await;
                    }
                }
                return Err(match e {
                    CloudError::QuotaExceeded(m) => Error::ResourceExhausted(format!(
                        "{m}; file system {fs_id} has no room for another access point"
                    )),
                    other => other.into(),
                });
            }
        };
        if allocated.is_some() {
            gids.forget(fs_id, name).await;
        }
        // A volume of this name made for another request (access points of older versions
        // carry no digest and are taken as they are).
        if let Some((_, theirs)) = ap.tags.iter().find(|(k, _)| k == TAG_REQUEST)
            && theirs != digest
        {
            // The GID drawn for this call is free again, unless it is the one that access point
            // holds.
            if let Some(g) = allocated
                && ap.posix_user.as_ref().map(|u| u.gid) != Some(g)
            {
                gids.release(fs_id, g).await;
            }
            return Err(Error::AlreadyExists(format!(
                "volume {name} already exists (access point {}) with another capacity range, parameters or capabilities; delete it or use another name",
                ap.id
            )));
        }
        // A trusted grant whose term ended while the call ran: the next leader's view may have
        // been learned before this access point existed.
        if !verify
            && grant.is_some()
            && self.inner.terms.current().await.map(|t| t.key) != term.map(|t| t.key.clone())
        {
            verify = true;
        }
        let in_range = ap
            .posix_user
            .as_ref()
            .is_some_and(|u| (params.ids.range.0..=params.ids.range.1).contains(&u.gid));
        Ok((ap, verify && in_range))
    }

    /// Another live access point of the file system holding `ap`'s GID, by a listing that
    /// began after `ap` existed (shared by every verification waiting at that moment); the
    /// listing also teaches the allocator what others made.
    async fn gid_collision(
        &self,
        params: &ProvisionParams,
        ap: &AccessPoint,
        term: Option<&Term>,
    ) -> Result<Option<String>> {
        let Some(gid) = ap.posix_user.as_ref().map(|u| u.gid) else {
            return Ok(None);
        };
        let fs_id = params.file_system_id.as_str();
        let (wall, listing) = self
            .inner
            .listings
            .after(&*self.inner.cloud, fs_id, Instant::now())
            .await?;
        let listed = listing
            .iter()
            .filter_map(|a| a.posix_user.as_ref().map(|u| u.gid))
            .collect();
        self.inner.gids.observed(fs_id, listed, term, wall).await;
        Ok(listing
            .iter()
            .find(|other| {
                other.id != ap.id
                    && other.posix_user.as_ref().map(|u| u.gid) == Some(gid)
                    && !matches!(other.status, LifeCycle::Deleting | LifeCycle::Deleted)
            })
            .map(|other| other.id.clone()))
    }

    /// The GIDs the access points of file system `fs` hold, for the allocator's view.
    async fn used_gids(&self, fs: &str) -> Result<std::collections::BTreeSet<u32>> {
        let (_, listing) = self
            .inner
            .listings
            .after(&*self.inner.cloud, fs, Instant::now())
            .await?;
        Ok(listing
            .iter()
            .filter_map(|ap| ap.posix_user.as_ref().map(|u| u.gid))
            .collect())
    }

    /// Finds the access point created with `token`: by the id a conflict named, else among
    /// access points with the same root directory.
    async fn find_by_token(
        &self,
        params: &ProvisionParams,
        token: &str,
        hint: Option<&str>,
    ) -> Result<Option<AccessPoint>> {
        let cloud = &self.inner.cloud;
        if let Some(id) = hint {
            match cloud.get_access_point(id).await {
                Ok(ap)
                    if ap.client_token.as_deref() == Some(token)
                        && ap.file_system_id == params.file_system_id =>
                {
                    return Ok(Some(ap));
                }
                Ok(_) | Err(CloudError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for candidate in cloud.list_access_points(&params.file_system_id).await? {
            if candidate.root_path.as_deref() != Some(params.root_path.as_str()) {
                continue;
            }
            let full = cloud.get_access_point(&candidate.id).await?;
            if full.client_token.as_deref() == Some(token) {
                return Ok(Some(full));
            }
        }
        Ok(None)
    }

    /// Polls until `ap` is available: by GetAccessPoint, or by a listing shared with the other
    /// access points of the file system waiting at the same time when that costs less.
    async fn wait_available(&self, fs_id: &str, mut ap: AccessPoint) -> Result<AccessPoint> {
        let listings = &self.inner.listings;
        let _waiting = listings.waiting(fs_id);
        let deadline = Instant::now() + self.inner.config.ready_timeout;
        // When `ap`'s status was last read: any listing begun since then is news.
        let mut read_at = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match &ap.status {
                LifeCycle::Available => return Ok(ap),
                LifeCycle::Creating | LifeCycle::Updating => {}
                other => {
                    return Err(Error::Internal(format!(
                        "access point {} is {other}, not available",
                        ap.id
                    )));
                }
            }
            if Instant::now() + delay > deadline {
                return Err(Error::Unavailable(format!(
                    "access point {} is still {} after {:?}; the CO will retry and find it",
                    ap.id, ap.status, self.inner.config.ready_timeout
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            let since = std::mem::replace(&mut read_at, Instant::now());
            if listings.poll_by_listing(fs_id) {
                let (_, listing) = listings.after(&*self.inner.cloud, fs_id, since).await?;
                // List entries carry no tags or token: take the status only.
                if let Some(listed) = listing.iter().find(|a| a.id == ap.id) {
                    ap.status = listed.status.clone();
                    continue;
                }
            }
            ap = self.inner.cloud.get_access_point(&ap.id).await?;
        }
    }

    async fn delete_volume(
        &self,
        req: csi::DeleteVolumeRequest,
    ) -> Result<csi::DeleteVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "must not be empty"));
        }
        let handle = match VolumeHandle::parse(&req.volume_id) {
            Ok(h) => h,
            Err(why) => {
                // Not a handle this driver made: there is nothing of ours to delete.
                warn!(%why, "deleting a volume id this driver does not recognise; nothing to do");
                return Ok(csi::DeleteVolumeResponse {});
            }
        };
        let Some(ap_id) = handle.access_point_id.clone() else {
            info!("static volume without an access point; nothing to delete");
            return Ok(csi::DeleteVolumeResponse {});
        };
        let _lock = self.lock(&req.volume_id)?;
        let ap = match self.inner.cloud.get_access_point(&ap_id).await {
            Ok(ap) => ap,
            Err(CloudError::NotFound(_)) => return Ok(csi::DeleteVolumeResponse {}),
            Err(e) => return Err(e.into()),
        };
        if ap.file_system_id != handle.file_system_id {
            // The volume this id names (that access point on that file system) does not exist,
            // which the spec answers OK; the access point of another file system is not ours to
            // delete.
            warn!(
                access_point = %ap_id,
                belongs_to = %ap.file_system_id,
                handle_names = %handle.file_system_id,
                "the access point belongs to another file system; nothing deleted"
            );
            return Ok(csi::DeleteVolumeResponse {});
        }
        let delete_data = ap
            .tags
            .iter()
            .any(|(k, v)| k == TAG_ON_DELETE && v == "delete");
        if delete_data {
            self.delete_data(&handle.file_system_id, &ap).await?;
        }
        if ap.tags.iter().any(|(k, _)| k == TAG_CONTENT_SOURCE) {
            self.forget_restore(&handle.file_system_id, &ap).await?;
        }
        match self.inner.cloud.delete_access_point(&ap_id).await {
            Ok(()) | Err(CloudError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(user) = &ap.posix_user {
            self.inner
                .gids
                .release(&handle.file_system_id, user.gid)
                .await;
        }
        Ok(csi::DeleteVolumeResponse {})
    }

    /// Deletes the objects under an access point's root directory. Refuses a root of `/`:
    /// that would be the whole file system, not one volume.
    async fn delete_data(&self, fs_id: &str, ap: &AccessPoint) -> Result<()> {
        let Some(data) = &self.inner.data else {
            return Err(Error::FailedPrecondition(format!(
                "access point {} asks for its data to be deleted (onDelete: delete) but the controller has no data store: \
                 set the chart's controller.dataStore (--data-store s3, or s3:URL for an S3-compatible endpoint) and retry; \
                 or remove the {TAG_ON_DELETE} tag from the access point to keep its data",
                ap.id
            )));
        };
        let root = ap.root_path.as_deref().unwrap_or("/").trim_matches('/');
        if root.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "access point {} is rooted at the file system root; refusing to delete every file",
                ap.id
            )));
        }
        let fs = self.fs_info(fs_id).await?;
        let prefix = format!("{}{root}/", fs.prefix);
        let deleted = data.delete_prefix(&fs.bucket, &prefix).await?;
        info!(bucket = %fs.bucket, %prefix, deleted, "deleted the volume's data");
        Ok(())
    }

    /// `NotFound` unless the volume `volume_id` names exists: its access point, on the file
    /// system the handle names (an access point of another file system is not this volume), or
    /// for a handle without one, the file system.
    async fn volume_exists(&self, volume_id: &str) -> Result<()> {
        let handle = VolumeHandle::parse(volume_id)
            .map_err(|why| Error::NotFound(format!("volume {volume_id}: {why}")))?;
        let cloud = &self.inner.cloud;
        let found = match &handle.access_point_id {
            Some(ap_id) => match cloud.get_access_point(ap_id).await {
                Ok(ap) if ap.file_system_id == handle.file_system_id => Ok(()),
                Ok(ap) => {
                    return Err(Error::NotFound(format!(
                        "volume {volume_id}: access point {ap_id} belongs to file system {}, not {}",
                        ap.file_system_id, handle.file_system_id
                    )));
                }
                Err(e) => Err(e),
            },
            None => cloud
                .get_file_system(&handle.file_system_id)
                .await
                .map(|_| ()),
        };
        match found {
            Ok(()) => Ok(()),
            Err(CloudError::NotFound(_)) => Err(Error::NotFound(format!("volume {volume_id}"))),
            Err(e) => Err(e.into()),
        }
    }

    async fn validate(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "must not be empty"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(Error::invalid(
                "volume_capabilities",
                "must list at least one capability",
            ));
        }
        self.volume_exists(&req.volume_id).await?;
        Ok(match check_capabilities(&req.volume_capabilities) {
            CapabilityCheck::Supported => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: req.mutable_parameters,
                }),
                message: String::new(),
            },
            CapabilityCheck::Invalid(why) => {
                return Err(Error::invalid("volume_capabilities", why));
            }
            CapabilityCheck::Unsupported(why) => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why,
            },
        })
    }

    async fn expand(
        &self,
        req: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "must not be empty"));
        }
        let Some(range) = req.capacity_range.as_ref() else {
            return Err(Error::invalid("capacity_range", "is required"));
        };
        let capacity = capacity_bytes(Some(range))?;
        self.volume_exists(&req.volume_id).await?;
        // S3 Files is elastic: there is nothing to grow, on the controller or on the node.
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: capacity,
            node_expansion_required: false,
        })
    }
}

/// A CreateVolume or CreateSnapshot name: what the CO sends and the tokens derive from.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("name", "must not be empty"));
    }
    if name.len() > 128 || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            "must be at most 128 bytes without control characters",
        ));
    }
    Ok(())
}

/// The capacity to report: what was asked for (the file system is elastic, so any size fits).
fn capacity_bytes(range: Option<&csi::CapacityRange>) -> Result<i64> {
    let Some(range) = range else { return Ok(0) };
    if range.required_bytes < 0 || range.limit_bytes < 0 {
        return Err(Error::invalid(
            "capacity_range",
            "bytes must not be negative",
        ));
    }
    if range.limit_bytes > 0 && range.limit_bytes < range.required_bytes {
        return Err(Error::invalid(
            "capacity_range",
            "limit_bytes is below required_bytes",
        ));
    }
    Ok(if range.required_bytes > 0 {
        range.required_bytes
    } else {
        range.limit_bytes
    })
}

/// The zones to report: where mount targets are available, narrowed to the CO's requisite
/// zones when it names zone ids.
fn accessible_zones(
    fs_id: &str,
    zone_ids: &[String],
    req: Option<&csi::TopologyRequirement>,
) -> Result<Vec<String>> {
    if zone_ids.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "file system {fs_id} has no available mount targets, so no node could mount the volume; \
             create a mount target in each zone your nodes run in"
        )));
    }
    let requisite: Vec<&str> = req
        .map(|r| {
            r.requisite
                .iter()
                .filter_map(|t| t.segments.get(TOPOLOGY_ZONE_ID_KEY).map(String::as_str))
                .collect()
        })
        .unwrap_or_default();
    if requisite.is_empty() {
        return Ok(zone_ids.to_vec());
    }
    let both: Vec<String> = zone_ids
        .iter()
        .filter(|z| requisite.contains(&z.as_str()))
        .cloned()
        .collect();
    if both.is_empty() {
        return Err(Error::ResourceExhausted(format!(
            "file system {fs_id} has mount targets in {} but the volume must be reachable from {}; \
             add a mount target there or schedule the pod elsewhere",
            zone_ids.join(", "),
            requisite.join(", ")
        )));
    }
    Ok(both)
}

fn rpc_capability(t: controller_service_capability::rpc::Type) -> csi::ControllerServiceCapability {
    csi::ControllerServiceCapability {
        r#type: Some(controller_service_capability::Type::Rpc(
            controller_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

csi_service_impl! {
    impl Controller for ControllerService, service "Controller";
    implemented {
        async fn controller_get_capabilities(
            &self,
            request: Request<csi::ControllerGetCapabilitiesRequest>,
        ) -> std::result::Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
            use controller_service_capability::rpc::Type;
            rpc::call("ControllerGetCapabilities", request, |_| async {
                let mut capabilities =
                    vec![Type::CreateDeleteVolume, Type::ExpandVolume, Type::SingleNodeMultiWriter];
                if self.inner.versions.is_some() {
                    capabilities.extend([
                        Type::CreateDeleteSnapshot,
                        Type::ListSnapshots,
                        Type::CloneVolume,
                    ]);
                }
                Ok(csi::ControllerGetCapabilitiesResponse {
                    capabilities: capabilities.into_iter().map(rpc_capability).collect(),
                })
            })
            .await
        }

        async fn create_volume(
            &self,
            request: Request<csi::CreateVolumeRequest>,
        ) -> std::result::Result<Response<csi::CreateVolumeResponse>, Status> {
            rpc::call("CreateVolume", request, |req| self.create_volume(req)).await
        }

        async fn delete_volume(
            &self,
            request: Request<csi::DeleteVolumeRequest>,
        ) -> std::result::Result<Response<csi::DeleteVolumeResponse>, Status> {
            rpc::call("DeleteVolume", request, |req| self.delete_volume(req)).await
        }

        async fn validate_volume_capabilities(
            &self,
            request: Request<csi::ValidateVolumeCapabilitiesRequest>,
        ) -> std::result::Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
            rpc::call("ValidateVolumeCapabilities", request, |req| self.validate(req)).await
        }

        async fn create_snapshot(
            &self,
            request: Request<csi::CreateSnapshotRequest>,
        ) -> std::result::Result<Response<csi::CreateSnapshotResponse>, Status> {
            rpc::call("CreateSnapshot", request, |req| self.create_snapshot(req)).await
        }

        async fn delete_snapshot(
            &self,
            request: Request<csi::DeleteSnapshotRequest>,
        ) -> std::result::Result<Response<csi::DeleteSnapshotResponse>, Status> {
            rpc::call("DeleteSnapshot", request, |req| self.delete_snapshot(req)).await
        }

        async fn list_snapshots(
            &self,
            request: Request<csi::ListSnapshotsRequest>,
        ) -> std::result::Result<Response<csi::ListSnapshotsResponse>, Status> {
            rpc::call("ListSnapshots", request, |req| self.list_snapshots(req)).await
        }

        async fn controller_expand_volume(
            &self,
            request: Request<csi::ControllerExpandVolumeRequest>,
        ) -> std::result::Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
            rpc::call("ControllerExpandVolume", request, |req| self.expand(req)).await
        }
    }
    unimplemented {
        controller_publish_volume("ControllerPublishVolume", ControllerPublishVolumeRequest)
            -> ControllerPublishVolumeResponse;
        controller_unpublish_volume("ControllerUnpublishVolume", ControllerUnpublishVolumeRequest)
            -> ControllerUnpublishVolumeResponse;
        list_volumes("ListVolumes", ListVolumesRequest) -> ListVolumesResponse;
        get_capacity("GetCapacity", GetCapacityRequest) -> GetCapacityResponse;
        get_snapshot("GetSnapshot", GetSnapshotRequest) -> GetSnapshotResponse;
        controller_get_volume("ControllerGetVolume", ControllerGetVolumeRequest)
            -> ControllerGetVolumeResponse;
        controller_modify_volume("ControllerModifyVolume", ControllerModifyVolumeRequest)
            -> ControllerModifyVolumeResponse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_the_name_or_its_hash() {
        assert_eq!(client_token("pvc-1234"), "pvc-1234");
        let long = "x".repeat(100);
        assert_eq!(client_token(&long).len(), 64);
        assert_eq!(client_token(&long), client_token(&long));
        assert_ne!(client_token(&long), client_token(&"y".repeat(100)));
    }

    #[test]
    fn topology_is_the_mount_target_zones_narrowed_by_requisite() {
        let zones = vec!["use1-az1".to_owned(), "use1-az2".to_owned()];
        assert_eq!(accessible_zones("fs", &zones, None).expect("ok"), zones);
        let req = csi::TopologyRequirement {
            requisite: vec![csi::Topology {
                segments: [(TOPOLOGY_ZONE_ID_KEY.to_owned(), "use1-az2".to_owned())].into(),
            }],
            preferred: vec![],
        };
        assert_eq!(
            accessible_zones("fs", &zones, Some(&req)).expect("ok"),
            ["use1-az2"]
        );
        let elsewhere = csi::TopologyRequirement {
            requisite: vec![csi::Topology {
                segments: [(TOPOLOGY_ZONE_ID_KEY.to_owned(), "use1-az9".to_owned())].into(),
            }],
            preferred: vec![],
        };
        assert_eq!(
            accessible_zones("fs", &zones, Some(&elsewhere))
                .expect_err("no overlap")
                .code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            accessible_zones("fs", &[], None).expect_err("none").code(),
            tonic::Code::FailedPrecondition
        );
    }

    #[test]
    fn capacity_is_what_was_asked() {
        assert_eq!(capacity_bytes(None).expect("ok"), 0);
        let r = |req, lim| csi::CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        };
        assert_eq!(capacity_bytes(Some(&r(5, 0))).expect("ok"), 5);
        assert_eq!(capacity_bytes(Some(&r(0, 7))).expect("ok"), 7);
        assert!(capacity_bytes(Some(&r(-1, 0))).is_err());
        assert!(capacity_bytes(Some(&r(9, 3))).is_err());
    }
}
