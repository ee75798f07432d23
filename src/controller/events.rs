//! Kubernetes Events on the controller's own Pod, for what an operator should see in
//! `kubectl describe pod` / `kubectl get events`: the S3 Files API becoming unreachable or
//! reachable again.
//!
//! RBAC: `create` on `events` (the controller's ServiceAccount has it for csi-provisioner). The
//! Pod is named by `POD_NAME` and `POD_NAMESPACE` (the chart sets them from the downward API);
//! without them no Event is written.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use tracing::warn;

use crate::cloud::health::{Reachability, ReachabilityEvents};

/// Writes Events about the controller Pod `pod` in `namespace`.
pub struct PodEvents {
    client: kube::Client,
    pod: String,
    namespace: String,
}

impl PodEvents {
    /// From `POD_NAME` and `POD_NAMESPACE`; `None` when either is unset.
    pub fn from_env(client: kube::Client) -> Option<PodEvents> {
        let pod = std::env::var("POD_NAME").ok().filter(|v| !v.is_empty())?;
        let namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|v| !v.is_empty())?;
        Some(PodEvents {
            client,
            pod,
            namespace,
        })
    }

    /// The Event for a change to `now`, as it is posted.
    pub fn event(&self, now: &Reachability) -> Option<Event> {
        let (kind, reason, message) = match now {
            Reachability::Unknown => return None,
            Reachability::Reachable => (
                "Normal",
                "S3FilesApiReachable",
                "the S3 Files API answers again".to_owned(),
            ),
            Reachability::Unreachable(why) => (
                "Warning",
                "S3FilesApiUnreachable",
                format!("the S3 Files API does not answer: {why}"),
            ),
        };
        let stamp = Time(k8s_openapi::jiff::Timestamp::now());
        Some(Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", self.pod)),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(self.pod.clone()),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            type_: Some(kind.into()),
            reason: Some(reason.into()),
            // The API server keeps at most 1 KiB of a message.
            message: Some(message.chars().take(1000).collect()),
            count: Some(1),
            first_timestamp: Some(stamp.clone()),
            last_timestamp: Some(stamp),
            source: Some(EventSource {
                component: Some("s3files-csi-controller".into()),
                host: None,
            }),
            reporting_component: Some("s3files-csi-controller".into()),
            reporting_instance: Some(self.pod.clone()),
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl ReachabilityEvents for PodEvents {
    async fn changed(&self, now: &Reachability) {
        let Some(event) = self.event(now) else {
            return;
        };
        let api = Api::<Event>::namespaced(self.client.clone(), &self.namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            warn!(error = %e, "could not record a Kubernetes Event");
        }
    }
}
