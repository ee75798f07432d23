//! Leadership terms of the controller replicas, read from csi-provisioner's Lease.
//!
//! Only the replica whose csi-provisioner holds the leader Lease is sent CreateVolume, so within
//! one term a single controller allocates GIDs. A GID view learned in the current term, after
//! every create of the previous term has landed, holds every access point the other replica
//! made; such a view needs no verification (see `super::gid`). A term is named by its holder and
//! acquire time; it is *settled* `settle` after it began (the earlier of the Lease's acquireTime
//! and the moment this process first saw the term), by when any create the previous leader still
//! had in flight has landed or failed.
//!
//! When the Lease cannot be read, has no holder, or no Lease is configured, the term is unknown
//! and every grant is verified.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use tracing::{info, warn};

/// A leadership term, as far as GID views are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// Names the term: holder and acquire time.
    pub key: String,
    /// From this moment no create of an earlier term can still land.
    pub settled_at: SystemTime,
}

/// Who holds the leader Lease and since when, if anyone.
pub type Holder = Option<(String, Option<SystemTime>)>;

/// Where the current term comes from.
#[tonic::async_trait]
pub trait TermSource: Send + Sync + 'static {
    /// The current holder and when it acquired the lease; `Ok(None)` when no one holds it.
    async fn holder(&self) -> Result<Holder, String>;
}

/// The name csi-provisioner gives its leader Lease for `driver` (csi-lib-utils sanitizes the
/// provisioner name: every character outside `[a-zA-Z0-9-]` becomes `-`, and a trailing `-` gets
/// an `X`).
pub fn provisioner_lease_name(driver: &str) -> String {
    let mut name: String = driver
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.ends_with('-') {
        name.push('X');
    }
    name
}

/// A Lease in the Kubernetes API.
pub struct LeaseTerms {
    api: kube::Api<Lease>,
    name: String,
}

impl LeaseTerms {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        LeaseTerms {
            api: kube::Api::namespaced(client, namespace),
            name: name.to_owned(),
        }
    }
}

#[tonic::async_trait]
impl TermSource for LeaseTerms {
    async fn holder(&self) -> Result<Holder, String> {
        let lease = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| format!("reading Lease {}: {e}", self.name))?;
        let Some(spec) = lease.and_then(|l| l.spec) else {
            return Ok(None);
        };
        Ok(spec
            .holder_identity
            .filter(|h| !h.is_empty())
            .map(|h| (h, spec.acquire_time.map(|t| SystemTime::from(t.0)))))
    }
}

/// Tells the controller which term it is in.
pub struct TermClock {
    source: Option<Box<dyn TermSource>>,
    settle: Duration,
    /// The last term seen and when this process first saw it; and whether the last read failed
    /// (to log changes once).
    seen: Mutex<(Option<(String, SystemTime)>, bool)>,
}

impl TermClock {
    /// `source: None`: no leader Lease, every grant is verified.
    pub fn new(source: Option<Box<dyn TermSource>>, settle: Duration) -> Self {
        TermClock {
            source,
            settle,
            seen: Mutex::new((None, false)),
        }
    }

    /// The current term, or `None` when it is unknown.
    pub async fn current(&self) -> Option<Term> {
        let source = self.source.as_ref()?;
        let read = source.holder().await;
        let now = SystemTime::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (holder, acquired) = match read {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => {
                if !seen.1 {
                    match &read {
                        Err(e) => {
                            warn!(error = %e, "leadership term unknown: every new access point's GID is verified")
                        }
                        _ => info!(
                            "the leader Lease has no holder: every new access point's GID is verified"
                        ),
                    }
                }
                seen.1 = true;
                return None;
            }
        };
        seen.1 = false;
        let key = format!(
            "{holder}@{}",
            acquired
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or_else(|| "?".to_owned(), |d| d.as_micros().to_string())
        );
        let first_seen = match &seen.0 {
            Some((k, at)) if *k == key => *at,
            _ => {
                info!(term = %key, "leadership term");
                seen.0 = Some((key.clone(), now));
                now
            }
        };
        // The term began at its acquire time by the holder's clock; without one, at the latest
        // when this process first saw it.
        let began = acquired.map_or(first_seen, |a| a.min(first_seen));
        Some(Term {
            key,
            settled_at: began + self.settle,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn lease_names_follow_csi_lib_utils() {
        assert_eq!(provisioner_lease_name("s3files.csi.dev"), "s3files-csi-dev");
        assert_eq!(provisioner_lease_name("example.com/x."), "example-com-x-X");
    }

    struct Fixed(Arc<Mutex<Result<Holder, String>>>);

    #[tonic::async_trait]
    impl TermSource for Fixed {
        async fn holder(&self) -> Result<Holder, String> {
            self.0.lock().expect("lock").clone()
        }
    }

    #[tokio::test]
    async fn terms_change_with_the_holder_and_settle_after_their_start() {
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let state = Arc::new(Mutex::new(Ok(Some(("pod-a".to_owned(), Some(hour_ago))))));
        let clock = TermClock::new(
            Some(Box::new(Fixed(state.clone()))),
            Duration::from_secs(120),
        );
        let a = clock.current().await.expect("term");
        assert_eq!(a.settled_at, hour_ago + Duration::from_secs(120));
        assert_eq!(clock.current().await.as_ref(), Some(&a), "the same term");
        // A new holder: a new term, settled two minutes after it began.
        let now = SystemTime::now();
        *state.lock().expect("lock") = Ok(Some(("pod-b".to_owned(), Some(now))));
        let b = clock.current().await.expect("term");
        assert_ne!(a.key, b.key);
        assert!(b.settled_at >= now + Duration::from_secs(120));
        // The same holder acquiring again is another term too.
        *state.lock().expect("lock") = Ok(Some((
            "pod-b".to_owned(),
            Some(now + Duration::from_secs(1)),
        )));
        assert_ne!(clock.current().await.expect("term").key, b.key);
        // An acquire time in the future of this clock (skew) counts from first sight.
        let later = SystemTime::now() + Duration::from_secs(600);
        *state.lock().expect("lock") = Ok(Some(("pod-c".to_owned(), Some(later))));
        let c = clock.current().await.expect("term");
        assert!(c.settled_at <= SystemTime::now() + Duration::from_secs(121));
        // No holder, or an unreadable Lease: unknown.
        *state.lock().expect("lock") = Ok(None);
        assert_eq!(clock.current().await, None);
        *state.lock().expect("lock") = Err("forbidden".into());
        assert_eq!(clock.current().await, None);
        assert_eq!(TermClock::new(None, Duration::ZERO).current().await, None);
    }
}
