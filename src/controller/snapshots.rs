//! Snapshots from S3 object versions, and the content sources of new volumes.
//!
//! S3 Files needs S3 Versioning and never deletes a version, so the state of a volume at any
//! past moment stays in the bucket. A snapshot is a record (`<fs prefix>.s3files-csi/snapshots/
//! <token>.json`) holding the source volume's directory and a moment from S3's own clock: the
//! time the record's first version was listed with. Taking one costs the same few requests
//! whatever the volume holds; restoring it copies the versions of that moment
//! ([`super::restore`]). The snapshot's size (the bytes a restore copies) is measured after
//! the call returns, by listing the versions, and written to the record.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::restore::{self, RestorePlan};
use super::{ControllerService, FsInfo};
use crate::cloud::CloudError;
use crate::csi;
use crate::data::versions::{OwnerMap, Versions};
use crate::error::{Error, Result};
use crate::volume::VolumeHandle;

/// The directory of the driver's records in a file system's bucket, below its prefix.
pub const RECORDS_DIR: &str = ".s3files-csi/";
/// VolumeSnapshotClass parameter: refuse a snapshot a lifecycle rule may make incomplete.
pub const REFUSE_IF_VERSIONS_EXPIRE: &str = "refuseIfVersionsExpire";
/// Scheme of snapshot ids: `snap:<fs-id>:<token>`.
const SNAPSHOT_SCHEME: &str = "snap";

/// A snapshot's record, as kept in the bucket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub name: String,
    pub source_volume_id: String,
    /// Key prefix of the source volume's directory, ending in `/` (empty: the whole bucket).
    pub prefix: String,
    /// The source volume's POSIX user (uid, gid) when it had one.
    pub owner: Option<(u32, u32)>,
    /// The moment, in milliseconds since the epoch by S3's clock.
    pub time_ms: Option<i64>,
    /// Bytes and objects a restore copies, once measured.
    pub size_bytes: Option<u64>,
    pub objects: Option<u64>,
}

/// A snapshot id, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotId {
    pub file_system_id: String,
    pub token: String,
}

impl SnapshotId {
    pub fn for_name(file_system_id: &str, name: &str) -> Self {
        let token = Sha256::digest(name.as_bytes())[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        SnapshotId {
            file_system_id: file_system_id.to_owned(),
            token,
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.split(':');
        let (Some(SNAPSHOT_SCHEME), Some(fs), Some(token), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let fs_ok = VolumeHandle::parse(&format!("{}:{fs}", crate::volume::SCHEME)).is_ok();
        let token_ok = token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit());
        (fs_ok && token_ok).then(|| SnapshotId {
            file_system_id: fs.to_owned(),
            token: token.to_owned(),
        })
    }

    /// The record's key in a bucket whose file system has prefix `fs_prefix`.
    pub fn record_key(&self, fs_prefix: &str) -> String {
        format!("{fs_prefix}{RECORDS_DIR}snapshots/{}.json", self.token)
    }
}

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{SNAPSHOT_SCHEME}:{}:{}",
            self.file_system_id, self.token
        )
    }
}

/// Where a volume's files are.
#[derive(Clone, Debug)]
pub(super) struct VolumeData {
    pub fs: FsInfo,
    pub file_system_id: String,
    /// Key prefix of its directory, ending in `/` (empty: the whole bucket).
    pub prefix: String,
    pub owner: Option<(u32, u32)>,
}

/// What a new volume's content comes from.
pub(super) struct ContentSource {
    /// The snapshot or volume id.
    pub id: String,
    pub description: String,
    pub prefix: String,
    pub time_ms: Option<i64>,
    pub owner: Option<(u32, u32)>,
    pub expected_objects: Option<u64>,
}

