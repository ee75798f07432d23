//! Test harness: runs the real `s3files-csi` binary on a unix socket in a temporary directory
//! and hands out gRPC channels to it.

#![allow(dead_code)]

pub mod emulator;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use s3files_csi::server::Endpoint;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_s3files-csi");

/// A running plugin process.
pub struct Plugin {
    child: Child,
    pub endpoint: Endpoint,
    pub socket: PathBuf,
    stderr: Arc<Mutex<String>>,
    log_closed: Arc<std::sync::atomic::AtomicBool>,
    dir: Option<tempfile::TempDir>,
}

impl Plugin {
    /// Starts `s3files-csi <args> --endpoint unix://<tmp>/csi.sock` and waits until it answers.
    pub async fn start(args: &[&str]) -> Plugin {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("csi.sock");
        let plugin = Self::spawn_at(args, &socket, dir);
        plugin.wait_serving().await;
        plugin
    }

    /// Spawns without waiting; the socket lives in `dir`.
    pub fn spawn_at(args: &[&str], socket: &std::path::Path, dir: tempfile::TempDir) -> Plugin {
        let endpoint = Endpoint::Unix(socket.to_path_buf());
        let mut child = Command::new(BIN)
            .args(args)
            .arg("--endpoint")
            .arg(endpoint.to_string())
            .env("RUST_LOG", "s3files_csi=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn s3files-csi");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        let log_closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let closed = log_closed.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("log lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            closed.store(true, std::sync::atomic::Ordering::Release);
        });
        Plugin {
            child,
            endpoint,
            socket: socket.to_path_buf(),
            stderr,
            log_closed,
            dir: Some(dir),
        }
    }

    /// Polls until the plugin answers GetPluginInfo, or panics with its log after 30 s.
    pub async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(h) = s3files_csi::client::health(&self.endpoint).await {
                assert!(!h.name.is_empty());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "plugin never answered; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn channel(&self) -> Channel {
        s3files_csi::client::connect(&self.endpoint)
            .await
            .expect("connect to plugin")
    }

    pub fn log(&self) -> String {
        self.stderr.lock().expect("log lock").clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits (at most 30 s) for the exit status and the whole log.
    ///
    /// Async so that the test runtime keeps running: the clients' connection tasks must answer
    /// the server's graceful-shutdown handshake, as kubelet's would.
    pub async fn terminate(mut self) -> (ExitStatus, String) {
        send_signal(self.pid(), "TERM");
        let status = wait_with_deadline(&mut self.child, Duration::from_secs(30)).await;
        let log = self.wait_log_closed().await;
        (status, log)
    }

    /// Kills with SIGKILL, as a crash would, leaving the socket file behind.
    pub async fn kill(mut self) -> tempfile::TempDir {
        send_signal(self.pid(), "KILL");
        let _ = wait_with_deadline(&mut self.child, Duration::from_secs(30)).await;
        self.dir.take().expect("temp dir")
    }

    /// The log once the reader thread has seen the end of the pipe.
    async fn wait_log_closed(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log_closed.load(std::sync::atomic::Ordering::Acquire)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.log()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn send_signal(pid: i32, signal: &str) {
    use nix::sys::signal::{Signal, kill};
    let signal = match signal {
        "TERM" => Signal::SIGTERM,
        "INT" => Signal::SIGINT,
        "KILL" => Signal::SIGKILL,
        other => panic!("unknown signal {other}"),
    };
    kill(nix::unistd::Pid::from_raw(pid), signal).expect("send signal");
}

pub async fn wait_with_deadline(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the binary to completion and returns (exit status, stdout, stderr).
pub fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run binary");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
