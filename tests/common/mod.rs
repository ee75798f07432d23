//! Test harness: runs the real `s3files-csi` binary on a unix socket in a temporary directory
//! and hands out gRPC channels to it.

#![allow(dead_code)]

#[path = "../../benches/support/counting.rs"]
pub mod counting;
pub mod emulator;
#[path = "../../benches/support/lease.rs"]
pub mod lease;
pub mod mounts;
pub mod s3server;

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

    /// Starts the plugin with extra environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, String)]) -> Plugin {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("csi.sock");
        let plugin = Self::spawn_with_env(args, &socket, dir, env);
        plugin.wait_serving().await;
        plugin
    }

    /// Spawns without waiting; the socket lives in `dir`.
    pub fn spawn_at(args: &[&str], socket: &std::path::Path, dir: tempfile::TempDir) -> Plugin {
        Self::spawn_with_env(args, socket, dir, &[])
    }

    pub fn spawn_with_env(
        args: &[&str],
        socket: &std::path::Path,
        dir: tempfile::TempDir,
        env: &[(&str, String)],
    ) -> Plugin {
        let endpoint = Endpoint::Unix(socket.to_path_buf());
        let mut child = Command::new(BIN)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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

/// Environment pointing the driver's SDK client at an emulator.
pub fn emulator_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL_S3FILES", url.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "AKIDEMULATOR".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "secret".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// A loopback port nothing listens on at the moment of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
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

/// An emulator with one available file system and mount targets in two zones, and a
/// controller plugin talking to it.
pub struct ControllerStack {
    pub emulator: emulator::RunningEmulator,
    pub plugin: Plugin,
    pub fs_id: String,
}

pub const SUBNET_A: &str = "subnet-0aaaaaaaaaaaaaaa1";
pub const SUBNET_B: &str = "subnet-0bbbbbbbbbbbbbbb2";

impl ControllerStack {
    pub async fn start(config: s3files_csi::emulator::Config, args: &[&str]) -> ControllerStack {
        Self::start_with_env(config, args, &[]).await
    }

    /// A controller that reads leadership terms from `lease` (held since an hour ago).
    pub async fn start_with_lease(
        config: s3files_csi::emulator::Config,
        args: &[&str],
        lease: &lease::FakeLease,
    ) -> ControllerStack {
        let flag = lease.flag();
        let mut all = vec!["--leader-lease", flag.as_str()];
        all.extend_from_slice(args);
        Self::start_with_env(config, &all, &[("KUBECONFIG", lease.kubeconfig())]).await
    }

    pub async fn start_with_env(
        mut config: s3files_csi::emulator::Config,
        args: &[&str],
        env: &[(&str, String)],
    ) -> ControllerStack {
        use s3files_csi::cloud::{NewFileSystem, S3Files};
        config
            .settings
            .subnet_zones
            .insert(SUBNET_A.into(), "use1-az1".into());
        config
            .settings
            .subnet_zones
            .insert(SUBNET_B.into(), "use1-az2".into());
        let ready_after = config.settings.ready_after;
        config.settings.ready_after = 0.0;
        let emulator = emulator::RunningEmulator::start(config).await;
        let cloud = emulator.cloud();
        let fs = cloud
            .create_file_system(&NewFileSystem {
                bucket_arn: "arn:aws:s3:::stack-bucket".into(),
                prefix: Some("k8s/".into()),
                role_arn: emulator::ROLE.into(),
                client_token: None,
                tags: vec![],
            })
            .await
            .expect("file system");
        cloud
            .create_mount_target(&fs.id, SUBNET_A)
            .await
            .expect("mount target a");
        cloud
            .create_mount_target(&fs.id, SUBNET_B)
            .await
            .expect("mount target b");
        let _ = ready_after;
        let mut all = vec!["controller", "--api-rate-limit", "0"];
        all.extend_from_slice(args);
        let env_all: Vec<(&str, String)> = emulator_env(&emulator.url)
            .into_iter()
            .chain(env.iter().cloned())
            .collect();
        let plugin = Plugin::start_with_env(&all, &env_all).await;
        ControllerStack {
            emulator,
            plugin,
            fs_id: fs.id,
        }
    }

    /// StorageClass parameters for this stack's file system.
    pub fn params(&self, extra: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        let mut p: std::collections::HashMap<String, String> = [
            ("provisioningMode".to_owned(), "s3files-ap".to_owned()),
            ("fileSystemId".to_owned(), self.fs_id.clone()),
        ]
        .into();
        for (k, v) in extra {
            p.insert((*k).to_owned(), (*v).to_owned());
        }
        p
    }
}

/// A mount capability with `mode`.
pub fn mount_capability(
    mode: s3files_csi::csi::volume_capability::access_mode::Mode,
) -> s3files_csi::csi::VolumeCapability {
    use s3files_csi::csi::{VolumeCapability, volume_capability};
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume::default(),
        )),
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
    }
}

/// A server running in this process on a free loopback port.
pub struct InProcess {
    pub endpoint: Endpoint,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Serves `services` on `tcp://127.0.0.1:0` until `stop` is sent, then drains for `grace`.
pub async fn serve_in_process(
    services: s3files_csi::server::Services,
    grace: Duration,
) -> InProcess {
    let listener =
        s3files_csi::server::Listener::bind(&"tcp://127.0.0.1:0".parse().expect("endpoint"))
            .await
            .expect("bind");
    let endpoint = listener.local_endpoint().expect("endpoint");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(listener.serve(
        services,
        async move {
            let _ = stopped.await;
        },
        grace,
    ));
    InProcess {
        endpoint,
        stop,
        task,
    }
}

#[allow(unused_imports)] // used by some of the test crates that share this module
pub use lease::write_kubeconfig;