/// Key prefixes under a file system's root that are never a volume's files.
pub(super) fn not_volume_data(fs: &FsInfo, fs_id: &str) -> Vec<String> {
    vec![
        format!("{}{RECORDS_DIR}", fs.prefix),
        format!("{}.s3files-lost+found-{fs_id}/", fs.prefix),
    ]
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn snapshot_of(id: &SnapshotId, record: &SnapshotRecord, time_ms: i64) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: record
            .size_bytes
            .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        snapshot_id: id.to_string(),
        source_volume_id: record.source_volume_id.clone(),
        creation_time: Some(timestamp(time_ms)),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

fn decode(bytes: &[u8], what: &str) -> Result<SnapshotRecord> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Internal(format!("snapshot record {what} is not readable: {e}")))
}

fn encode(record: &SnapshotRecord) -> Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(|e| Error::Internal(format!("encoding a record: {e}")))
}

impl ControllerService {
    fn versions(&self) -> Result<std::sync::Arc<dyn Versions>> {
        self.inner.versions.clone().ok_or_else(|| {
            Error::FailedPrecondition(
                "snapshots and clones need the controller's --data-store on S3 (the chart's \
                 controller.dataStore: s3, or s3:URL for an S3-compatible endpoint) and a \
                 versioned bucket; local bucket directories keep no versions"
                    .into(),
            )
        })
    }

    /// The files of volume `volume_id`; `NotFound` unless it exists.
    pub(super) async fn volume_data(&self, volume_id: &str) -> Result<VolumeData> {
        let handle = VolumeHandle::parse(volume_id)
            .map_err(|why| Error::NotFound(format!("volume {volume_id} ({why})")))?;
        let fs_id = handle.file_system_id.clone();
        let (root, owner) = match &handle.access_point_id {
            Some(ap_id) => match self.inner.cloud.get_access_point(ap_id).await {
                Ok(ap) if ap.file_system_id == fs_id => (
                    ap.root_path.unwrap_or_else(|| "/".into()),
                    ap.posix_user.map(|u| (u.uid, u.gid)),
                ),
                Ok(_) | Err(CloudError::NotFound(_)) => {
                    return Err(Error::NotFound(format!(
                        "volume {volume_id} (access point {ap_id} of file system {fs_id})"
                    )));
                }
                Err(e) => return Err(e.into()),
            },
            None => ("/".to_owned(), None),
        };
        let fs = match self.fs_info(&fs_id).await {
            Ok(fs) => fs,
            Err(Error::InvalidArgument { .. }) => {
                return Err(Error::NotFound(format!(
                    "volume {volume_id} (file system {fs_id})"
                )));
            }
            Err(e) => return Err(e),
        };
        let mut dir = root.trim_matches('/').to_owned();
        if let Some(sub) = handle.subpath.as_deref().map(|s| s.trim_matches('/'))
            && !sub.is_empty()
        {
            dir = if dir.is_empty() {
                sub.to_owned()
            } else {
                format!("{dir}/{sub}")
            };
        }
        let prefix = if dir.is_empty() {
            fs.prefix.clone()
        } else {
            format!("{}{dir}/", fs.prefix)
        };
        Ok(VolumeData {
            fs,
            file_system_id: fs_id,
            prefix,
            owner,
        })
    }

