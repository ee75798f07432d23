//! The server as operators meet it: socket permissions, signals, stale sockets, TCP, start-up
//! errors, request logs without secrets, and draining of in-flight calls on shutdown.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;

use common::{Plugin, run};

/// A node plugin as the chart starts it, minus Kubernetes: its zone id given by flag.
const NODE: &[&str] = &["node", "--node-id", "n1", "--zone-id", "use1-az1"];
use s3files_csi::controller::ControllerService;
use s3files_csi::csi::{
    self, controller_client::ControllerClient, identity_client::IdentityClient,
};
use s3files_csi::identity::{IdentityService, Mode, ReadinessCheck};
use s3files_csi::server::{Endpoint, Listener, Services};
use tokio::sync::{Notify, oneshot};

#[tokio::test]
async fn the_socket_is_created_with_mode_0660() {
    let plugin = Plugin::start(NODE).await;
    let meta = std::fs::symlink_metadata(&plugin.socket).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o660,
        "socket must not be world-accessible"
    );
}

#[tokio::test]
async fn sigterm_exits_zero_and_removes_the_socket() {
    let plugin = Plugin::start(NODE).await;
    let socket = plugin.socket.clone();
    let (status, log) = plugin.terminate().await;
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(!socket.exists(), "socket left behind");
    assert!(log.contains("received SIGTERM"), "{log}");
}

#[tokio::test]
async fn a_second_start_over_a_stale_socket_works() {
    let plugin = Plugin::start(NODE).await;
    let socket = plugin.socket.clone();
    let dir = plugin.kill().await;
    assert!(
        socket.exists(),
        "SIGKILL should leave the socket file behind"
    );

    let again = Plugin::spawn_at(NODE, &socket, dir);
    again.wait_serving().await;
    assert!(
        again.log().contains("removing stale socket"),
        "{}",
        again.log()
    );
}

#[tokio::test]
async fn a_live_socket_is_not_stolen_by_a_second_process() {
    let first = Plugin::start(NODE).await;
    let endpoint = first.endpoint.to_string();
    let (status, _, stderr) = run(&[
        "node",
        "--node-id",
        "n2",
        "--zone-id",
        "use1-az1",
        "--endpoint",
        &endpoint,
    ]);
    assert!(!status.success());
    assert!(stderr.contains("already serving"), "{stderr}");
    // The first plugin still answers.
    first.wait_serving().await;
}

#[tokio::test]
async fn serves_on_tcp_for_tests() {
    let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().expect("endpoint"))
        .await
        .expect("bind");
    let endpoint = listener.local_endpoint().expect("local endpoint");
    assert!(matches!(endpoint, Endpoint::Tcp(addr) if addr.port() != 0));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(listener.serve(
        services(Mode::Controller, vec![]),
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    let health = s3files_csi::client::health(&endpoint)
        .await
        .expect("health over tcp");
    assert!(health.ready);
    stop.send(()).expect("server still running");
    server.await.expect("join").expect("clean shutdown");
}

#[test]
fn bad_start_up_input_fails_fast_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["node", "--node-id", "n1", "--driver-name", "bad_name!"],
            "driver name",
        ),
        (&["node", "--node-id", ""], "node id is empty"),
        (&["controller", "--endpoint", "relative.sock"], "unix://"),
        (&["node"], "--node-id"),
        (
            &["node", "--node-id", "n1", "--region", "US East"],
            "--region",
        ),
        (
            &["node", "--node-id", "n1", "--zone-id", "us-east-1a"],
            "zone id",
        ),
        (&["controller", "--region", "useast1"], "region"),
    ];
    for (args, expected) in cases {
        let (status, _, stderr) = run(args);
        assert!(!status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn a_controller_that_cannot_find_its_region_does_not_start() {
    // No flag, no environment, no profile, no instance metadata: nothing to fall back on
    // (object_store alone would have used us-east-1).
    let out = std::process::Command::new(common::BIN)
        .args(["controller", "--endpoint", "tcp://127.0.0.1:0"])
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env("AWS_CONFIG_FILE", "/nonexistent/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot find its AWS region"), "{stderr}");
}

#[test]
fn health_exits_nonzero_when_nothing_listens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("unix://{}/absent.sock", dir.path().display());
    let (status, _, stderr) = run(&["health", "--endpoint", &endpoint]);
    assert!(!status.success());
    assert!(stderr.contains("no CSI plugin answered"), "{stderr}");
}

