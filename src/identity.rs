//! The CSI Identity service, served in both controller and node mode.
//!
//! `GetPluginInfo` and `GetPluginCapabilities` are pure and answer the same every time.
//! `Probe` runs the mode's readiness checks: all passing is `ready: true`; one failing is a
//! successful answer with `ready: false` (the plugin is healthy but still waiting for a
//! dependency), its reason logged and returned in the `x-s3files-not-ready` response header.
//! Checks are local and cheap: livenessprobe restarts a plugin that is not ready, so nothing
//! outside the process (the AWS API) may decide it. What such a dependency is doing is a
//! [`StatusDetail`], reported in the `x-s3files-detail` header without changing `ready`.

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::csi::{
    self, GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
    plugin_capability::service::Type as ServiceType,
};
use crate::rpc;

/// Response header that carries why `Probe` answered not-ready.
pub const NOT_READY_HEADER: &str = "x-s3files-not-ready";
/// Response header that carries the details of a ready answer (a dependency that is down).
pub const DETAIL_HEADER: &str = "x-s3files-detail";

/// How long one readiness check may take before it counts as not ready.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Which half of the driver this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Controller,
    Node,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Controller => "controller",
            Mode::Node => "node",
        }
    }
}

/// A dependency the plugin needs before it can serve (the cloud API, the mount helper...).
#[tonic::async_trait]
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Short name for logs, e.g. `mount-helper`.
    fn name(&self) -> &str;
    /// `Err` carries a reason that tells the operator what is missing.
    async fn check(&self) -> Result<(), String>;
}

/// State of a dependency worth reporting that must not fail the probe; read from memory,
/// never by calling the dependency.
pub trait StatusDetail: Send + Sync + 'static {
    /// `Some` when there is something to tell.
    fn detail(&self) -> Option<String>;
}

/// The Identity service.
#[derive(Clone)]
pub struct IdentityService {
    driver_name: String,
    mode: Mode,
    checks: Vec<Arc<dyn ReadinessCheck>>,
    details: Vec<Arc<dyn StatusDetail>>,
}

impl IdentityService {
    /// `driver_name` must already be valid (see [`validate_driver_name`]).
    pub fn new(driver_name: String, mode: Mode, checks: Vec<Arc<dyn ReadinessCheck>>) -> Self {
        Self {
            driver_name,
            mode,
            checks,
            details: Vec::new(),
        }
    }

    /// Adds a detail reported by `Probe`.
    pub fn with_detail(mut self, detail: Arc<dyn StatusDetail>) -> Self {
        self.details.push(detail);
        self
    }

    fn capabilities(&self) -> Vec<PluginCapability> {
        let mut types = Vec::new();
        if self.mode == Mode::Controller {
            types.push(ServiceType::ControllerService);
        }
        types.push(ServiceType::VolumeAccessibilityConstraints);
        let mut caps: Vec<PluginCapability> = types
            .into_iter()
            .map(|t| PluginCapability {
                r#type: Some(csi::plugin_capability::Type::Service(
                    csi::plugin_capability::Service { r#type: t as i32 },
                )),
            })
            .collect();
        if self.mode == Mode::Controller {
            // Resizes succeed at once (the file system is elastic), including while mounted.
            caps.push(PluginCapability {
                r#type: Some(csi::plugin_capability::Type::VolumeExpansion(
                    csi::plugin_capability::VolumeExpansion {
                        r#type: csi::plugin_capability::volume_expansion::Type::Online as i32,
                    },
                )),
            });
        }
        caps
    }

    /// The first failing check's reason, or `None` when all pass.
    async fn first_unready(&self) -> Option<String> {
        for check in &self.checks {
            let outcome = tokio::time::timeout(CHECK_TIMEOUT, check.check()).await;
            let reason = match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(reason)) => reason,
                Err(_) => format!("check did not finish within {CHECK_TIMEOUT:?}"),
            };
            return Some(format!("{}: {reason}", check.name()));
        }
        None
    }
}

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        rpc::call("GetPluginInfo", request, |_| async {
            Ok(GetPluginInfoResponse {
                name: self.driver_name.clone(),
                vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
                manifest: [("mode".to_owned(), self.mode.as_str().to_owned())].into(),
            })
        })
        .await
    }

    async fn get_plugin_capabilities(
        &self,
        request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        rpc::call("GetPluginCapabilities", request, |_| async {
            Ok(GetPluginCapabilitiesResponse {
                capabilities: self.capabilities(),
            })
        })
        .await
    }

    async fn probe(
        &self,
        request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        let unready = std::sync::Mutex::new(None);
        let mut response = rpc::call("Probe", request, |_| async {
            let reason = self.first_unready().await;
            let ready = reason.is_none();
            if let Some(reason) = reason {
                warn!(%reason, "not ready");
                if let Ok(mut slot) = unready.lock() {
                    *slot = Some(reason);
                }
            }
            Ok(ProbeResponse { ready: Some(ready) })
        })
        .await?;
        let reason = unready.lock().ok().and_then(|mut slot| slot.take());
        let details: Vec<String> = self.details.iter().filter_map(|d| d.detail()).collect();
        for (header, text) in [
            (NOT_READY_HEADER, reason),
            (
                DETAIL_HEADER,
                (!details.is_empty()).then(|| details.join("; ")),
            ),
        ] {
            let Some(text) = text else { continue };
            // Header values must be visible ASCII; anything else becomes '?'.
            let ascii: String = text
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .collect();
            if let Ok(value) = MetadataValue::try_from(ascii) {
                response.metadata_mut().insert(header, value);
            }
        }
        Ok(response)
    }
}

/// Checks a driver name against the CSI rules: at most 63 characters, alphanumeric at both
/// ends, only alphanumerics, `-` and `.` between.
pub fn validate_driver_name(name: &str) -> Result<(), String> {
    let fix = "use a domain-style name such as s3files.csi.dev";
    if name.is_empty() {
        return Err(format!("driver name is empty; {fix}"));
    }
    if name.len() > 63 {
        return Err(format!(
            "driver name {name:?} is {} characters, over 63; {fix}",
            name.len()
        ));
    }
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    if !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return Err(format!(
            "driver name {name:?} must begin and end with a letter or digit"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!("driver name {name:?} contains {bad:?}; {fix}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names_follow_the_csi_rules() {
        for good in [
            "s3files.csi.dev",
            "a",
            "efs.csi.aws.com",
            "x-1.y",
            &"a".repeat(63),
        ] {
            assert!(validate_driver_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-abc", "abc.", "a_b", "a b", "ünïcode", &"a".repeat(64)] {
            assert!(validate_driver_name(bad).is_err(), "{bad}");
        }
    }

    struct Fixed(Result<(), String>);

    #[tonic::async_trait]
    impl ReadinessCheck for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        async fn check(&self) -> Result<(), String> {
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn first_failing_check_names_itself() {
        let svc = IdentityService::new(
            "s3files.csi.dev".into(),
            Mode::Node,
            vec![
                Arc::new(Fixed(Ok(()))),
                Arc::new(Fixed(Err("helper missing".into()))),
            ],
        );
        assert_eq!(
            svc.first_unready().await.as_deref(),
            Some("fixed: helper missing")
        );
        let svc = IdentityService::new("s3files.csi.dev".into(), Mode::Node, vec![]);
        assert_eq!(svc.first_unready().await, None);
    }
}
