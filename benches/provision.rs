//! Provisioning benchmark: N volumes created and deleted through the controller's real gRPC
//! socket, at a given concurrency, against the emulator holding P pre-existing access points
//! and enforcing an API rate limit. Prints volumes per second, CreateVolume latency, S3 Files
//! API calls per CreateVolume (from the emulator's counters), and the achieved rate as a ratio
//! of the limit, next to a baseline of raw SDK CreateAccessPoint calls in the same run.
//!
//! `cargo bench --bench provision -- [--volumes 1000] [--concurrency 16] [--rate 50] [--existing 5000] [--ready-after 0] [--service-rate R] [--controllers 1] [--retry-mode adaptive]`
//!
//! `--ready-after S` keeps new access points `creating` for S seconds, so CreateVolume polls for
//! readiness as it does against the service. `--service-rate R` limits the emulated service to R
//! calls/s per operation while the controller keeps `--rate` (a service limit below the
//! client's). One controller runs as the chart runs it, reading a leader Lease (a fake
//! Kubernetes API) in a settled term; `--controllers 2` runs two controllers without a Lease,
//! both serving at once on one file system (as two clusters would), the workers split between
//! them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use s3files_csi::cloud::aws::AwsS3Files;
use s3files_csi::cloud::{NewAccessPoint, NewFileSystem, PosixUser, S3Files};
use s3files_csi::csi::controller_client::ControllerClient;
use s3files_csi::csi::{self, volume_capability};
use s3files_csi::emulator::faults::{FaultConfig, FaultSpec};
use s3files_csi::emulator::store::Settings;
use s3files_csi::emulator::{BucketStore, Config, Emulator, OPERATIONS};
use s3files_csi::server::Endpoint;

#[path = "support/lease.rs"]
mod lease;

struct Args {
    volumes: usize,
    concurrency: usize,
    rate: f64,
    existing: usize,
    ready_after: f64,
    service_rate: Option<f64>,
    controllers: usize,
    retry_mode: String,
}

