//! Restores: a new volume's directory receives, for every key under a source directory, the
//! newest version at or before a moment (keys whose newest entry then was a delete marker stay
//! absent), by server-side copies of those versions.
//!
//! A restore outlives the CreateVolume call that starts it. Its progress is a record in the
//! bucket (`<fs prefix>.s3files-csi/restores/<volume token>.json`): the moment, and the last
//! source key of the last page of versions whose copies all finished. A retry of the call joins
//! the running copy; a restarted controller resumes after that key, and skips the keys of the
//! interrupted page that already reached the destination, so no object is copied twice and
//! none is missed. The record is kept once the restore is done: later retries of the call answer
//! at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::data::versions::{OwnerMap, VersionEntry, Versions};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Copies in flight at once in one restore.
pub const COPIES_IN_FLIGHT: usize = 16;

/// What to restore where.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    /// The bucket (a name) holding source and destination.
    pub bucket: String,
    /// Where the restore's progress is kept.
    pub record_key: String,
    /// What is restored (a snapshot id or a volume id), for the record and messages.
    pub source: String,
    /// Key prefix of the source directory, ending in `/` (or empty: the whole bucket).
    pub source_prefix: String,
    /// Key prefix of the new volume's directory, ending in `/`.
    pub dest_prefix: String,
    /// The moment restored (milliseconds since the epoch, S3's clock); `None` for a clone:
    /// the moment its record is first written.
    pub time_ms: Option<i64>,
    pub owners: Option<OwnerMap>,
    /// How many objects the snapshot held when it was measured: a restore that finds fewer
    /// lost some to expired versions.
    pub expected_objects: Option<u64>,
    /// Source keys under these prefixes are not the volume's (the driver's records,
    /// lost+found, the destination itself).
    pub skip_prefixes: Vec<String>,
}

/// The record of a restore, as kept in the bucket.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreRecord {
    pub source: String,
    pub source_prefix: String,
    pub dest_prefix: String,
    pub time_ms: Option<i64>,
    /// Every source key up to this one is restored.
    pub after: Option<String>,
    pub objects: u64,
    pub bytes: u64,
    pub done: bool,
}

/// Chooses, key by key, the version to restore from listing pages of versions (each key's
/// entries newest first; a key's entries may continue on the next page).
#[derive(Debug)]
pub struct Chooser {
    time_ms: i64,
    /// The entries of the last key of the page before, which may continue.
    held: Vec<VersionEntry>,
}

impl Chooser {
    pub fn new(time_ms: i64) -> Self {
        Chooser {
            time_ms,
            held: Vec::new(),
        }
    }

    /// Takes one page; returns the versions to restore of the keys it completed and the last
    /// of those keys. On the last page (`last`) every key is complete.
    pub fn page(
        &mut self,
        entries: Vec<VersionEntry>,
        last: bool,
    ) -> (Vec<VersionEntry>, Option<String>) {
        let mut all = std::mem::take(&mut self.held);
        all.extend(entries);
        if !last && let Some(key) = all.last().map(|e| e.key.clone()) {
            let split = all.iter().position(|e| e.key == key).unwrap_or(all.len());
            self.held = all.split_off(split);
        }
        let mut chosen = Vec::new();
        let mut last_key = None;
        let mut i = 0;
        while i < all.len() {
            let key = all[i].key.clone();
            let end = all[i..]
                .iter()
                .position(|e| e.key != key)
                .map_or(all.len(), |n| i + n);
            if let Some(pick) = all[i..end].iter().find(|e| e.modified_ms <= self.time_ms)
                && !pick.delete_marker
            {
                chosen.push(pick.clone());
            }
            last_key = Some(key);
            i = end;
        }
        (chosen, last_key)
    }
}

/// Where a running restore stands.
#[derive(Debug, Default)]
pub struct Progress {
    pub objects: AtomicU64,
    pub bytes: AtomicU64,
}

