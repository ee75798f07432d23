//! Listings of a file system's access points, shared by every caller that needs one at the same
//! moment: GID learns, GID verifications and readiness polls.
//!
//! A caller asks for a listing that *began after* a given instant (after its access point
//! existed, or now); whoever finds none running starts one, and the callers queued behind it
//! take its result if it began late enough. A burst of creates then costs one listing per
//! round instead of one per create.
//!
//! Readiness: while a file system has more access points waiting for `available` than a listing
//! has pages, one shared listing answers all of them (list entries carry the status) instead of
//! one GetAccessPoint each, so polls take a bounded share of the API rate in a burst.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::cloud::{AccessPoint, S3Files};
use crate::error::Result;

/// Access points per ListAccessPoints page (the API's maximum, which the client asks for).
pub const PAGE: usize = 1000;

struct Listing {
    started: Instant,
    wall: SystemTime,
    access_points: Arc<Vec<AccessPoint>>,
}

#[derive(Default)]
struct FsListings {
    last: tokio::sync::Mutex<Option<Listing>>,
    /// Access points known from the last listing, for its page count.
    known: AtomicUsize,
    /// Access points waiting for `available`.
    waiting: AtomicUsize,
}

/// One per controller.
#[derive(Default)]
pub struct Listings {
    file_systems: Mutex<HashMap<String, Arc<FsListings>>>,
}

/// Counts an access point as waiting for `available` until dropped.
pub struct Waiting(Arc<FsListings>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Listings {
    fn fs(&self, fs_id: &str) -> Arc<FsListings> {
        self.file_systems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(fs_id.to_owned())
            .or_default()
            .clone()
    }

    /// The access points of `fs_id` by a listing that began after `after`, and when it began
    /// by the wall clock.
    pub async fn after(
        &self,
        cloud: &dyn S3Files,
        fs_id: &str,
        after: Instant,
    ) -> Result<(SystemTime, Arc<Vec<AccessPoint>>)> {
        let fs = self.fs(fs_id);
        let mut last = fs.last.lock().await;
        if let Some(l) = last.as_ref()
            && l.started >= after
        {
            return Ok((l.wall, l.access_points.clone()));
        }
        let (started, wall) = (Instant::now(), SystemTime::now());
        let access_points = Arc::new(cloud.list_access_points(fs_id).await?);
        fs.known.store(access_points.len(), Ordering::SeqCst);
        *last = Some(Listing {
            started,
            wall,
            access_points: access_points.clone(),
        });
        Ok((wall, access_points))
    }

    /// Registers an access point of `fs_id` as waiting for `available`.
    pub fn waiting(&self, fs_id: &str) -> Waiting {
        let fs = self.fs(fs_id);
        fs.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(fs)
    }

    /// Whether a shared listing is cheaper than one GetAccessPoint per waiting access point.
    pub fn poll_by_listing(&self, fs_id: &str) -> bool {
        let fs = self.fs(fs_id);
        let pages = fs.known.load(Ordering::SeqCst) / PAGE + 1;
        fs.waiting.load(Ordering::SeqCst) > pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_answers_polls_only_when_it_is_cheaper() {
        let l = Listings::default();
        let one = l.waiting("fs");
        assert!(!l.poll_by_listing("fs"), "one waiter: one GetAccessPoint");
        let two = l.waiting("fs");
        assert!(l.poll_by_listing("fs"), "two waiters, one page");
        l.fs("fs").known.store(5_000, Ordering::SeqCst);
        let more: Vec<_> = (0..4).map(|_| l.waiting("fs")).collect();
        assert!(!l.poll_by_listing("fs"), "six waiters, six pages");
        let extra = l.waiting("fs");
        assert!(l.poll_by_listing("fs"));
        drop((one, two, more, extra));
        assert!(!l.poll_by_listing("fs"));
        assert!(!l.poll_by_listing("other"));
    }
}
