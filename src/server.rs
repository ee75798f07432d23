//! Serving the CSI services over gRPC on a unix socket (production) or TCP (tests).
//!
//! A unix socket is created with mode 0660, never world-writable. A stale socket left by a
//! crashed process is replaced; a socket that still answers belongs to a live process and is
//! left alone, and a path that is not a socket is never deleted. On shutdown the server stops
//! accepting, lets in-flight calls finish (bounded by a grace period) and removes its socket.
//! Every connection goes through [`authority::AuthorityFix`], so clients that send the socket
//! path as `:authority` (grpcio) are served like Go's.

pub mod authority;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;
use tracing::{info, warn};

use crate::controller::ControllerService;
use crate::csi::{
    controller_server::ControllerServer, identity_server::IdentityServer, node_server::NodeServer,
};
use crate::identity::IdentityService;
use crate::node::NodeService;
use authority::AuthorityFix;

/// Permissions of the unix socket: owner and group may connect, nobody else.
pub const SOCKET_MODE: u32 = 0o660;

/// How long in-flight calls may run after a shutdown signal before the process exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// Where the gRPC server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///csi/csi.sock` (or `unix:/csi/csi.sock`, or a bare absolute path).
    Unix(PathBuf),
    /// `tcp://127.0.0.1:10000`; port 0 picks a free port.
    Tcp(SocketAddr),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hint = "use unix:///path/to/csi.sock or tcp://127.0.0.1:PORT";
        if let Some(rest) = s.strip_prefix("unix://") {
            return unix_path(rest, s, hint);
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            return unix_path(rest, s, hint);
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            let addr: SocketAddr = rest
                .parse()
                .map_err(|e| format!("endpoint {s:?}: {e}; {hint} with a numeric address"))?;
            return Ok(Endpoint::Tcp(addr));
        }
        if s.starts_with('/') {
            return unix_path(s, s, hint);
        }
        Err(format!("endpoint {s:?} has no known scheme; {hint}"))
    }
}

fn unix_path(path: &str, whole: &str, hint: &str) -> Result<Endpoint, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "endpoint {whole:?} needs an absolute socket path; {hint}"
        ));
    }
    if path.ends_with('/') {
        return Err(format!(
            "endpoint {whole:?} names a directory, not a socket file"
        ));
    }
    Ok(Endpoint::Unix(PathBuf::from(path)))
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// The services one process serves: Identity always, plus Controller or Node.
pub struct Services {
    pub identity: IdentityService,
    pub controller: Option<ControllerService>,
    pub node: Option<NodeService>,
    /// Where calls are counted; `None` for no metrics.
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

/// A bound listener, ready to serve.
pub enum Listener {
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
    Tcp {
        listener: TcpListener,
    },
}

impl Listener {
    /// Binds the endpoint, replacing a stale unix socket (see the module docs).
    pub async fn bind(endpoint: &Endpoint) -> anyhow::Result<Self> {
        match endpoint {
            Endpoint::Unix(path) => {
                prepare_socket_path(path)?;
                let listener = UnixListener::bind(path)
                    .with_context(|| format!("binding unix socket {}", path.display()))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
                    .with_context(|| format!("setting mode of {}", path.display()))?;
                Ok(Listener::Unix {
                    listener,
                    path: path.clone(),
                })
            }
            Endpoint::Tcp(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                Ok(Listener::Tcp { listener })
            }
        }
    }

    /// The endpoint actually listened on (with the real port for `tcp://...:0`).
    pub fn local_endpoint(&self) -> anyhow::Result<Endpoint> {
        Ok(match self {
            Listener::Unix { path, .. } => Endpoint::Unix(path.clone()),
            Listener::Tcp { listener } => Endpoint::Tcp(listener.local_addr()?),
        })
    }

    /// Serves until `shutdown` resolves, then drains in-flight calls for up to `grace`.
    pub async fn serve(
        self,
        services: Services,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let local = self.local_endpoint()?;
        let metrics = services.metrics.clone();
        let router = Server::builder()
            .layer(tower::util::MapRequestLayer::new(
                move |mut req: http::Request<tonic::body::Body>| {
                    if let Some(m) = &metrics {
                        req.extensions_mut().insert(m.clone());
                    }
                    req
                },
            ))
            .add_service(IdentityServer::new(services.identity))
            .add_optional_service(services.controller.map(ControllerServer::new))
            .add_optional_service(services.node.map(NodeServer::new));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = stop_rx.await;
        };
        info!(endpoint = %local, "serving CSI");
        let (serving, socket) = match self {
            Listener::Unix { listener, path } => (
                tokio::spawn(router.serve_with_incoming_shutdown(
                    UnixListenerStream::new(listener).map(|c| c.map(AuthorityFix::new)),
                    stop,
                )),
                Some(path),
            ),
            Listener::Tcp { listener } => (
                tokio::spawn(router.serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener).map(|c| c.map(AuthorityFix::new)),
                    stop,
                )),
                None,
            ),
        };
        let mut serving = serving;
        let result = tokio::select! {
            done = &mut serving => done,
            () = shutdown => {
                info!("shutting down: no new calls; waiting for in-flight calls");
                let _ = stop_tx.send(());
                match tokio::time::timeout(grace, &mut serving).await {
                    Ok(done) => done,
                    Err(_) => {
                        warn!(?grace, "in-flight calls did not finish in time; exiting anyway");
                        serving.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        if let Some(path) = socket {
            remove_socket(&path);
        }
        result
            .context("server task failed")?
            .context("gRPC server failed")?;
        info!("stopped");
        Ok(())
    }
}

/// Makes `path` ready for `bind`: creates the parent directory, removes a stale socket, and
/// refuses to touch a live socket or anything that is not a socket.
fn prepare_socket_path(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating socket directory {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", path.display())),
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another process is already serving on {}; stop it or choose another --endpoint",
                    path.display()
                );
            }
            info!(socket = %path.display(), "removing stale socket");
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it (choose another --endpoint)",
            path.display()
        ),
    }
}

fn remove_socket(path: &Path) {
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket && let Err(e) = std::fs::remove_file(path) {
        warn!(socket = %path.display(), error = %e, "could not remove socket");
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            warn!(error = %e, "cannot listen for signals; only a kill will stop this process");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("received SIGTERM"),
        _ = int.recv() => info!("received SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_in_every_accepted_form() {
        let sock = Endpoint::Unix(PathBuf::from("/csi/csi.sock"));
        assert_eq!("unix:///csi/csi.sock".parse::<Endpoint>(), Ok(sock.clone()));
        assert_eq!("unix:/csi/csi.sock".parse::<Endpoint>(), Ok(sock.clone()));
        assert_eq!("/csi/csi.sock".parse::<Endpoint>(), Ok(sock.clone()));
        assert_eq!(sock.to_string(), "unix:///csi/csi.sock");
        let tcp: Endpoint = "tcp://127.0.0.1:10000".parse().expect("valid tcp endpoint");
        assert_eq!(tcp.to_string(), "tcp://127.0.0.1:10000");
    }

    #[test]
    fn bad_endpoints_say_what_to_use() {
        for bad in [
            "",
            "csi.sock",
            "unix://relative.sock",
            "unix:///csi/",
            "tcp://localhost",
            "http://x",
        ] {
            let err = bad.parse::<Endpoint>().expect_err(bad);
            assert!(
                err.contains("unix://") || err.contains("socket"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_regular_file_at_the_socket_path_is_never_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("csi.sock");
        std::fs::write(&path, b"precious").expect("write");
        let err = prepare_socket_path(&path).expect_err("must refuse");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).expect("still there"), b"precious");
    }
}
