//! POSIX GID allocation for access points, per file system.
//!
//! The used GIDs of a file system are learned by paging through its access points, and then
//! kept current as this controller creates and deletes access points, so a CreateVolume costs no
//! list calls in the steady state (the Go EFS driver lists every access point on every request).
//! The view is relearned after `refresh` to pick up access points made by others, and after a
//! restart it is simply learned again. Allocation under a per-file-system lock gives concurrent
//! requests distinct GIDs.
//!
//! A GID handed out stays *in flight* until its CreateAccessPoint call has settled
//! ([`GidAllocator::settled`]): a relearn keeps every in-flight GID, because the listing cannot
//! show an access point whose creation is still under way. When the call settles:
//! - created: the GID is used (the listing will show it from now on);
//! - refused before anything was made (validation, quota, throttling, access denied): the GID is
//!   released at once ([`GidAllocator::release`]);
//! - outcome unknown (a timeout, a 5xx): the GID stays used and is remembered for that volume
//!   ([`GidAllocator::remember`]), so the retry sends the same request (which the service then
//!   answers idempotently) instead of drawing another GID.
//!
//! A range that looks full is relearned once before the answer is "exhausted" (at most every
//! [`EXHAUSTED_RELEARN_EVERY`]), so GIDs held for calls that made nothing are not lost until the
//! periodic relearn.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Error;

/// The least time between two relearns forced by a range that looks full.
pub const EXHAUSTED_RELEARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct FsGids {
    used: BTreeSet<u32>,
    /// GIDs handed to creates whose call has not settled, with how many (a GID fixed by a
    /// StorageClass can be in flight for several volumes).
    in_flight: HashMap<u32, usize>,
    learned_at: Option<Instant>,
    /// GIDs of creates whose outcome is unknown, by volume name, for their retries.
    remembered: HashMap<String, u32>,
}

impl FsGids {
    fn lowest_free(&self, (start, end): (u32, u32)) -> Option<u32> {
        let mut candidate = start;
        for used in self.used.range(start..=end) {
            if *used != candidate {
                break;
            }
            candidate = candidate.checked_add(1)?;
        }
        (candidate <= end && !self.used.contains(&candidate)).then_some(candidate)
    }

    fn relearned(&mut self, listed: BTreeSet<u32>) {
        let mut used = listed;
        used.extend(self.in_flight.keys().copied());
        used.extend(self.remembered.values().copied());
        self.used = used;
        self.learned_at = Some(Instant::now());
    }
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

    /// Reserves the lowest free GID in `range` (inclusive) on file system `fs`, in flight until
    /// [`GidAllocator::settled`]. `learn` lists the GIDs the file system's access points hold;
    /// it is called when the view is missing or stale, and once more when the range looks full.
    /// A retry of `volume` after a create of unknown outcome gets the GID it had.
    pub async fn allocate<F, Fut>(
        &self,
        fs: &str,
        range: (u32, u32),
        volume: &str,
        learn: F,
    ) -> Result<u32, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<BTreeSet<u32>, Error>>,
    {
        let entry = self.entry(fs);
        let mut gids = entry.lock().await;
        if let Some(&gid) = gids.remembered.get(volume)
            && (range.0..=range.1).contains(&gid)
        {
            gids.used.insert(gid);
            *gids.in_flight.entry(gid).or_default() += 1;
            return Ok(gid);
        }
        let stale = gids.learned_at.is_none_or(|t| t.elapsed() >= self.refresh);
        if stale {
            let listed = learn().await?;
            gids.relearned(listed);
        }
        let mut free = gids.lowest_free(range);
        if free.is_none()
            && !stale
            && gids
                .learned_at
                .is_none_or(|t| t.elapsed() >= EXHAUSTED_RELEARN_EVERY)
        {
            let listed = learn().await?;
            gids.relearned(listed);
            free = gids.lowest_free(range);
        }
        let Some(gid) = free else {
            let (start, end) = range;
            let taken = gids.used.range(start..=end).count();
            return Err(Error::ResourceExhausted(format!(
                "no free GID in {start}-{end} on file system {fs}: all {taken} are used by access points; \
                 widen gidRangeStart/gidRangeEnd in the StorageClass or use another file system"
            )));
        };
        gids.used.insert(gid);
        *gids.in_flight.entry(gid).or_default() += 1;
        Ok(gid)
    }

