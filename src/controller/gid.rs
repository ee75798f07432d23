//! POSIX GID allocation for access points, per file system.
//!
//! The used GIDs of a file system are learned once, by paging through its access points, and
//! then kept current as this controller creates and deletes access points, so a CreateVolume
//! costs no list calls in the steady state (the Go EFS driver lists every access point on every
//! request). The view is relearned after `refresh` to pick up access points made by others, and
//! after a restart it is simply learned again. Allocation under a per-file-system lock gives
//! concurrent requests distinct GIDs; a GID whose creation failed is released.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cloud::S3Files;
use crate::error::Error;

#[derive(Default)]
struct FsGids {
    used: BTreeSet<u32>,
    learned_at: Option<Instant>,
}

/// Allocates GIDs from ranges, one view per file system.
pub struct GidAllocator {
    file_systems: Mutex<HashMap<String, Arc<tokio::sync::Mutex<FsGids>>>>,
    refresh: Duration,
}

impl GidAllocator {
    pub fn new(refresh: Duration) -> Self {
        GidAllocator {
            file_systems: Mutex::new(HashMap::new()),
            refresh,
        }
    }

    fn entry(&self, fs: &str) -> Arc<tokio::sync::Mutex<FsGids>> {
        let mut map = self.file_systems.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(fs.to_owned()).or_default().clone()
    }

    /// Reserves the lowest free GID in `range` (inclusive) on file system `fs`.
    pub async fn allocate(
        &self,
        cloud: &dyn S3Files,
        fs: &str,
        range: (u32, u32),
    ) -> Result<u32, Error> {
        let entry = self.entry(fs);
        let mut gids = entry.lock().await;
        let stale = gids.learned_at.is_none_or(|t| t.elapsed() >= self.refresh);
        if stale {
            let mut used = BTreeSet::new();
            for ap in cloud.list_access_points(fs).await? {
                if let Some(user) = ap.posix_user {
                    used.insert(user.gid);
                }
            }
            gids.used = used;
            gids.learned_at = Some(Instant::now());
        }
        let (start, end) = range;
        let mut candidate = start;
        for used in gids.used.range(start..=end) {
            if *used != candidate {
                break;
            }
            candidate = match candidate.checked_add(1) {
                Some(c) => c,
                None => break,
            };
        }
        if candidate > end || gids.used.contains(&candidate) {
            let taken = gids.used.range(start..=end).count();
            return Err(Error::ResourceExhausted(format!(
                "no free GID in {start}-{end} on file system {fs}: all {taken} are used by access points; \
                 widen gidRangeStart/gidRangeEnd in the StorageClass or use another file system"
            )));
        }
        gids.used.insert(candidate);
        Ok(candidate)
    }

    /// Marks `gid` used (an existing access point was adopted, or one was created elsewhere).
    pub async fn mark_used(&self, fs: &str, gid: u32) {
        self.entry(fs).lock().await.used.insert(gid);
    }

    /// Frees `gid` (its access point was deleted, or its creation failed).
    pub async fn release(&self, fs: &str, gid: u32) {
        self.entry(fs).lock().await.used.remove(&gid);
    }
}
