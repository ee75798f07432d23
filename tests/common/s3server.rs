//! A real S3-compatible server on loopback for the data-plane tests: `moto_server` from PyPI
//! (installed by `.ci/install-deps`).

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;

pub const ACCESS_KEY: &str = "AKIDEMULATOR";
pub const SECRET_KEY: &str = "secret";

pub struct S3Server {
    child: Child,
    pub addr: SocketAddr,
    pub url: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// Starts `moto_server` on a free loopback port and waits until it answers.
    pub async fn start() -> S3Server {
        // The port is free when picked but moto binds it a moment later: another test may take
        // it first. A server that lost the race has exited; pick again.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            if let Some(server) = S3Server::try_start_on(port).await {
                return server;
            }
        }
        panic!("moto_server could not bind a free port in 5 tries");
    }

    /// Starts `moto_server` on `port` (a restart: moto keeps nothing, so buckets are new).
    pub async fn start_on(port: u16) -> S3Server {
        S3Server::try_start_on(port)
            .await
            .unwrap_or_else(|| panic!("moto_server exited: is port {port} taken?"))
    }

    /// Starts `moto_server` on `port`; `None` when it exits first (the port was taken), so a
    /// test never talks to another test's server.
    async fn try_start_on(port: u16) -> Option<S3Server> {
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]'; .ci/install-deps does it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut server = S3Server {
            child,
            addr,
            url: format!("http://{addr}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if server
                .child
                .try_wait()
                .expect("moto_server status")
                .is_some()
            {
                return None;
            }
            // Whoever answers must be our child, listening on the port.
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && listens(server.child.id(), port)
            {
                return Some(server);
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates `bucket` with versioning on, as S3 Files requires (moto does not check
    /// signatures, so bare requests do).
    pub async fn create_bucket(&self, bucket: &str) {
        s3files_csi::plain_http::ensure_versioned_bucket(&self.url, bucket)
            .await
            .expect("create the bucket, versioned");
        let path = format!("/{bucket}?versioning");
        let (_, body) = super::emulator::http_request(self.addr, "GET", &path, "").await;
        assert!(body.contains("<Status>Enabled</Status>"), "{body}");
    }

    /// An object store client for `bucket`.
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.url)
                .with_allow_http(true)
                .with_bucket_name(bucket)
                .with_region("us-east-1")
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .build()
                .expect("s3 client"),
        )
    }
}

/// Whether process `pid` holds the socket listening on loopback TCP `port` (/proc/net/tcp gives
/// the socket's inode, /proc/PID/fd links to it).
fn listens(pid: u32, port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let sockets: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let inode = fields.get(9)?;
            // State 0A is LISTEN.
            (local_port == port && *fields.get(3)? == "0A").then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|link| sockets.iter().any(|s| link.as_os_str() == s.as_str()))
    })
}
