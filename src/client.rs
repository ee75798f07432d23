//! A gRPC client for the driver's own endpoints, used by `s3files-csi health`, the quickstart
//! and the tests.

use std::time::{Duration, Instant};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Uri};
use tower::service_fn;

use crate::csi::{GetPluginInfoRequest, ProbeRequest, identity_client::IdentityClient};
use crate::server::Endpoint;

/// Opens a channel to `endpoint`.
pub async fn connect(endpoint: &Endpoint) -> anyhow::Result<Channel> {
    match endpoint {
        Endpoint::Tcp(addr) => Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to {endpoint}")),
        Endpoint::Unix(path) => {
            let path = path.clone();
            // The URI is required by the builder but unused: the connector dials the socket.
            tonic::transport::Endpoint::try_from("http://[::1]:1")?
                .connect_with_connector(service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .with_context(|| format!("connecting to {endpoint}"))
        }
    }
}

/// What `health` learned from a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub name: String,
    pub version: String,
    pub ready: bool,
    pub reason: Option<String>,
    /// What a ready plugin reports of its dependencies (the S3 Files API, for the controller).
    pub detail: Option<String>,
}

/// Asks the plugin at `endpoint` for its identity and readiness.
pub async fn health(endpoint: &Endpoint) -> anyhow::Result<Health> {
    let mut client = IdentityClient::new(connect(endpoint).await?);
    let info = client
        .get_plugin_info(GetPluginInfoRequest {})
        .await?
        .into_inner();
    let probe = client.probe(ProbeRequest {}).await?;
    let header = |name: &str| {
        probe
            .metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let reason = header(crate::identity::NOT_READY_HEADER);
    let detail = header(crate::identity::DETAIL_HEADER);
    Ok(Health {
        name: info.name,
        version: info.vendor_version,
        // An unset `ready` means ready, per the spec.
        ready: probe.into_inner().ready.unwrap_or(true),
        reason,
        detail,
    })
}

/// Polls [`health`] until the plugin answers ready or `wait` has passed; returns the last
/// answer or the last error.
pub async fn wait_ready(endpoint: &Endpoint, wait: Duration) -> anyhow::Result<Health> {
    let deadline = Instant::now() + wait;
    loop {
        let attempt = health(endpoint).await;
        let done = matches!(&attempt, Ok(h) if h.ready);
        if done || Instant::now() >= deadline {
            return attempt;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