    /// The CreateAccessPoint call that `gid` was handed out for has returned, whatever it said.
    /// The GID stays used (release it when the call made nothing).
    pub async fn settled(&self, fs: &str, gid: u32) {
        let entry = self.entry(fs);
        let mut gids = entry.lock().await;
        if let Some(n) = gids.in_flight.get_mut(&gid) {
            *n -= 1;
            if *n == 0 {
                gids.in_flight.remove(&gid);
            }
        }
    }

    /// The create of `volume` with `gid` ended without knowing whether it made the access point:
    /// its retry is to use the same GID.
    pub async fn remember(&self, fs: &str, volume: &str, gid: u32) {
        self.entry(fs)
            .lock()
            .await
            .remembered
            .insert(volume.to_owned(), gid);
    }

    /// The create of `volume` has an outcome now (made, adopted, or refused).
    pub async fn forget(&self, fs: &str, volume: &str) {
        self.entry(fs).lock().await.remembered.remove(volume);
    }

    /// Marks `gid` used (an existing access point was adopted, or one was created elsewhere).
    pub async fn mark_used(&self, fs: &str, gid: u32) {
        self.entry(fs).lock().await.used.insert(gid);
    }

    /// Frees `gid` (its access point was deleted, or its creation made nothing). A GID still
    /// in flight for another call stays used.
    pub async fn release(&self, fs: &str, gid: u32) {
        let entry = self.entry(fs);
        let mut gids = entry.lock().await;
        if !gids.in_flight.contains_key(&gid) {
            gids.used.remove(&gid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The file system's access points as the listing shows them, and how often it was listed.
    #[derive(Default)]
    struct Listing {
        gids: Mutex<BTreeSet<u32>>,
        calls: AtomicUsize,
    }

    impl Listing {
        fn learn(&self) -> impl Future<Output = Result<BTreeSet<u32>, Error>> + '_ {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let gids = self.gids.lock().expect("lock").clone();
            async move { Ok(gids) }
        }
        fn create(&self, gid: u32) {
            self.gids.lock().expect("lock").insert(gid);
        }
    }

    const RANGE: (u32, u32) = (100, 109);

    #[tokio::test]
    async fn a_relearn_during_a_create_keeps_its_gid() {
        // refresh 0: every allocation relearns, as the 15-minute one does mid-create.
        let alloc = GidAllocator::new(Duration::ZERO);
        let listing = Listing::default();
        let first = alloc
            .allocate("fs", RANGE, "v1", || listing.learn())
            .await
            .expect("gid");
        // The first create is still in flight (its access point not listed yet).
        let second = alloc
            .allocate("fs", RANGE, "v2", || listing.learn())
            .await
            .expect("gid");
        assert_ne!(first, second, "the relearn dropped an in-flight GID");
        listing.create(first);
        alloc.settled("fs", first).await;
        listing.create(second);
        alloc.settled("fs", second).await;
        let third = alloc
            .allocate("fs", RANGE, "v3", || listing.learn())
            .await
            .expect("gid");
        assert!(third != first && third != second);
    }

    #[tokio::test]
    async fn concurrent_creates_under_relearns_never_share_a_gid() {
        let alloc = Arc::new(GidAllocator::new(Duration::ZERO));
        let listing = Arc::new(Listing::default());
        let mut tasks = Vec::new();
        for i in 0..10u64 {
            let (alloc, listing) = (alloc.clone(), listing.clone());
            tasks.push(tokio::spawn(async move {
                let gid = alloc
                    .allocate("fs", RANGE, &format!("v{i}"), || listing.learn())
                    .await
                    .expect("gid");
                // Creates take different times and settle in another order.
                tokio::time::sleep(Duration::from_millis(10 * (10 - i))).await;
                listing.create(gid);
                alloc.settled("fs", gid).await;
                gid
            }));
        }
        let mut gids = BTreeSet::new();
        for t in tasks {
            assert!(gids.insert(t.await.expect("task")), "duplicate GID");
        }
        assert_eq!(gids.len(), 10);
    }

    #[tokio::test]
    async fn a_create_that_made_nothing_gives_its_gid_back() {
        let alloc = GidAllocator::new(Duration::from_secs(900));
        let listing = Listing::default();
        let one = (7, 7);
        let gid = alloc
            .allocate("fs", one, "v", || listing.learn())
            .await
            .expect("gid");
        assert_eq!(gid, 7, "a one-GID range works");
        // Throttled: nothing was made.
        alloc.settled("fs", gid).await;
        alloc.release("fs", gid).await;
        assert_eq!(
            alloc
                .allocate("fs", one, "v", || listing.learn())
                .await
                .expect("again"),
            7
        );
    }

    #[tokio::test]
    async fn a_full_looking_range_is_relearned_once_before_it_is_exhausted() {
        let alloc = GidAllocator::new(Duration::from_secs(900));
        let listing = Listing::default();
        let one = (7, 7);
        let gid = alloc
            .allocate("fs", one, "v", || listing.learn())
            .await
            .expect("gid");
        // A timeout: unknown whether the access point exists, so the GID stays used...
        alloc.settled("fs", gid).await;
        // ...until a relearn shows it does not. The first attempt relearns at most every 10 s,
        // so at once after the learn it is exhausted:
        let err = alloc
            .allocate("fs", one, "v", || listing.learn())
            .await
            .expect_err("full");
        assert!(err.to_string().contains("no free GID in 7-7"), "{err}");
        assert_eq!(listing.calls.load(Ordering::SeqCst), 1);
        // Once the relearn interval has passed, the phantom goes.
        {
            let entry = alloc.entry("fs");
            let mut gids = entry.lock().await;
            gids.learned_at = Some(Instant::now() - EXHAUSTED_RELEARN_EVERY);
        }
        assert_eq!(
            alloc
                .allocate("fs", one, "v", || listing.learn())
                .await
                .expect("freed"),
            7
        );
        assert_eq!(listing.calls.load(Ordering::SeqCst), 2);
        // A live access point keeps it used through relearns.
        listing.create(7);
        alloc.settled("fs", 7).await;
        {
            let entry = alloc.entry("fs");
            entry.lock().await.learned_at = Some(Instant::now() - EXHAUSTED_RELEARN_EVERY);
        }
        assert!(
            alloc
                .allocate("fs", one, "v", || listing.learn())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_retry_after_an_unknown_outcome_gets_the_same_gid_through_relearns() {
        let alloc = GidAllocator::new(Duration::ZERO);
        let listing = Listing::default();
        let gid = alloc
            .allocate("fs", RANGE, "pvc-a", || listing.learn())
            .await
            .expect("gid");
        alloc.settled("fs", gid).await;
        alloc.remember("fs", "pvc-a", gid).await;
        // Another volume, with a relearn that does not list it: the GID is not handed out.
        let other = alloc
            .allocate("fs", RANGE, "pvc-b", || listing.learn())
            .await
            .expect("gid");
        assert_ne!(other, gid);
        let again = alloc
            .allocate("fs", RANGE, "pvc-a", || listing.learn())
            .await
            .expect("gid");
        assert_eq!(again, gid, "the retry sends the same request");
        alloc.settled("fs", again).await;
        alloc.forget("fs", "pvc-a").await;
        listing.create(gid);
        let third = alloc
            .allocate("fs", RANGE, "pvc-c", || listing.learn())
            .await
            .expect("gid");
        assert!(third != gid && third != other);
    }

    #[tokio::test]
    async fn a_release_while_another_call_holds_the_gid_keeps_it() {
        let alloc = GidAllocator::new(Duration::from_secs(900));
        let listing = Listing::default();
        let gid = alloc
            .allocate("fs", RANGE, "v4", || listing.learn())
            .await
            .expect("gid");
        alloc.release("fs", gid).await;
        let next = alloc
            .allocate("fs", RANGE, "v5", || listing.learn())
            .await
            .expect("gid");
        assert_ne!(gid, next, "still in flight: not free");
    }
}