#[tokio::test]
async fn health_reports_name_version_and_readiness() {
    let plugin = Plugin::start(&[
        "node",
        "--node-id",
        "n1",
        "--zone-id",
        "use1-az1",
        "--mount-helper",
        "/bin/true",
    ])
    .await;
    let endpoint = plugin.endpoint.to_string();
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run(&["health", "--endpoint", &endpoint, "--wait", "10"])
    })
    .await
    .expect("join");
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("s3files.csi.dev {} ready=true", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn request_logs_show_the_request_but_never_its_secrets() {
    let plugin =
        Plugin::start_with_env(&["controller"], &common::emulator_env("http://127.0.0.1:9")).await;
    let mut controller = ControllerClient::new(plugin.channel().await);
    let request = csi::CreateVolumeRequest {
        name: "pvc-logged-name".into(),
        secrets: [(
            "awsSecretAccessKey".to_owned(),
            "s3cr3t-value-xyz".to_owned(),
        )]
        .into(),
        ..Default::default()
    };
    let _ = controller.create_volume(request).await;
    let (_, log) = plugin.terminate().await;
    assert!(
        log.contains("pvc-logged-name"),
        "request should be logged:\n{log}"
    );
    assert!(log.contains("CreateVolume"), "{log}");
    assert!(
        !log.contains("s3cr3t-value-xyz"),
        "secret value leaked:\n{log}"
    );
    assert!(
        !log.contains("awsSecretAccessKey"),
        "secret key leaked:\n{log}"
    );
}

/// A readiness check that blocks until released, to hold a Probe call in flight.
struct Gate {
    entered: Arc<Notify>,
    release: Arc<Notify>,
    outcome: Result<(), String>,
}

#[tonic::async_trait]
impl ReadinessCheck for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    async fn check(&self) -> Result<(), String> {
        self.entered.notify_one();
        self.release.notified().await;
        self.outcome.clone()
    }
}

fn services(mode: Mode, checks: Vec<Arc<dyn ReadinessCheck>>) -> Services {
    // These tests exercise Identity only; the controller's API client points nowhere.
    let cloud = || -> Arc<dyn s3files_csi::cloud::S3Files> {
        Arc::new(s3files_csi::cloud::aws::AwsS3Files::new(
            common::emulator::sdk_client("http://127.0.0.1:9", 1),
            None,
        ))
    };
    Services {
        identity: IdentityService::new("s3files.csi.dev".into(), mode, checks),
        controller: (mode == Mode::Controller)
            .then(|| ControllerService::new(cloud(), None, Default::default())),
        node: None,
        metrics: None,
    }
}

#[tokio::test]
async fn in_flight_calls_finish_after_the_shutdown_signal() {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let gate = Gate {
        entered: entered.clone(),
        release: release.clone(),
        outcome: Ok(()),
    };
    let common::InProcess {
        endpoint,
        stop,
        task: server,
    } = common::serve_in_process(
        services(Mode::Controller, vec![Arc::new(gate)]),
        Duration::from_secs(30),
    )
    .await;

    let mut identity = IdentityClient::new(
        s3files_csi::client::connect(&endpoint)
            .await
            .expect("connect"),
    );
    let probe = tokio::spawn(async move { identity.probe(csi::ProbeRequest {}).await });
    entered.notified().await;
    stop.send(()).expect("server running");
    // The server must wait for the probe rather than exit under it.
    assert!(!server.is_finished());
    release.notify_one();
    let answer = probe
        .await
        .expect("join")
        .expect("in-flight probe completes");
    assert_eq!(answer.into_inner().ready, Some(true));
    server.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn probe_says_not_ready_with_the_failing_check_and_its_reason() {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    release.notify_one();
    let gate = Gate {
        entered,
        release,
        outcome: Err("mount helper /sbin/mount.s3files not found".into()),
    };
    let common::InProcess {
        endpoint,
        stop,
        task: server,
    } = common::serve_in_process(
        services(Mode::Node, vec![Arc::new(gate)]),
        Duration::from_secs(5),
    )
    .await;
    let health = s3files_csi::client::health(&endpoint)
        .await
        .expect("probe answers");
    assert!(!health.ready);
    assert_eq!(
        health.reason.as_deref(),
        Some("gate: mount helper /sbin/mount.s3files not found")
    );
    stop.send(()).expect("running");
    server.await.expect("join").expect("clean shutdown");
}