    pub(super) async fn create_snapshot(
        &self,
        req: csi::CreateSnapshotRequest,
    ) -> Result<csi::CreateSnapshotResponse> {
        super::check_name(&req.name)?;
        if req.source_volume_id.is_empty() {
            return Err(Error::invalid("source_volume_id", "must not be empty"));
        }
        let mut refuse = false;
        for (k, v) in &req.parameters {
            if k.starts_with("csi.storage.k8s.io/") {
                continue;
            }
            match (k.as_str(), v.as_str()) {
                (REFUSE_IF_VERSIONS_EXPIRE, "true") => refuse = true,
                (REFUSE_IF_VERSIONS_EXPIRE, "false") => refuse = false,
                (REFUSE_IF_VERSIONS_EXPIRE, other) => {
                    return Err(Error::invalid_parameter(
                        k,
                        format!("{other:?} is not true or false"),
                    ));
                }
                _ => {
                    return Err(Error::invalid_parameter(
                        k,
                        format!(
                            "unknown VolumeSnapshotClass parameter; the one known is {REFUSE_IF_VERSIONS_EXPIRE}"
                        ),
                    ));
                }
            }
        }
        let versions = self.versions()?;
        let source = self.volume_data(&req.source_volume_id).await?;
        let _lock = self.lock(&format!("snapshot/{}", req.name))?;
        let id = SnapshotId::for_name(&source.file_system_id, &req.name);
        let key = id.record_key(&source.fs.prefix);
        let bucket = crate::data::bucket_name(&source.fs.bucket)?.to_owned();
        let existing = match versions.get(&bucket, &key).await? {
            Some(bytes) => Some(decode(&bytes, &key)?),
            None => None,
        };
        let record = match existing {
            Some(r) if r.source_volume_id != req.source_volume_id || r.name != req.name => {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {} exists for volume {}, not {}; use another name",
                    req.name, r.source_volume_id, req.source_volume_id
                )));
            }
            Some(r) => r,
            None => {
                self.check_lifecycle(&*versions, &bucket, &source.prefix, refuse)
                    .await?;
                let fresh = SnapshotRecord {
                    name: req.name.clone(),
                    source_volume_id: req.source_volume_id.clone(),
                    prefix: source.prefix.clone(),
                    owner: source.owner,
                    time_ms: None,
                    size_bytes: None,
                    objects: None,
                };
                versions.put(&bucket, &key, encode(&fresh)?).await?;
                fresh
            }
        };
        let record = match record.time_ms {
            Some(_) => record,
            None => {
                let t = versions.modified_ms(&bucket, &key).await?.ok_or_else(|| {
                    Error::Unavailable(format!(
                        "snapshot record {bucket}/{key} is not listed yet; retry"
                    ))
                })?;
                let timed = SnapshotRecord {
                    time_ms: Some(t),
                    ..record
                };
                versions.put(&bucket, &key, encode(&timed)?).await?;
                info!(snapshot = %id, volume = %req.source_volume_id, prefix = %source.prefix, time_ms = t, "snapshot taken");
                self.measure_later(versions.clone(), bucket, key, timed.clone(), &source);
                timed
            }
        };
        let time_ms = record.time_ms.unwrap_or_default();
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(snapshot_of(&id, &record, time_ms)),
        })
    }

    /// Warns of (or refuses, with `refuse`) lifecycle rules that expire noncurrent versions
    /// under `prefix`.
    async fn check_lifecycle(
        &self,
        versions: &dyn Versions,
        bucket: &str,
        prefix: &str,
        refuse: bool,
    ) -> Result<()> {
        let rules = versions.expiring_rules(bucket).await?;
        let Some(rule) = rules
            .iter()
            .find(|r| prefix.starts_with(&r.prefix) || r.prefix.starts_with(prefix))
        else {
            return Ok(());
        };
        let days = rule
            .noncurrent_days
            .map_or("some".to_owned(), |d| d.to_string());
        let why = format!(
            "lifecycle rule {:?} of bucket {bucket} expires noncurrent versions under {:?} after {days} days{}: \
             a snapshot of {prefix} older than that may not restore completely",
            rule.id,
            rule.prefix,
            if rule.narrower {
                " (for some tags or sizes)"
            } else {
                ""
            }
        );
        if refuse {
            return Err(Error::FailedPrecondition(format!(
                "{why}; the VolumeSnapshotClass sets {REFUSE_IF_VERSIONS_EXPIRE}: true"
            )));
        }
        warn!("{why}");
        if let Some(m) = &self.inner.metrics {
            m.snapshot_warning();
        }
        Ok(())
    }

    /// Measures a new snapshot's size in the background and writes it to its record.
    fn measure_later(
        &self,
        versions: std::sync::Arc<dyn Versions>,
        bucket: String,
        key: String,
        record: SnapshotRecord,
        source: &VolumeData,
    ) {
        let skip = not_volume_data(&source.fs, &source.file_system_id);
        tokio::spawn(async move {
            let time_ms = record.time_ms.unwrap_or_default();
            let measured =
                restore::measure(&*versions, &bucket, &record.prefix, time_ms, &skip).await;
            let (objects, bytes) = match measured {
                Ok(m) => m,
                Err(e) => {
                    warn!(%key, error = %e, "the snapshot's size could not be measured");
                    return;
                }
            };
            // Only the record this call wrote: a deleted or retaken snapshot is left alone.
            let current = versions.get(&bucket, &key).await.ok().flatten();
            let same = current
                .and_then(|b| serde_json::from_slice::<SnapshotRecord>(&b).ok())
                .is_some_and(|r| r == record);
            if !same {
                return;
            }
            let sized = SnapshotRecord {
                size_bytes: Some(bytes),
                objects: Some(objects),
                ..record
            };
            if let Ok(body) = serde_json::to_vec(&sized)
                && let Err(e) = versions.put(&bucket, &key, body).await
            {
                warn!(%key, error = %e, "the snapshot's size could not be recorded");
            }
        });
    }

    pub(super) async fn delete_snapshot(
        &self,
        req: csi::DeleteSnapshotRequest,
    ) -> Result<csi::DeleteSnapshotResponse> {
        if req.snapshot_id.is_empty() {
            return Err(Error::invalid("snapshot_id", "must not be empty"));
        }
        let Some(id) = SnapshotId::parse(&req.snapshot_id) else {
            warn!(snapshot = %req.snapshot_id, "deleting a snapshot id this driver does not make; nothing to do");
            return Ok(csi::DeleteSnapshotResponse {});
        };
        let versions = self.versions()?;
        let fs = match self.fs_info(&id.file_system_id).await {
            Ok(fs) => fs,
            // Its file system is gone, and the record with it.
            Err(Error::InvalidArgument { .. }) => return Ok(csi::DeleteSnapshotResponse {}),
            Err(e) => return Err(e),
        };
        let _lock = self.lock(&format!("snapshot-id/{id}"))?;
        let bucket = crate::data::bucket_name(&fs.bucket)?;
        versions.delete(bucket, &id.record_key(&fs.prefix)).await?;
        info!(snapshot = %id, "snapshot deleted");
        Ok(csi::DeleteSnapshotResponse {})
    }

    pub(super) async fn list_snapshots(
        &self,
        req: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse> {
        if req.max_entries < 0 {
            return Err(Error::invalid("max_entries", "must not be negative"));
        }
        let versions = self.versions()?;
        let mut found: Vec<(SnapshotId, csi::Snapshot)> = Vec::new();
        if !req.snapshot_id.is_empty() {
            if let Some(id) = SnapshotId::parse(&req.snapshot_id)
                && let Some(s) = self.read_snapshot(&*versions, &id).await?
                && (req.source_volume_id.is_empty() || s.source_volume_id == req.source_volume_id)
            {
                found.push((id, s));
            }
        } else {
            let file_systems = if req.source_volume_id.is_empty() {
                self.inner.cloud.list_file_system_ids().await?
            } else {
                match VolumeHandle::parse(&req.source_volume_id) {
                    Ok(h) => vec![h.file_system_id],
                    Err(_) => Vec::new(),
                }
            };
            for fs_id in file_systems {
                let fs = match self.fs_info(&fs_id).await {
                    Ok(fs) => fs,
                    // Deleted meanwhile, or not available: it holds no snapshot to list now.
                    Err(Error::InvalidArgument { .. } | Error::Unavailable(_)) => continue,
                    Err(e) => return Err(e),
                };
                let bucket = crate::data::bucket_name(&fs.bucket)?;
                let dir = format!("{}{RECORDS_DIR}snapshots/", fs.prefix);
                for key in versions.keys(bucket, &dir, None, usize::MAX).await? {
                    let Some(token) = key.strip_prefix(&dir).and_then(|k| k.strip_suffix(".json"))
                    else {
                        continue;
                    };
                    let Some(id) = SnapshotId::parse(&format!("{SNAPSHOT_SCHEME}:{fs_id}:{token}"))
                    else {
                        continue;
                    };
                    if let Some(s) = self.read_snapshot(&*versions, &id).await?
                        && (req.source_volume_id.is_empty()
                            || s.source_volume_id == req.source_volume_id)
                    {
                        found.push((id, s));
                    }
                }
            }
        }
        found.sort_by(|a, b| a.1.snapshot_id.cmp(&b.1.snapshot_id));
        let start = if req.starting_token.is_empty() {
            0
        } else {
            match found
                .iter()
                .position(|(_, s)| s.snapshot_id == req.starting_token)
            {
                Some(i) => i,
                None => {
                    return Err(Error::InProgress(format!(
                        "listing from starting_token {:?}, which names no snapshot now (restart the listing)",
                        req.starting_token
                    )));
                }
            }
        };
        let rest = &found[start..];
        let take = if req.max_entries == 0 {
            rest.len()
        } else {
            (req.max_entries as usize).min(rest.len())
        };
        let next_token = rest
            .get(take)
            .map(|(_, s)| s.snapshot_id.clone())
            .unwrap_or_default();
        Ok(csi::ListSnapshotsResponse {
            entries: rest[..take]
                .iter()
                .map(|(_, s)| csi::list_snapshots_response::Entry {
                    snapshot: Some(s.clone()),
                })
                .collect(),
            next_token,
        })
    }

    async fn read_snapshot(
        &self,
        versions: &dyn Versions,
        id: &SnapshotId,
    ) -> Result<Option<csi::Snapshot>> {
        Ok(self
            .snapshot_record(versions, id)
            .await?
            .map(|(r, t)| snapshot_of(id, &r, t)))
    }

    /// A snapshot's record and moment; `None` when it does not exist.
    async fn snapshot_record(
        &self,
        versions: &dyn Versions,
        id: &SnapshotId,
    ) -> Result<Option<(SnapshotRecord, i64)>> {
        let fs = match self.fs_info(&id.file_system_id).await {
            Ok(fs) => fs,
            Err(Error::InvalidArgument { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let bucket = crate::data::bucket_name(&fs.bucket)?;
        let key = id.record_key(&fs.prefix);
        let Some(bytes) = versions.get(bucket, &key).await? else {
            return Ok(None);
        };
        let record = decode(&bytes, &key)?;
        let time_ms = match record.time_ms {
            Some(t) => t,
            // Written by a call that stopped before it recorded the moment: the first version's.
            None => match versions.modified_ms(bucket, &key).await? {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        Ok(Some((record, time_ms)))
    }

    /// Checks a CreateVolume's content source against the new volume's file system.
    pub(super) async fn content_source(
        &self,
        source: &csi::VolumeContentSource,
        file_system_id: &str,
    ) -> Result<ContentSource> {
        use csi::volume_content_source::Type;
        // CLONE_VOLUME is not advertised then: the spec's answer to a source the plugin does
        // not support.
        let versions = self
            .versions()
            .map_err(|e| Error::invalid("volume_content_source", e.to_string()))?;
        match &source.r#type {
            Some(Type::Snapshot(s)) => {
                let Some(id) = SnapshotId::parse(&s.snapshot_id) else {
                    return Err(Error::NotFound(format!(
                        "snapshot {:?} (not an id this driver makes)",
                        s.snapshot_id
                    )));
                };
                if id.file_system_id != file_system_id {
                    return Err(Error::invalid(
                        "volume_content_source",
                        format!(
                            "snapshot {id} is of file system {}; a volume restored from it must be on the same file system (use a StorageClass with fileSystemId {})",
                            id.file_system_id, id.file_system_id
                        ),
                    ));
                }
                let Some((record, time_ms)) = self.snapshot_record(&*versions, &id).await? else {
                    return Err(Error::NotFound(format!("snapshot {id}")));
                };
                Ok(ContentSource {
                    id: id.to_string(),
                    description: format!("snapshot {id}"),
                    prefix: record.prefix,
                    time_ms: Some(time_ms),
                    owner: record.owner,
                    expected_objects: record.objects,
                })
            }
            Some(Type::Volume(v)) => {
                let source = self.volume_data(&v.volume_id).await?;
                if source.file_system_id != file_system_id {
                    return Err(Error::invalid(
                        "volume_content_source",
                        format!(
                            "volume {} is on file system {}; a clone of it must be on the same file system (use a StorageClass with fileSystemId {})",
                            v.volume_id, source.file_system_id, source.file_system_id
                        ),
                    ));
                }
                Ok(ContentSource {
                    id: v.volume_id.clone(),
                    description: format!("volume {}", v.volume_id),
                    prefix: source.prefix,
                    time_ms: None,
                    owner: source.owner,
                    expected_objects: None,
                })
            }
            None => Err(Error::invalid(
                "volume_content_source",
                "names neither a snapshot nor a volume",
            )),
        }
    }

    fn restore_record_key(fs: &FsInfo, token: &str) -> String {
        format!("{}{RECORDS_DIR}restores/{token}.json", fs.prefix)
    }

    /// Stops a restore into `ap`'s volume if one runs here, and deletes its record.
    pub(super) async fn forget_restore(
        &self,
        fs_id: &str,
        ap: &crate::cloud::AccessPoint,
    ) -> Result<()> {
        let (Some(versions), Some(token)) =
            (self.inner.versions.clone(), ap.client_token.as_deref())
        else {
            return Ok(());
        };
        let fs = self.fs_info(fs_id).await?;
        let key = Self::restore_record_key(&fs, token);
        self.inner.restores.abort(&key);
        versions
            .delete(crate::data::bucket_name(&fs.bucket)?, &key)
            .await
    }

    /// Restores `source` into the new volume's directory `dest_prefix`, owned by `owner`.
    pub(super) async fn restore(
        &self,
        volume_name: &str,
        fs: &FsInfo,
        fs_id: &str,
        source: &ContentSource,
        dest_prefix: String,
        owner: Option<(u32, u32)>,
    ) -> Result<()> {
        let versions = self.versions()?;
        let bucket = crate::data::bucket_name(&fs.bucket)?.to_owned();
        let token = super::client_token(volume_name);
        let mut skip = not_volume_data(fs, fs_id);
        skip.push(dest_prefix.clone());
        let owners = match (source.owner, owner) {
            (Some(from), Some(to)) if from != to => Some(OwnerMap { from, to }),
            _ => None,
        };
        let plan = RestorePlan {
            bucket,
            record_key: Self::restore_record_key(fs, &token),
            source: source.description.clone(),
            source_prefix: source.prefix.clone(),
            dest_prefix,
            time_ms: source.time_ms,
            owners,
            expected_objects: source.expected_objects,
            skip_prefixes: skip,
        };
        let wait = self.inner.config.restore_wait;
        self.inner
            .restores
            .wait(versions, plan, self.inner.metrics.clone(), wait)
            .await
            .map(|_| ())
    }
}

/// The longest a CreateVolume waits for its restore before it answers Aborted with progress.
pub const DEFAULT_RESTORE_WAIT: Duration = Duration::from_secs(8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_round_trip_and_strangers_do_not_parse() {
        let id = SnapshotId::for_name("fs-0123456789abcdef0", "snapshot-1");
        let s = id.to_string();
        assert!(s.starts_with("snap:fs-0123456789abcdef0:"), "{s}");
        assert_eq!(SnapshotId::parse(&s), Some(id.clone()));
        assert_eq!(
            SnapshotId::for_name("fs-0123456789abcdef0", "snapshot-1"),
            id
        );
        assert_ne!(
            SnapshotId::for_name("fs-0123456789abcdef0", "snapshot-2"),
            id
        );
        for bad in [
            "",
            "snap:fs-1:abc",
            "snap:fs-0123456789abcdef0:xyz",
            "vol:fs-0123456789abcdef0:0123456789abcdef0123456789abcdef",
            "snap:fs-0123456789abcdef0:0123456789abcdef0123456789abcdef:x",
        ] {
            assert_eq!(SnapshotId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_split_milliseconds() {
        let t = timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
    }
}
