//! Whether the controller can reach the S3 Files API, watched in the background.
//!
//! Liveness must reflect the process, not AWS: a Probe that called the API (through the same
//! rate limiter as provisioning, within livenessprobe's one-second timeout) restarted the
//! controller when it was busiest, or forever after an IAM mistake. So `Probe` never calls the
//! API. This monitor pings it once a minute instead (one `ListFileSystems` with one result) and
//! reports what it saw as a detail of `Probe`'s answer (a response header, shown by
//! `s3files-csi health`), the `s3files_csi_cloud_api_reachable` metric, a log line and a
//! Kubernetes Event on the controller's Pod each time reachability changes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::S3Files;
use crate::identity::StatusDetail;
use crate::metrics::Metrics;

/// What the last ping found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// No ping has finished yet.
    Unknown,
    Reachable,
    /// The API failed; the reason says what to check.
    Unreachable(String),
}

/// Something told when reachability changes (a Kubernetes Event recorder, in the controller).
#[tonic::async_trait]
pub trait ReachabilityEvents: Send + Sync + 'static {
    async fn changed(&self, now: &Reachability);
}

/// The monitor: state written by its task, read by `Probe`.
pub struct CloudMonitor {
    state: Mutex<Reachability>,
}

impl CloudMonitor {
    /// Starts pinging `cloud` every `period` (the first ping at once).
    pub fn start(
        cloud: Arc<dyn S3Files>,
        period: Duration,
        metrics: Option<Arc<Metrics>>,
        events: Option<Arc<dyn ReachabilityEvents>>,
    ) -> Arc<CloudMonitor> {
        let monitor = Arc::new(CloudMonitor {
            state: Mutex::new(Reachability::Unknown),
        });
        let watching = monitor.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period.max(Duration::from_secs(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = match cloud.ping().await {
                    Ok(()) => Reachability::Reachable,
                    Err(e) => Reachability::Unreachable(format!(
                        "{e}; check the region, the controller's IAM role and AWS_ENDPOINT_URL_S3FILES"
                    )),
                };
                watching
                    .record(now, metrics.as_deref(), events.as_deref())
                    .await;
            }
        });
        monitor
    }

    /// The last ping's outcome.
    pub fn reachability(&self) -> Reachability {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn record(
        &self,
        now: Reachability,
        metrics: Option<&Metrics>,
        events: Option<&dyn ReachabilityEvents>,
    ) {
        let before = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *state, now.clone())
        };
        if let Some(m) = metrics {
            m.set_cloud_reachable(now == Reachability::Reachable);
        }
        let changed = match (&before, &now) {
            (Reachability::Unreachable(_), Reachability::Unreachable(_)) => false,
            (a, b) => a != b,
        };
        if !changed {
            return;
        }
        match &now {
            Reachability::Reachable => info!("the S3 Files API is reachable"),
            Reachability::Unreachable(reason) => {
                warn!(%reason, "the S3 Files API is unreachable; provisioning fails until it is back")
            }
            Reachability::Unknown => {}
        }
        // The first success is not news; a recovery or a failure is.
        let news = !matches!(
            (&before, &now),
            (Reachability::Unknown, Reachability::Reachable)
        );
        if news && let Some(events) = events {
            events.changed(&now).await;
        }
    }
}

impl StatusDetail for CloudMonitor {
    fn detail(&self) -> Option<String> {
        match self.reachability() {
            Reachability::Unknown => Some("s3files-api: not checked yet".into()),
            Reachability::Reachable => None,
            Reachability::Unreachable(reason) => Some(format!("s3files-api: {reason}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<Reachability>>);

    #[tonic::async_trait]
    impl ReachabilityEvents for Seen {
        async fn changed(&self, now: &Reachability) {
            self.0.lock().expect("lock").push(now.clone());
        }
    }

    #[tokio::test]
    async fn changes_are_told_once_and_the_metric_follows_every_ping() {
        let monitor = CloudMonitor {
            state: Mutex::new(Reachability::Unknown),
        };
        let seen = Seen::default();
        let metrics = Metrics::new();
        let down = |why: &str| Reachability::Unreachable(why.into());
        for now in [
            Reachability::Reachable,
            down("throttled"),
            down("access denied"),
            Reachability::Reachable,
            Reachability::Reachable,
        ] {
            monitor.record(now, Some(&metrics), Some(&seen)).await;
        }
        assert_eq!(
            *seen.0.lock().expect("lock"),
            vec![down("throttled"), Reachability::Reachable]
        );
        assert_eq!(monitor.detail(), None);
        assert!(
            metrics
                .render()
                .contains("s3files_csi_cloud_api_reachable 1")
        );
        monitor
            .record(down("access denied"), Some(&metrics), None)
            .await;
        assert_eq!(
            monitor.detail().as_deref(),
            Some("s3files-api: access denied")
        );
        assert!(
            metrics
                .render()
                .contains("s3files_csi_cloud_api_reachable 0")
        );
    }
}
