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
//! [`EXHAUSTED_RELEARN_EVERY`], or whenever GIDs were added from outside since the last learn),
//! so GIDs held for calls that made nothing, or by access points that are gone, are not lost
//! until the periodic relearn.
//!
//! Other allocators (the other controller replica, other clients) are the business of
//! `super::terms` and the controller's verification: a [`Grant`] says whether the view it came
//! from can have missed their work. Only a view learned in the current leadership term, after
//! that term's settling time, is trusted; any other grant is a random free GID (two allocators
//! with the same view then rarely draw the same one) whose access point the controller verifies
//! before it returns the volume. A trusted grant is the lowest free GID.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::terms::Term;
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
    /// The leadership term the view was learned in, and when (by the wall clock, as term
    /// starts are), for [`FsGids::trusted`].
    term: Option<String>,
    learned_wall: Option<SystemTime>,
    /// GIDs were added from listings or collisions since the last learn; some may have gone
    /// since (another allocator's access point that yielded), so a full range is relearned.
    added_since_learn: bool,
}

/// A GID handed out by [`GidAllocator::allocate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub gid: u32,
    /// The view it came from may miss another allocator's access points: verify before use.
    pub verify: bool,
}

impl FsGids {
    /// The first free GID at or after `from` in `start..=end`.
    fn free_from(&self, from: u32, end: u32) -> Option<u32> {
        let mut candidate = from;
        for used in self.used.range(from..=end) {
            if *used != candidate {
                break;
            }
            candidate = candidate.checked_add(1)?;
        }
        (candidate <= end && !self.used.contains(&candidate)).then_some(candidate)
    }

    /// The lowest free GID of `range`, or (`random`) the first free one at or after a random
    /// point of it, wrapping around.
    fn free(&self, (start, end): (u32, u32), random: bool) -> Option<u32> {
        if !random {
            return self.free_from(start, end);
        }
        let from = fastrand::u32(start..=end);
        self.free_from(from, end).or_else(|| {
            (from > start)
                .then(|| self.free_from(start, from - 1))
                .flatten()
        })
    }

    fn relearned(&mut self, listed: BTreeSet<u32>, term: Option<&Term>, at: SystemTime) {
        let mut used = listed;
        used.extend(self.in_flight.keys().copied());
        used.extend(self.remembered.values().copied());
        self.used = used;
        self.learned_at = Some(Instant::now());
        self.term = term.map(|t| t.key.clone());
        self.learned_wall = Some(at);
        self.added_since_learn = false;
    }

    /// Whether the view holds every access point another allocator can have made: learned in
    /// `term`, after the term settled.
    fn trusted(&self, term: Option<&Term>) -> bool {
        match (term, &self.term, self.learned_wall) {
            (Some(t), Some(key), Some(at)) => *key == t.key && at >= t.settled_at,
            _ => false,
        }
    }

    /// Whether a learn now would make an untrusted view trusted (or is needed anyway).
    fn needs_learn(&self, term: Option<&Term>, refresh: Duration) -> bool {
        if self.learned_at.is_none_or(|t| t.elapsed() >= refresh) {
            return true;
        }
        match term {
            // No term known: the controller verifies every grant and learns from that.
            None => false,
            Some(t) => {
                self.term.as_deref() != Some(t.key.as_str())
                    || (!self.trusted(term) && SystemTime::now() >= t.settled_at)
            }
        }
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

    /// Reserves a free GID in `range` (inclusive) on file system `fs`, in flight until
    /// [`GidAllocator::settled`]. `term` is the leadership term the controller is in, if known.
    /// `learn` lists the GIDs the file system's access points hold; it is called when the view
    /// is missing, stale or from another term, and once more when the range looks full. A retry
    /// of `volume` after a create of unknown outcome gets the GID it had.
    pub async fn allocate<F, Fut>(
        &self,
        fs: &str,
        range: (u32, u32),
        volume: &str,
        term: Option<&Term>,
        learn: F,
    ) -> Result<Grant, Error>
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
            let verify = !gids.trusted(term);
            return Ok(Grant { gid, verify });
        }
        let learned = gids.needs_learn(term, self.refresh);
        if learned {
            let at = SystemTime::now();
            let listed = learn().await?;
            gids.relearned(listed, term, at);
        }
        let verify = !gids.trusted(term);
        let mut free = gids.free(range, verify);
        if free.is_none()
            && !learned
            && (gids.added_since_learn
                || gids
                    .learned_at
                    .is_none_or(|t| t.elapsed() >= EXHAUSTED_RELEARN_EVERY))
        {
            let at = SystemTime::now();
            let listed = learn().await?;
            gids.relearned(listed, term, at);
            free = gids.free(range, verify);
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
        Ok(Grant { gid, verify })
    }