/// Copies what `plan` says, resuming from its record; returns the finished record.
pub async fn run(
    versions: &dyn Versions,
    plan: &RestorePlan,
    progress: &Progress,
    metrics: Option<&Metrics>,
) -> Result<RestoreRecord> {
    let bucket = plan.bucket.as_str();
    let mut record = match versions.get(bucket, &plan.record_key).await? {
        Some(bytes) => serde_json::from_slice::<RestoreRecord>(&bytes).map_err(|e| {
            Error::Internal(format!(
                "restore record {bucket}/{} is not readable: {e}; delete it to restart the restore",
                plan.record_key
            ))
        })?,
        None => {
            let fresh = RestoreRecord {
                source: plan.source.clone(),
                source_prefix: plan.source_prefix.clone(),
                dest_prefix: plan.dest_prefix.clone(),
                time_ms: plan.time_ms,
                ..RestoreRecord::default()
            };
            save(versions, plan, &fresh).await?;
            fresh
        }
    };
    if record.source_prefix != plan.source_prefix || record.dest_prefix != plan.dest_prefix {
        return Err(Error::AlreadyExists(format!(
            "a restore of {} from {} into {} is recorded at {bucket}/{}; this volume asks for {} into {}",
            record.source,
            record.source_prefix,
            record.dest_prefix,
            plan.record_key,
            plan.source_prefix,
            plan.dest_prefix
        )));
    }
    let time_ms = match record.time_ms {
        Some(t) => t,
        None => {
            // A clone's moment: when its record reached S3, by S3's clock.
            let t = versions
                .modified_ms(bucket, &plan.record_key)
                .await?
                .ok_or_else(|| {
                    Error::Unavailable(format!(
                        "restore record {bucket}/{} is not listed yet; retry",
                        plan.record_key
                    ))
                })?;
            record.time_ms = Some(t);
            save(versions, plan, &record).await?;
            t
        }
    };
    progress.objects.store(record.objects, Ordering::Relaxed);
    progress.bytes.store(record.bytes, Ordering::Relaxed);
    if record.done {
        return Ok(record);
    }
    info!(source = %plan.source, to = %plan.dest_prefix, time_ms, after = ?record.after, "restoring");
    // Copies of the page a crash interrupted may have landed: those keys are skipped.
    let mut landed = landed_after(versions, plan, record.after.as_deref()).await?;
    let mut chooser = Chooser::new(time_ms);
    let mut from = record.after.clone().map(|k| (k, None));
    loop {
        let page = versions
            .versions(bucket, &plan.source_prefix, from.as_ref())
            .await?;
        let last = page.next.is_none();
        let (chosen, last_key) = chooser.page(page.entries, last);
        let mut jobs = Vec::new();
        for v in chosen {
            if plan.skip_prefixes.iter().any(|p| v.key.starts_with(p)) {
                continue;
            }
            if landed.remove(&dest_key(plan, &v.key)) {
                progress.objects.fetch_add(1, Ordering::Relaxed);
                progress.bytes.fetch_add(v.size, Ordering::Relaxed);
                continue;
            }
            jobs.push(v);
        }
        futures_util::stream::iter(jobs)
            .map(|v| async move {
                let to = dest_key(plan, &v.key);
                versions
                    .copy(bucket, &v, &to, plan.owners)
                    .await
                    .map_err(|e| missing_version(e, plan, &v))?;
                progress.objects.fetch_add(1, Ordering::Relaxed);
                progress.bytes.fetch_add(v.size, Ordering::Relaxed);
                if let Some(m) = metrics {
                    m.restored(v.size);
                }
                Ok::<_, Error>(())
            })
            .buffer_unordered(COPIES_IN_FLIGHT)
            .try_collect::<()>()
            .await?;
        if let Some(k) = last_key {
            record.after = Some(k);
        }
        record.objects = progress.objects.load(Ordering::Relaxed);
        record.bytes = progress.bytes.load(Ordering::Relaxed);
        if last {
            if let Some(expected) = plan.expected_objects
                && record.objects < expected
            {
                return Err(Error::FailedPrecondition(format!(
                    "{} cannot be restored completely: it held {expected} objects and {} of them \
                     have no version left at its moment in bucket {bucket} (a lifecycle rule that \
                     expires noncurrent versions may have deleted them); {} objects were copied \
                     into {}",
                    plan.source,
                    expected - record.objects,
                    record.objects,
                    plan.dest_prefix
                )));
            }
            record.done = true;
            save(versions, plan, &record).await?;
            info!(source = %plan.source, to = %plan.dest_prefix, objects = record.objects, bytes = record.bytes, "restore done");
            return Ok(record);
        }
        save(versions, plan, &record).await?;
        info!(source = %plan.source, to = %plan.dest_prefix, objects = record.objects, bytes = record.bytes, after = ?record.after, "restore progress");
        from = page.next;
    }
}

