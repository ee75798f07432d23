//! The AWS CLI, a client nobody here wrote, against the emulator binary.
//!
//! Needs `aws` on PATH (`pip install awscli`; `.ci/install-deps` does it). Fails, rather than
//! skips, when it is missing: a silently skipped compatibility test proves nothing.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, send_signal, wait_with_deadline};
use serde_json::Value;

struct Cli {
    endpoint: String,
    home: tempfile::TempDir,
}

impl Cli {
    /// Runs `aws s3files <args>`; returns (exit success, stdout JSON or Null, stderr).
    fn run(&self, args: &[&str]) -> (bool, Value, String) {
        let out = Command::new("aws")
            .arg("s3files")
            .args(args)
            .args(["--endpoint-url", &self.endpoint, "--output", "json"])
            .env("AWS_ACCESS_KEY_ID", "AKIDEMULATOR")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", self.home.path().join("config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.home.path().join("credentials"),
            )
            .env("AWS_PAGER", "")
            .output()
            .expect("the AWS CLI is installed (pip install awscli)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).expect("CLI prints JSON")
        };
        (
            out.status.success(),
            json,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> Value {
        let (ok, json, err) = self.run(args);
        assert!(ok, "aws s3files {args:?} failed: {err}");
        json
    }
}

fn start() -> (Child, Cli, tempfile::TempDir) {
    let port = common::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(BIN)
        .args([
            "emulator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--ready-after",
            "0",
        ])
        .arg("--bucket-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn emulator");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "emulator did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cli = Cli {
        endpoint: format!("http://127.0.0.1:{port}"),
        home: tempfile::tempdir().expect("home"),
    };
    (child, cli, dir)
}

#[tokio::test]
async fn the_aws_cli_manages_file_systems_mount_targets_and_access_points() {
    let (mut child, cli, _dir) = start();
    let fs = cli.ok(&[
        "create-file-system",
        "--bucket",
        "arn:aws:s3:::cli-bucket",
        "--role-arn",
        "arn:aws:iam::123456789012:role/s3files",
        "--tags",
        "key=Name,value=cli-demo",
    ]);
    let fs_id = fs["fileSystemId"]
        .as_str()
        .expect("fileSystemId")
        .to_owned();
    assert_eq!(fs["name"], "cli-demo");
    assert_eq!(fs["status"], "available");

    let mt = cli.ok(&[
        "create-mount-target",
        "--file-system-id",
        &fs_id,
        "--subnet-id",
        "subnet-0123456789abcdef0",
    ]);
    assert!(
        mt["mountTargetId"]
            .as_str()
            .is_some_and(|id| id.starts_with("fsmt-"))
    );

    for i in 0..7 {
        let path = format!(
            "path=/vol/{i},creationPermissions={{ownerUid=1000,ownerGid=1000,permissions=0755}}"
        );
        cli.ok(&[
            "create-access-point",
            "--file-system-id",
            &fs_id,
            "--posix-user",
            "uid=1000,gid=1000",
            "--root-directory",
            &path,
        ]);
    }
    // The CLI's paginator follows nextToken across pages of 3.
    let all = cli.ok(&[
        "list-access-points",
        "--file-system-id",
        &fs_id,
        "--page-size",
        "3",
    ]);
    assert_eq!(all["accessPoints"].as_array().map(Vec::len), Some(7));
    let first = cli.ok(&[
        "list-access-points",
        "--file-system-id",
        &fs_id,
        "--max-items",
        "3",
    ]);
    assert_eq!(first["accessPoints"].as_array().map(Vec::len), Some(3));
    assert!(first["NextToken"].is_string(), "{first}");

    let ap_id = all["accessPoints"][0]["accessPointId"]
        .as_str()
        .expect("id")
        .to_owned();
    cli.ok(&[
        "tag-resource",
        "--resource-id",
        &ap_id,
        "--tags",
        "key=team,value=storage",
    ]);
    let tags = cli.ok(&["list-tags-for-resource", "--resource-id", &ap_id]);
    assert_eq!(tags["tags"][0]["key"], "team");
    let got = cli.ok(&["get-access-point", "--access-point-id", &ap_id]);
    assert_eq!(got["posixUser"]["uid"], 1000);
    assert_eq!(
        got["rootDirectory"]["creationPermissions"]["permissions"],
        "0755"
    );

    let (ok, _, err) = cli.run(&["delete-file-system", "--file-system-id", &fs_id]);
    assert!(!ok && err.contains("ConflictException"), "{err}");
    for ap in all["accessPoints"].as_array().expect("list") {
        let id = ap["accessPointId"].as_str().expect("id");
        cli.ok(&["delete-access-point", "--access-point-id", id]);
    }
    cli.ok(&[
        "delete-mount-target",
        "--mount-target-id",
        mt["mountTargetId"].as_str().expect("id"),
    ]);
    cli.ok(&["delete-file-system", "--file-system-id", &fs_id]);
    let (ok, _, err) = cli.run(&["get-file-system", "--file-system-id", &fs_id]);
    assert!(!ok && err.contains("ResourceNotFoundException"), "{err}");

    send_signal(child.id() as i32, "TERM");
    wait_with_deadline(&mut child, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn the_aws_cli_sees_the_models_error_codes() {
    let (mut child, cli, _dir) = start();
    let cases: &[(&[&str], &str)] = &[
        (
            &["create-access-point", "--file-system-id", "fs-123"],
            "ValidationException",
        ),
        (
            &[
                "get-file-system",
                "--file-system-id",
                "fs-0123456789abcdef0",
            ],
            "ResourceNotFoundException",
        ),
        (
            &[
                "list-access-points",
                "--file-system-id",
                "fs-0123456789abcdef0",
                "--starting-token",
                "garbage",
            ],
            "ValidationException",
        ),
        (
            &[
                "create-file-system",
                "--bucket",
                "bucket",
                "--role-arn",
                "arn:aws:iam::123456789012:role/r",
            ],
            "ValidationException",
        ),
        (
            &[
                "get-mount-target",
                "--mount-target-id",
                "fsmt-0123456789abcdef0",
            ],
            "ResourceNotFoundException",
        ),
    ];
    for (args, code) in cases {
        let (ok, _, err) = cli.run(args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.contains(code), "{args:?}: expected {code}, got {err}");
    }
    send_signal(child.id() as i32, "TERM");
    wait_with_deadline(&mut child, Duration::from_secs(10)).await;
}
