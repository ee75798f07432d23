//! The plugins as a gRPC client nobody here wrote meets them: Python's grpcio over the unix
//! socket. grpcio sends the percent-encoded socket path as `:authority` (Go clients send
//! `localhost`); every call of both services must be served, errors included.
//!
//! Needs python3 with grpcio and grpcio-tools (.ci/install-deps puts them in
//! /opt/s3files-csi-tools; S3FILES_TEST_PYTHON names another interpreter).

mod common;

use std::path::Path;
use std::process::Command;

use common::emulator::test_config;
use common::{ControllerStack, Plugin};

fn python() -> String {
    let python = std::env::var("S3FILES_TEST_PYTHON")
        .unwrap_or_else(|_| "/opt/s3files-csi-tools/bin/python3".to_owned());
    let ok = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{python} has no grpcio: run .ci/install-deps (or set S3FILES_TEST_PYTHON)"
    );
    python
}

/// Compiles proto/csi.proto for Python into `dir`.
fn compile(python: &str, dir: &Path) {
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let status = Command::new(python)
        .args(["-m", "grpc_tools.protoc", &format!("-I{proto}")])
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .arg(format!("{proto}/csi.proto"))
        .status()
        .expect("protoc");
    assert!(status.success());
}

/// Runs `script` with the generated modules importable; returns its stdout.
fn run(python: &str, dir: &Path, script: &str) -> String {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", dir)
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Connects as grpcio does by default (its own `:authority`) and asks the Identity service.
const PRELUDE: &str = r#"
import os, grpc, csi_pb2 as pb, csi_pb2_grpc as rpc
channel = grpc.insecure_channel("unix://" + os.environ["CSI_SOCKET"])
identity = rpc.IdentityStub(channel)
info = identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=10)
print("name", info.name)
caps = identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest(), timeout=10)
print("plugin-caps", len(caps.capabilities))
print("ready", identity.Probe(pb.ProbeRequest(), timeout=10).ready.value)
"#;

fn socket_of(plugin: &Plugin) -> String {
    let endpoint = plugin.endpoint.to_string();
    endpoint
        .strip_prefix("unix://")
        .expect("a unix socket")
        .to_owned()
}

/// Runs `body` after the prelude against `plugin`. Awaited, not blocking: the emulator of a
/// controller stack runs on this test's runtime.
async fn run_against(python: &str, dir: &Path, plugin: &Plugin, body: &str) -> String {
    let script = format!("{PRELUDE}\n{body}");
    let out = tokio::process::Command::new(python)
        .arg("-c")
        .arg(&script)
        .env("PYTHONPATH", dir)
        .env("CSI_SOCKET", socket_of(plugin))
        .output()
        .await
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}\nplugin log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        plugin.log()
    );
    stdout
}

#[tokio::test]
async fn grpcio_is_served_by_the_node_plugin_over_its_unix_socket() {
    let python = python();
    let dir = tempfile::tempdir().expect("tempdir");
    compile(&python, dir.path());
    assert!(run(&python, dir.path(), "import grpc; print(grpc.__version__)").contains('.'));
    let state = dir.path().join("state").display().to_string();
    let plugin = Plugin::start(&[
        "node",
        "--node-id",
        "n1",
        "--zone-id",
        "use1-az1",
        "--mount-helper",
        "/bin/true",
        "--state-dir",
        &state,
    ])
    .await;
    let out = run_against(
        &python,
        dir.path(),
        &plugin,
        r#"
node = rpc.NodeStub(channel)
print("node-caps", len(node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest(), timeout=10).capabilities))
print("node-id", node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10).node_id)
try:
    node.NodePublishVolume(pb.NodePublishVolumeRequest(volume_id="", target_path="/x"), timeout=10)
    print("publish unexpectedly ok")
except grpc.RpcError as e:
    print("publish", e.code().name, e.details())
for _ in range(100):
    identity.Probe(pb.ProbeRequest(), timeout=10)
print("probes 100")
"#,
    )
    .await;
    for expected in [
        "name s3files.csi.dev",
        "ready True",
        "node-caps 3",
        "node-id n1",
        "publish INVALID_ARGUMENT invalid volume_id",
        "probes 100",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[tokio::test]
async fn grpcio_is_served_by_the_controller_plugin_over_its_unix_socket() {
    let python = python();
    let dir = tempfile::tempdir().expect("tempdir");
    compile(&python, dir.path());
    let stack = ControllerStack::start(test_config(), &[]).await;
    let fs = stack.fs_id.clone();
    let out = run_against(
        &python,
        dir.path(),
        &stack.plugin,
        &format!(
            r#"
ctl = rpc.ControllerStub(channel)
print("ctl-caps", len(ctl.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest(), timeout=10).capabilities))
cap = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(), access_mode=pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER))
vol = ctl.CreateVolume(pb.CreateVolumeRequest(name="pvc-grpcio", volume_capabilities=[cap], parameters={{"provisioningMode": "s3files-ap", "fileSystemId": "{fs}"}}), timeout=60).volume
print("created", vol.volume_id)
ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=60)
print("deleted")
try:
    ctl.CreateVolume(pb.CreateVolumeRequest(name="", volume_capabilities=[cap]), timeout=10)
except grpc.RpcError as e:
    print("create", e.code().name)
try:
    ctl.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(volume_id="s3files:" + "f" * 10000, volume_capabilities=[cap]), timeout=10)
except grpc.RpcError as e:
    print("long-id", e.code().name, len(e.details()))
"#
        ),
    )
    .await;
    for expected in [
        "ctl-caps",
        "created s3files:",
        "deleted",
        "create INVALID_ARGUMENT",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}