async fn save(versions: &dyn Versions, plan: &RestorePlan, record: &RestoreRecord) -> Result<()> {
    let body = serde_json::to_vec(record)
        .map_err(|e| Error::Internal(format!("encoding a restore record: {e}")))?;
    versions.put(&plan.bucket, &plan.record_key, body).await
}

fn dest_key(plan: &RestorePlan, source_key: &str) -> String {
    let rel = source_key
        .strip_prefix(&plan.source_prefix)
        .unwrap_or(source_key);
    format!("{}{rel}", plan.dest_prefix)
}

/// Destination keys past the checkpoint: at most two listing pages, as a page of versions
/// holds at most 1,000 keys.
async fn landed_after(
    versions: &dyn Versions,
    plan: &RestorePlan,
    after: Option<&str>,
) -> Result<HashSet<String>> {
    let start = after.map(|k| dest_key(plan, k));
    Ok(versions
        .keys(&plan.bucket, &plan.dest_prefix, start.as_deref(), 2000)
        .await?
        .into_iter()
        .collect())
}

/// A version that a restore needs and S3 no longer has.
fn missing_version(e: Error, plan: &RestorePlan, v: &VersionEntry) -> Error {
    match e {
        Error::NotFound(why) => Error::FailedPrecondition(format!(
            "{} cannot be restored: version {} of {} is gone from bucket {} ({why}); a lifecycle \
             rule that expires noncurrent versions may have deleted it",
            plan.source, v.version_id, v.key, plan.bucket
        )),
        other => other,
    }
}

/// Bytes and objects a restore of `prefix` at `time_ms` would copy (listing only).
pub async fn measure(
    versions: &dyn Versions,
    bucket: &str,
    prefix: &str,
    time_ms: i64,
    skip_prefixes: &[String],
) -> Result<(u64, u64)> {
    let mut chooser = Chooser::new(time_ms);
    let mut from = None;
    let (mut objects, mut bytes) = (0, 0);
    loop {
        let page = versions.versions(bucket, prefix, from.as_ref()).await?;
        let last = page.next.is_none();
        let (chosen, _) = chooser.page(page.entries, last);
        for v in chosen
            .iter()
            .filter(|v| !skip_prefixes.iter().any(|p| v.key.starts_with(p)))
        {
            objects += 1;
            bytes += v.size;
        }
        if last {
            return Ok((objects, bytes));
        }
        from = page.next;
    }
}

type Outcome = Result<RestoreRecord>;

/// One restore running in this controller.
struct Job {
    task: tokio::task::AbortHandle,
    progress: Arc<Progress>,
    done: tokio::sync::watch::Receiver<bool>,
    outcome: Arc<Mutex<Option<Outcome>>>,
}

/// The restores this controller runs, by destination record.
#[derive(Default)]
pub struct Restores {
    jobs: Mutex<HashMap<String, Job>>,
}