    /// A listing of the file system's access points that started at `at`, in `term`, made for
    /// another reason (a verification): its GIDs are added to the view. Nothing is removed: a
    /// create of this controller that settled while the listing ran may be missing from it.
    pub async fn observed(
        &self,
        fs: &str,
        listed: BTreeSet<u32>,
        term: Option<&Term>,
        at: SystemTime,
    ) {
        let entry = self.entry(fs);
        let mut gids = entry.lock().await;
        let before = gids.used.len();
        gids.used.extend(listed);
        gids.added_since_learn |= gids.used.len() > before;
        if let Some(t) = term
            && gids.learned_wall.is_none_or(|w| w <= at)
        {
            gids.term = Some(t.key.clone());
            gids.learned_wall = Some(at);
        }
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
        let entry = self.entry(fs);
        let mut gids = entry.lock().await;
        gids.added_since_learn |= gids.used.insert(gid);
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
            .allocate("fs", RANGE, "v1", None, || listing.learn())
            .await
            .expect("gid")
            .gid;
        // The first create is still in flight (its access point not listed yet).
        let second = alloc
            .allocate("fs", RANGE, "v2", None, || listing.learn())
            .await
            .expect("gid")
            .gid;
        assert_ne!(first, second, "the relearn dropped an in-flight GID");
        listing.create(first);
        alloc.settled("fs", first).await;
        listing.create(second);
        alloc.settled("fs", second).await;
        let third = alloc
            .allocate("fs", RANGE, "v3", None, || listing.learn())
            .await
            .expect("gid")
            .gid;
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
                    .allocate("fs", RANGE, &format!("v{i}"), None, || listing.learn())
                    .await
                    .expect("gid")
                    .gid;
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
            .allocate("fs", one, "v", None, || listing.learn())
            .await
            .expect("gid")
            .gid;
        assert_eq!(gid, 7, "a one-GID range works");
        // Throttled: nothing was made.
        alloc.settled("fs", gid).await;
        alloc.release("fs", gid).await;
        assert_eq!(
            alloc
                .allocate("fs", one, "v", None, || listing.learn())
                .await
                .expect("again")
                .gid,
            7
        );
    }