fn args() -> Args {
    let mut a = Args {
        volumes: 1000,
        concurrency: 16,
        rate: 50.0,
        existing: 5000,
        ready_after: 0.0,
        service_rate: None,
        controllers: 1,
        retry_mode: "adaptive".to_owned(),
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--volumes" => a.volumes = value.parse().expect("--volumes N"),
            "--concurrency" => a.concurrency = value.parse().expect("--concurrency N"),
            "--rate" => a.rate = value.parse().expect("--rate CALLS_PER_SECOND"),
            "--existing" => a.existing = value.parse().expect("--existing N"),
            "--ready-after" => a.ready_after = value.parse().expect("--ready-after SECONDS"),
            "--service-rate" => {
                a.service_rate = Some(value.parse().expect("--service-rate CALLS_PER_SECOND"))
            }
            "--retry-mode" => a.retry_mode = value.clone(),
            "--controllers" => {
                a.controllers = value.parse().expect("--controllers 1|2");
                assert!((1..=2).contains(&a.controllers), "--controllers 1|2");
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn sdk(url: &str) -> aws_sdk_s3files::Client {
    use aws_sdk_s3files::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_s3files::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("AKIDBENCH", "secret", None, None, "bench"))
        .retry_config(aws_sdk_s3files::config::retry::RetryConfig::adaptive().with_max_attempts(10))
        .build();
    aws_sdk_s3files::Client::from_conf(config)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn calls(emu: &Emulator, outcome_filter: impl Fn(&str) -> bool) -> u64 {
    let outcomes = [
        "ok",
        "ThrottlingException",
        "InternalServerException",
        "ConflictException",
        "ResourceNotFoundException",
        "ValidationException",
        "ServiceQuotaExceededException",
    ];
    OPERATIONS
        .iter()
        .flat_map(|op| {
            outcomes
                .iter()
                .filter(|o| outcome_filter(o))
                .map(move |o| emu.faults.calls(op, o))
        })
        .sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    let dir = tempfile::tempdir()?;
    let mut settings = Settings::for_region("us-east-1");
    // Pre-existing access points are made at once; the measured ones wait `ready_after`.
    settings.ready_after = 0.0;
    settings.max_access_points_per_file_system = a.existing + a.volumes + 10;
    settings
        .subnet_zones
        .insert("subnet-0aaaaaaaaaaaaaaa1".into(), "use1-az1".into());
    let emu = Emulator::new(Config {
        settings,
        state_dir: None,
        buckets: BucketStore::Local {
            root: dir.path().to_owned(),
        },
        faults: FaultConfig::default(),
        seed: Some(1),
    })?;
    let url = format!("http://{}", emu.serve_on_loopback().await?);
    let cloud = AwsS3Files::new(sdk(&url), None);
    let fs = cloud
        .create_file_system(&NewFileSystem {
            bucket_arn: "arn:aws:s3:::bench".into(),
            prefix: None,
            role_arn: "arn:aws:iam::123456789012:role/bench".into(),
            client_token: None,
            tags: vec![],
        })
        .await?;
    cloud
        .create_mount_target(&fs.id, "subnet-0aaaaaaaaaaaaaaa1")
        .await?;
    eprintln!("creating {} pre-existing access points...", a.existing);
    let cloud = Arc::new(cloud);
    let mut setup = Vec::new();
    for w in 0..8 {
        let (cloud, fs_id, existing) = (cloud.clone(), fs.id.clone(), a.existing);
        setup.push(tokio::spawn(async move {
            for i in (w..existing).step_by(8) {
                let ap = NewAccessPoint {
                    file_system_id: fs_id.clone(),
                    client_token: format!("existing-{i}"),
                    posix_user: Some(PosixUser {
                        uid: 50_000 + i as u32,
                        gid: 50_000 + i as u32,
                        secondary_gids: vec![],
                    }),
                    root_path: Some(format!("/existing-{i}")),
                    creation_permissions: None,
                    tags: vec![],
                };
                cloud
                    .create_access_point(&ap)
                    .await
                    .expect("setup access point");
            }
        }));
    }
    for t in setup {
        t.await?;
    }

    // Every operation limited to `rate` calls per second from here on.
    emu.faults.set_config(FaultConfig {
        default: FaultSpec {
            rate_limit: Some(a.service_rate.unwrap_or(a.rate)),
            ..Default::default()
        },
        operations: Default::default(),
    });

    // Baseline: raw SDK CreateAccessPoint at the same concurrency and limit.
    let baseline_n = (a.rate * 5.0) as usize;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let (cloud, fs_id, n, c) = (cloud.clone(), fs.id.clone(), baseline_n, a.concurrency);
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(c) {
                let ap = NewAccessPoint {
                    file_system_id: fs_id.clone(),
                    client_token: format!("baseline-{i}"),
                    posix_user: None,
                    root_path: Some(format!("/baseline-{i}")),
                    creation_permissions: None,
                    tags: vec![],
                };
                cloud
                    .create_access_point(&ap)
                    .await
                    .expect("baseline access point");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let baseline_rate = baseline_n as f64 / start.elapsed().as_secs_f64();
    // Remove the baseline's access points with the limit lifted, so cleanup does not count.
    emu.faults.set_config(FaultConfig::default());
    for ap in cloud.list_access_points(&fs.id).await? {
        if ap
            .root_path
            .as_deref()
            .is_some_and(|p| p.starts_with("/baseline-"))
        {
            cloud.delete_access_point(&ap.id).await?;
        }
    }
    emu.faults.set_config(FaultConfig {
        default: FaultSpec {
            rate_limit: Some(a.service_rate.unwrap_or(a.rate)),
            ..Default::default()
        },
        operations: Default::default(),
    });
    emu.set_ready_after(a.ready_after);

    // The controllers, as deployed: the real binary on a unix socket. One reads a leader Lease
    // held for an hour (a settled term); two share the file system without one.
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let lease =
        lease::FakeLease::start("kube-system", "s3files-csi-dev", "controller-0", hour_ago).await;
    let mut controllers = Vec::new();
    let mut channels = Vec::new();
    for n in 0..a.controllers {
        let socket = dir.path().join(format!("csi-{n}.sock"));
        let endpoint = Endpoint::Unix(socket.clone());
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_s3files-csi"));
        command
            .args([
                "controller",
                "--endpoint",
                &endpoint.to_string(),
                "--api-rate-limit",
                &a.rate.to_string(),
                "--api-retry-mode",
                &a.retry_mode,
            ])
            .env("AWS_ENDPOINT_URL_S3FILES", &url)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("RUST_LOG", "warn");
        if a.controllers == 1 {
            command
                .args(["--leader-lease", &lease.flag()])
                .env("KUBECONFIG", lease.kubeconfig());
        }
        controllers.push(command.spawn()?);
        s3files_csi::client::wait_ready(&endpoint, Duration::from_secs(30)).await?;
        channels.push(s3files_csi::client::connect(&endpoint).await?);
    }

    let before_calls = calls(&emu, |_| true);
    let before_throttles = calls(&emu, |o| o == "ThrottlingException");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let mut client = ControllerClient::new(channels[w % channels.len()].clone());
        let (fs_id, n, c) = (fs.id.clone(), a.volumes, a.concurrency);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (w..n).step_by(c) {
                let req = csi::CreateVolumeRequest {
                    name: format!("pvc-bench-{i:05}"),
                    volume_capabilities: vec![csi::VolumeCapability {
                        access_type: Some(volume_capability::AccessType::Mount(Default::default())),
                        access_mode: Some(volume_capability::AccessMode {
                            mode: volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
                        }),
                    }],
                    parameters: [
                        ("provisioningMode".to_owned(), "s3files-ap".to_owned()),
                        ("fileSystemId".to_owned(), fs_id.clone()),
                    ]
                    .into(),
                    ..Default::default()
                };
                let t = Instant::now();
                let result = client.create_volume(req).await;
                out.push((
                    t.elapsed(),
                    result.map(|r| {
                        r.into_inner()
                            .volume
                            .map(|v| v.volume_id)
                            .unwrap_or_default()
                    }),
                ));
            }
            out
        }));
    }
    let mut latencies = Vec::new();
    let mut ids = Vec::new();
    let mut failures = 0;
    for t in tasks {
        for (latency, result) in t.await? {
            latencies.push(latency);
            match result {
                Ok(id) => ids.push(id),
                Err(status) => {
                    failures += 1;
                    eprintln!("CreateVolume failed: {status:?}");
                }
            }
        }
    }
    let create_secs = start.elapsed().as_secs_f64();
    let create_calls = calls(&emu, |_| true) - before_calls;
    // GIDs a volume's access point shares with another access point, pre-existing ones
    // included (must be 0).
    let mut seen: std::collections::HashMap<u32, (usize, bool)> = std::collections::HashMap::new();
    for ap in cloud.list_access_points(&fs.id).await? {
        let ours = ap
            .root_path
            .as_deref()
            .is_some_and(|p| p.starts_with("/pvc-bench-"));
        if let Some(u) = ap.posix_user {
            let entry = seen.entry(u.gid).or_default();
            entry.0 += 1;
            entry.1 |= ours;
        }
    }
    let collisions: usize = seen
        .values()
        .filter(|(n, ours)| *n > 1 && *ours)
        .map(|(n, _)| n - 1)
        .sum();
    let create_throttles = calls(&emu, |o| o == "ThrottlingException") - before_throttles;

    let start = Instant::now();
    let mut tasks = Vec::new();
    for (k, chunk) in ids
        .chunks(ids.len().div_ceil(a.concurrency).max(1))
        .enumerate()
    {
        let mut client = ControllerClient::new(channels[k % channels.len()].clone());
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for id in chunk {
                if client
                    .delete_volume(csi::DeleteVolumeRequest {
                        volume_id: id,
                        ..Default::default()
                    })
                    .await
                    .is_err()
                {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut delete_failures = 0;
    for t in tasks {
        delete_failures += t.await?;
    }
    let delete_secs = start.elapsed().as_secs_f64();
    for mut controller in controllers {
        let _ = controller.kill();
    }

    latencies.sort();
    let rate = a.volumes as f64 / create_secs;
    println!(
        "provisioning benchmark: {} volumes, concurrency {}, {} pre-existing access points",
        a.volumes, a.concurrency, a.existing
    );
    println!(
        "controllers                      {:>10} ({})",
        a.controllers,
        if a.controllers == 1 {
            "reading a leader Lease in a settled term"
        } else {
            "both serving, no Lease: every GID checked"
        }
    );
    println!(
        "emulated API rate limit          {:>10.1} calls/s per operation (controller's limit {:.1}, {} retry); access points ready after {} s",
        a.service_rate.unwrap_or(a.rate),
        a.rate,
        a.retry_mode,
        a.ready_after
    );
    println!(
        "baseline raw CreateAccessPoint   {:>10.1} calls/s ({:.2} of the limit)",
        baseline_rate,
        baseline_rate / a.rate
    );
    println!(
        "CreateVolume rate                {:>10.1} volumes/s ({:.2} of the limit, {:.2} of the baseline)",
        rate,
        rate / a.rate,
        rate / baseline_rate
    );
    println!(
        "CreateVolume latency p50 / p99   {:>10.1} ms / {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "CreateVolume latency max         {:>10.1} ms",
        latencies.last().map_or(0.0, |l| l.as_secs_f64() * 1e3)
    );
    println!(
        "API calls per CreateVolume       {:>10.3} (incl. {} throttled answers)",
        create_calls as f64 / a.volumes as f64,
        create_throttles
    );
    println!(
        "achieved API rate                {:>10.1} calls/s ({:.2} of the controller's limit, {:.2} of the service's)",
        create_calls as f64 / create_secs,
        create_calls as f64 / create_secs / a.rate,
        create_calls as f64 / create_secs / a.service_rate.unwrap_or(a.rate)
    );
    println!("GID collisions found             {:>10}", collisions);
    println!("CreateVolume failures            {:>10}", failures);
    println!(
        "DeleteVolume rate                {:>10.1} volumes/s, {} failures",
        ids.len() as f64 / delete_secs,
        delete_failures
    );
    println!(
        "access points left               {:>10} (expected {})",
        emu.access_point_count(),
        a.existing
    );
    Ok(())
}