impl Restores {
    /// Stops the restore recorded at `record_key` if it runs here (its volume is deleted).
    pub fn abort(&self, record_key: &str) {
        if let Some(job) = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(record_key)
        {
            job.task.abort();
        }
    }

    /// Starts the restore of `plan` unless it runs already, and waits up to `wait` for it:
    /// its record when done, its error when it failed (the next call starts it again), or
    /// `Busy`-like progress while it runs.
    pub async fn wait(
        &self,
        versions: Arc<dyn Versions>,
        plan: RestorePlan,
        metrics: Option<Arc<Metrics>>,
        wait: Duration,
    ) -> Result<RestoreRecord> {
        let (mut done, progress, outcome) = {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let job = jobs
                .entry(plan.record_key.clone())
                .or_insert_with(|| spawn(versions, plan.clone(), metrics));
            (job.done.clone(), job.progress.clone(), job.outcome.clone())
        };
        let finished = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        if finished.is_ok() {
            let taken = outcome.lock().unwrap_or_else(|p| p.into_inner()).take();
            self.jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&plan.record_key);
            if let Some(outcome) = taken {
                return outcome;
            }
        }
        Err(Error::InProgress(format!(
            "restoring {} into {}: {} objects ({} bytes) copied so far; retry",
            plan.source,
            plan.dest_prefix,
            progress.objects.load(Ordering::Relaxed),
            progress.bytes.load(Ordering::Relaxed)
        )))
    }
}

/// Counts a running restore in the gauge until dropped (also when the task is aborted).
struct Running(Option<Arc<Metrics>>);

impl Running {
    fn start(metrics: Option<Arc<Metrics>>) -> Self {
        if let Some(m) = &metrics {
            m.restore_running(1);
        }
        Running(metrics)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.restore_running(-1);
        }
    }
}