    #[tokio::test]
    async fn a_full_looking_range_is_relearned_once_before_it_is_exhausted() {
        let alloc = GidAllocator::new(Duration::from_secs(900));
        let listing = Listing::default();
        let one = (7, 7);
        let gid = alloc
            .allocate("fs", one, "v", None, || listing.learn())
            .await
            .expect("gid")
            .gid;
        // A timeout: unknown whether the access point exists, so the GID stays used...
        alloc.settled("fs", gid).await;
        // ...until a relearn shows it does not. The first attempt relearns at most every 10 s,
        // so at once after the learn it is exhausted:
        let err = alloc
            .allocate("fs", one, "v", None, || listing.learn())
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
                .allocate("fs", one, "v", None, || listing.learn())
                .await
                .expect("freed")
                .gid,
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
                .allocate("fs", one, "v", None, || listing.learn())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_retry_after_an_unknown_outcome_gets_the_same_gid_through_relearns() {
        let alloc = GidAllocator::new(Duration::ZERO);
        let listing = Listing::default();
        let gid = alloc
            .allocate("fs", RANGE, "pvc-a", None, || listing.learn())
            .await
            .expect("gid")
            .gid;
        alloc.settled("fs", gid).await;
        alloc.remember("fs", "pvc-a", gid).await;
        // Another volume, with a relearn that does not list it: the GID is not handed out.
        let other = alloc
            .allocate("fs", RANGE, "pvc-b", None, || listing.learn())
            .await
            .expect("gid")
            .gid;
        assert_ne!(other, gid);
        let again = alloc
            .allocate("fs", RANGE, "pvc-a", None, || listing.learn())
            .await
            .expect("gid")
            .gid;
        assert_eq!(again, gid, "the retry sends the same request");
        alloc.settled("fs", again).await;
        alloc.forget("fs", "pvc-a").await;
        listing.create(gid);
        let third = alloc
            .allocate("fs", RANGE, "pvc-c", None, || listing.learn())
            .await
            .expect("gid")
            .gid;
        assert!(third != gid && third != other);
    }

    #[tokio::test]
    async fn a_release_while_another_call_holds_the_gid_keeps_it() {
        let alloc = GidAllocator::new(Duration::from_secs(900));
        let listing = Listing::default();
        let gid = alloc
            .allocate("fs", RANGE, "v4", None, || listing.learn())
            .await
            .expect("gid")
            .gid;
        alloc.release("fs", gid).await;
        let next = alloc
            .allocate("fs", RANGE, "v5", None, || listing.learn())
            .await
            .expect("gid")
            .gid;
        assert_ne!(gid, next, "still in flight: not free");
    }

    fn term(key: &str, settled_at: SystemTime) -> Term {
        Term {
            key: key.to_owned(),
            settled_at,
        }
    }

    #[tokio::test]
    async fn only_a_view_learned_in_a_settled_term_is_trusted() {
        let alloc = GidAllocator::new(Duration::from_secs(900));
        let listing = Listing::default();
        let past = SystemTime::now() - Duration::from_secs(60);
        let a = term("a", past);
        // Learned in a settled term: trusted, the lowest free GID, one listing.
        let g = alloc
            .allocate("fs", RANGE, "v1", Some(&a), || listing.learn())
            .await
            .expect("gid");
        assert_eq!(
            g,
            Grant {
                gid: 100,
                verify: false
            }
        );
        listing.create(100);
        alloc.settled("fs", 100).await;
        let g = alloc
            .allocate("fs", RANGE, "v2", Some(&a), || listing.learn())
            .await
            .expect("gid");
        assert_eq!(
            g,
            Grant {
                gid: 101,
                verify: false
            }
        );
        listing.create(101);
        alloc.settled("fs", 101).await;
        assert_eq!(
            listing.calls.load(Ordering::SeqCst),
            1,
            "no listing per create"
        );

        // The other replica made 102 in its term; this one's next term is not settled yet:
        // relearned (102 is seen) and verified.
        listing.create(102);
        let soon = SystemTime::now() + Duration::from_secs(3600);
        let b = term("b", soon);
        let g = alloc
            .allocate("fs", RANGE, "v3", Some(&b), || listing.learn())
            .await
            .expect("gid");
        assert!(g.verify && ![100, 101, 102].contains(&g.gid), "{g:?}");
        assert_eq!(listing.calls.load(Ordering::SeqCst), 2);
        alloc.settled("fs", g.gid).await;
        alloc.release("fs", g.gid).await;
        // Still unsettled: no further listing, still verified.
        let g = alloc
            .allocate("fs", RANGE, "v4", Some(&b), || listing.learn())
            .await
            .expect("gid");
        assert!(g.verify);
        assert_eq!(listing.calls.load(Ordering::SeqCst), 2);
        alloc.settled("fs", g.gid).await;
        alloc.release("fs", g.gid).await;
        // Once the term has settled, one more listing makes the view trusted.
        let b = term("b", SystemTime::now());
        let g = alloc
            .allocate("fs", RANGE, "v5", Some(&b), || listing.learn())
            .await
            .expect("gid");
        assert_eq!(
            g,
            Grant {
                gid: 103,
                verify: false
            }
        );
        assert_eq!(listing.calls.load(Ordering::SeqCst), 3);
        // No term known: every grant is verified, and needs no listing of its own.
        let g = alloc
            .allocate("fs", RANGE, "v6", None, || listing.learn())
            .await
            .expect("gid");
        assert!(g.verify);
        assert_eq!(listing.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_verification_listing_teaches_the_view_without_dropping_what_it_missed() {
        let alloc = GidAllocator::new(Duration::from_secs(900));
        let listing = Listing::default();
        let first = alloc
            .allocate("fs", (1, 3), "v1", None, || listing.learn())
            .await
            .expect("gid");
        alloc.settled("fs", first.gid).await;
        // A listing that began before `first` was made, showing another client's GID.
        let other = (1..=3).find(|g| *g != first.gid).expect("another");
        alloc
            .observed("fs", BTreeSet::from([other]), None, SystemTime::now())
            .await;
        let third = alloc
            .allocate("fs", (1, 3), "v2", None, || listing.learn())
            .await
            .expect("gid");
        assert!(third.gid != first.gid && third.gid != other, "{third:?}");
    }
}