fn spawn(versions: Arc<dyn Versions>, plan: RestorePlan, metrics: Option<Arc<Metrics>>) -> Job {
    let progress = Arc::new(Progress::default());
    let outcome = Arc::new(Mutex::new(None));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let (p, o) = (progress.clone(), outcome.clone());
    let task = tokio::spawn(async move {
        let _running = Running::start(metrics.clone());
        let result = run(&*versions, &plan, &p, metrics.as_deref()).await;
        if let Err(e) = &result {
            warn!(source = %plan.source, to = %plan.dest_prefix, error = %e, "restore stopped");
        }
        *o.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        let _ = tx.send(true);
    });
    Job {
        task: task.abort_handle(),
        progress,
        done: rx,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::versions::{ExpiringRule, VersionPage};
    use std::collections::BTreeMap;

    /// A versioned bucket in memory: pages of `page` entries, copies that fail for one key
    /// or after a number of them (a crash), and every copy counted by destination.
    #[derive(Default)]
    struct Bucket {
        objects: Mutex<BTreeMap<String, Vec<VersionEntry>>>,
        page: usize,
        missing: Option<String>,
        crash_after: Mutex<Option<usize>>,
        copied: Mutex<HashMap<String, usize>>,
    }

    impl Bucket {
        fn with(keys: usize, page: usize) -> Bucket {
            let b = Bucket {
                page,
                ..Bucket::default()
            };
            {
                let mut o = b.objects.lock().expect("objects");
                for i in 0..keys {
                    let key = format!("src/f{i:04}");
                    // Two versions each: the one of the moment (100) and a later one (300).
                    o.insert(key.clone(), vec![v(&key, 300, false), v(&key, 100, false)]);
                }
            }
            b
        }
    }

    #[tonic::async_trait]
    impl Versions for Bucket {
        async fn put(&self, _: &str, key: &str, body: Vec<u8>) -> Result<()> {
            let mut o = self.objects.lock().expect("objects");
            let mut e = v(key, 500, false);
            e.version_id = String::from_utf8_lossy(&body).into_owned();
            o.entry(key.to_owned()).or_default().insert(0, e);
            Ok(())
        }
        async fn get(&self, _: &str, key: &str) -> Result<Option<Vec<u8>>> {
            let o = self.objects.lock().expect("objects");
            Ok(o.get(key)
                .and_then(|l| l.first())
                .map(|e| e.version_id.clone().into_bytes()))
        }
        async fn modified_ms(&self, _: &str, key: &str) -> Result<Option<i64>> {
            let o = self.objects.lock().expect("objects");
            Ok(o.get(key).and_then(|l| l.first()).map(|e| e.modified_ms))
        }
        async fn delete(&self, _: &str, _: &str) -> Result<()> {
            Ok(())
        }
        async fn keys(
            &self,
            _: &str,
            prefix: &str,
            after: Option<&str>,
            max: usize,
        ) -> Result<Vec<String>> {
            let o = self.objects.lock().expect("objects");
            Ok(o.keys()
                .filter(|k| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
                .take(max)
                .cloned()
                .collect())
        }
        async fn versions(
            &self,
            _: &str,
            prefix: &str,
            from: Option<&(String, Option<String>)>,
        ) -> Result<VersionPage> {
            let o = self.objects.lock().expect("objects");
            let all: Vec<VersionEntry> = o
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .flat_map(|(_, l)| l.iter().cloned())
                .collect();
            let start = match from {
                None => 0,
                Some((k, None)) => all.iter().position(|e| &e.key > k).unwrap_or(all.len()),
                Some((k, Some(id))) => all
                    .iter()
                    .position(|e| &e.key == k && &e.version_id == id)
                    .map_or(all.len(), |i| i + 1),
            };
            let entries: Vec<VersionEntry> = all[start..].iter().take(self.page).cloned().collect();
            let next = if start + entries.len() < all.len() {
                entries
                    .last()
                    .map(|e| (e.key.clone(), Some(e.version_id.clone())))
            } else {
                None
            };
            Ok(VersionPage { entries, next })
        }
        async fn copy(
            &self,
            _: &str,
            from: &VersionEntry,
            to: &str,
            _: Option<OwnerMap>,
        ) -> Result<()> {
            if self.missing.as_deref() == Some(from.key.as_str()) {
                return Err(Error::NotFound(format!("version {}", from.version_id)));
            }
            if let Some(n) = self.crash_after.lock().expect("crash").as_mut() {
                if *n == 0 {
                    return Err(Error::Unavailable("the controller died".into()));
                }
                *n -= 1;
            }
            *self
                .copied
                .lock()
                .expect("copied")
                .entry(to.to_owned())
                .or_default() += 1;
            let mut e = from.clone();
            e.key = to.to_owned();
            e.modified_ms = 400;
            let mut o = self.objects.lock().expect("objects");
            o.entry(to.to_owned()).or_default().insert(0, e);
            Ok(())
        }
        async fn expiring_rules(&self, _: &str) -> Result<Vec<ExpiringRule>> {
            Ok(Vec::new())
        }
    }

    fn plan(time_ms: i64) -> RestorePlan {
        RestorePlan {
            bucket: "b".into(),
            record_key: "rec/r.json".into(),
            source: "snapshot s".into(),
            source_prefix: "src/".into(),
            dest_prefix: "dst/".into(),
            time_ms: Some(time_ms),
            owners: None,
            expected_objects: None,
            skip_prefixes: vec!["dst/".into(), "rec/".into()],
        }
    }

    #[tokio::test]
    async fn a_restore_stopped_midway_resumes_and_copies_every_object_once() {
        // Pages of 7 entries split keys (two versions each) across pages.
        let bucket = Bucket::with(100, 7);
        *bucket.crash_after.lock().expect("crash") = Some(40);
        let plan = plan(150);
        let first = run(&bucket, &plan, &Progress::default(), None).await;
        assert!(matches!(first, Err(Error::Unavailable(_))), "{first:?}");
        *bucket.crash_after.lock().expect("crash") = None;
        let record = run(&bucket, &plan, &Progress::default(), None)
            .await
            .expect("resumed");
        assert!(record.done);
        assert_eq!(record.objects, 100);
        let copied = bucket.copied.lock().expect("copied");
        assert_eq!(copied.len(), 100);
        assert!(copied.values().all(|n| *n == 1), "{copied:?}");
        // Each copy is the version of the moment, not the later one.
        let o = bucket.objects.lock().expect("objects");
        assert!(
            o.iter()
                .filter(|(k, _)| k.starts_with("dst/"))
                .all(|(_, l)| l.len() == 1 && l[0].version_id.ends_with("@100"))
        );
    }

    #[tokio::test]
    async fn a_version_gone_before_its_copy_fails_the_restore_naming_the_key() {
        let mut bucket = Bucket::with(10, 1000);
        bucket.missing = Some("src/f0003".into());
        let err = run(&bucket, &plan(150), &Progress::default(), None)
            .await
            .expect_err("missing version");
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        assert!(err.to_string().contains("src/f0003"), "{err}");
    }

    #[tokio::test]
    async fn a_restore_finding_fewer_objects_than_the_snapshot_held_fails() {
        let bucket = Bucket::with(10, 1000);
        let mut p = plan(150);
        p.expected_objects = Some(12);
        let err = run(&bucket, &p, &Progress::default(), None)
            .await
            .expect_err("two gone");
        assert!(err.to_string().contains("2 of them"), "{err}");
    }

    fn v(key: &str, ms: i64, marker: bool) -> VersionEntry {
        VersionEntry {
            key: key.into(),
            version_id: format!("{key}@{ms}"),
            modified_ms: ms,
            size: 10,
            delete_marker: marker,
        }
    }

    #[test]
    fn the_newest_version_at_the_moment_is_chosen_and_deleted_keys_are_not() {
        let mut c = Chooser::new(100);
        let (chosen, last) = c.page(
            vec![
                v("a", 200, false),
                v("a", 100, false),
                v("a", 50, false),
                v("b", 150, false),
                v("c", 90, true),
                v("c", 80, false),
                v("d", 120, true),
                v("d", 60, false),
            ],
            true,
        );
        let ids: Vec<&str> = chosen.iter().map(|e| e.version_id.as_str()).collect();
        assert_eq!(ids, ["a@100", "d@60"]);
        assert_eq!(last.as_deref(), Some("d"));
    }

    #[test]
    fn a_key_continued_on_the_next_page_is_chosen_once_with_all_its_versions() {
        let mut c = Chooser::new(100);
        let (chosen, last) = c.page(vec![v("a", 50, false), v("b", 300, false)], false);
        assert_eq!(chosen.len(), 1);
        assert_eq!(last.as_deref(), Some("a"), "b may continue");
        let (chosen, last) = c.page(vec![v("b", 90, false), v("c", 10, false)], true);
        let ids: Vec<&str> = chosen.iter().map(|e| e.version_id.as_str()).collect();
        assert_eq!(ids, ["b@90", "c@10"]);
        assert_eq!(last.as_deref(), Some("c"));
    }

    #[test]
    fn destination_keys_keep_the_path_below_the_source() {
        let plan = RestorePlan {
            bucket: "b".into(),
            record_key: "r".into(),
            source: "s".into(),
            source_prefix: "k8s/a/".into(),
            dest_prefix: "k8s/b/".into(),
            time_ms: None,
            owners: None,
            expected_objects: None,
            skip_prefixes: vec![],
        };
        assert_eq!(dest_key(&plan, "k8s/a/x/y.txt"), "k8s/b/x/y.txt");
        assert_eq!(dest_key(&plan, "k8s/a/"), "k8s/b/");
    }
}
