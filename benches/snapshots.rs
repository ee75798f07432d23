//! Snapshots and restores against moto (a versioned bucket), through the controller's own code:
//!
//! - CreateSnapshot of volumes of 10, 1,000 and 10,000 objects: time and S3 requests (counted
//!   by a proxy in front of moto). They must stay flat: a snapshot copies nothing.
//! - Restore throughput (objects/s, MiB/s) of CreateVolume from a snapshot against raw
//!   CopyObject of the same objects with the same parallelism on the same server (list the
//!   keys, copy each), for small files and for large ones, with the new volume's owner equal to
//!   the source's (copies only) and with its own GID (each object's metadata is read and
//!   rewritten). Rounds rotate which goes first; the ratio is the median of each round's.
//!
//! `cargo bench --bench snapshots -- [--rounds 3] [--small 2000] [--large 24] [--large-mib 16]`

#[path = "support/counting.rs"]
mod counting;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use futures_util::{StreamExt, TryStreamExt};
use s3files_csi::cloud::aws::AwsS3Files;
use s3files_csi::cloud::{NewFileSystem, S3Files};
use s3files_csi::controller::{ControllerConfig, ControllerService};
use s3files_csi::csi::controller_server::Controller;
use s3files_csi::csi::{self, volume_capability};
use s3files_csi::data::versions::S3Versions;
use s3files_csi::emulator::faults::FaultConfig;
use s3files_csi::emulator::store::Settings;
use s3files_csi::emulator::{BucketStore, Config, Emulator};

const BUCKET: &str = "bench";
const PARALLEL: usize = s3files_csi::controller::restore::COPIES_IN_FLIGHT;

struct Args {
    rounds: usize,
    small: usize,
    large: usize,
    large_mib: usize,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 3,
        small: 2000,
        large: 24,
        large_mib: 16,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--rounds" => a.rounds = value.parse().expect("--rounds N"),
            "--small" => a.small = value.parse().expect("--small N"),
            "--large" => a.large = value.parse().expect("--large N"),
            "--large-mib" => a.large_mib = value.parse().expect("--large-mib N"),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s3(url: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .force_path_style(true)
        .credentials_provider(Credentials::new("AKIDBENCH", "secret", None, None, "bench"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn s3files(url: &str) -> aws_sdk_s3files::Client {
    use aws_sdk_s3files::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_s3files::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("AKIDBENCH", "secret", None, None, "bench"))
        .build();
    aws_sdk_s3files::Client::from_conf(config)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

struct Bench {
    controller: ControllerService,
    client: aws_sdk_s3::Client,
    proxy: counting::CountingProxy,
    fs_id: String,
}

impl Bench {
    async fn volume(
        &self,
        name: &str,
        source: Option<csi::VolumeContentSource>,
        own_gid: bool,
    ) -> csi::Volume {
        let mut parameters: std::collections::HashMap<String, String> = [
            ("provisioningMode".to_owned(), "s3files-ap".to_owned()),
            ("fileSystemId".to_owned(), self.fs_id.clone()),
        ]
        .into();
        if !own_gid {
            parameters.insert("uid".into(), "1000".into());
            parameters.insert("gid".into(), "1000".into());
        }
        let req = csi::CreateVolumeRequest {
            name: name.into(),
            volume_capabilities: vec![csi::VolumeCapability {
                access_type: Some(volume_capability::AccessType::Mount(Default::default())),
                access_mode: Some(volume_capability::AccessMode {
                    mode: volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
                }),
            }],
            parameters,
            volume_content_source: source,
            ..Default::default()
        };
        loop {
            match Controller::create_volume(&self.controller, tonic::Request::new(req.clone()))
                .await
            {
                Ok(r) => return r.into_inner().volume.expect("volume"),
                Err(s) if s.code() == tonic::Code::Aborted => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(s) => panic!("CreateVolume {name}: {s:?}"),
            }
        }
    }

    async fn snapshot(&self, name: &str, volume: &str) -> csi::Snapshot {
        Controller::create_snapshot(
            &self.controller,
            tonic::Request::new(csi::CreateSnapshotRequest {
                source_volume_id: volume.into(),
                name: name.into(),
                ..Default::default()
            }),
        )
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("snapshot")
    }

    /// Puts `n` objects of `size` bytes under `prefix`, owned (in their metadata) by 1000:1000.
    async fn fill(&self, prefix: &str, n: usize, size: usize) {
        let body = bytes::Bytes::from(vec![b'x'; size]);
        futures_util::stream::iter(0..n)
            .map(|i| {
                let (client, body) = (self.client.clone(), body.clone());
                let key = format!("{prefix}d{:02}/f{i:05}", i % 20);
                async move {
                    client
                        .put_object()
                        .bucket(BUCKET)
                        .key(key)
                        .metadata("uid", "1000")
                        .metadata("gid", "1000")
                        .metadata("mode", "33188")
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await
            .expect("fill");
    }

    /// Raw: list `from`'s keys and CopyObject each to `to`, `PARALLEL` at a time.
    async fn raw_copy(&self, from: &str, to: &str) -> usize {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(BUCKET)
                .prefix(from)
                .set_continuation_token(token)
                .send()
                .await
                .expect("list");
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            token = out.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        let n = keys.len();
        futures_util::stream::iter(keys)
            .map(|k| {
                let client = self.client.clone();
                let dest = format!("{to}{}", &k[from.len()..]);
                async move {
                    client
                        .copy_object()
                        .bucket(BUCKET)
                        .key(dest)
                        .copy_source(format!("{BUCKET}/{k}"))
                        .send()
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await
            .expect("raw copy");
        n
    }
}

fn root_of(v: &csi::Volume) -> String {
    format!(
        "k8s/{}/",
        v.volume_context["accessPointRoot"].trim_matches('/')
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let moto = Moto(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]')"),
    );
    let moto_url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while s3files_csi::plain_http::ensure_versioned_bucket(&moto_url, BUCKET)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "moto did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let proxy = counting::CountingProxy::start(&moto_url).await;
    let mut settings = Settings::for_region("us-east-1");
    settings.ready_after = 0.0;
    settings
        .subnet_zones
        .insert("subnet-0aaaaaaaaaaaaaaa1".into(), "use1-az1".into());
    let emu = Emulator::new(Config {
        settings,
        state_dir: None,
        buckets: BucketStore::S3 {
            endpoint: moto_url.clone(),
        },
        faults: FaultConfig::default(),
        seed: Some(1),
    })?;
    let url = format!("http://{}", emu.serve_on_loopback().await?);
    let cloud = AwsS3Files::new(s3files(&url), None);
    let fs = cloud
        .create_file_system(&NewFileSystem {
            bucket_arn: format!("arn:aws:s3:::{BUCKET}"),
            prefix: Some("k8s/".into()),
            role_arn: "arn:aws:iam::123456789012:role/bench".into(),
            client_token: None,
            tags: vec![],
        })
        .await?;
    cloud
        .create_mount_target(&fs.id, "subnet-0aaaaaaaaaaaaaaa1")
        .await?;
    let config = ControllerConfig {
        // The bench waits for each restore in one call.
        restore_wait: Duration::from_secs(3600),
        ..ControllerConfig::default()
    };
    let controller = ControllerService::new(Arc::new(cloud), None, config)
        .with_snapshots(Arc::new(S3Versions::new(s3(&proxy.url))), None);
    let bench = Bench {
        controller,
        client: s3(&moto_url),
        proxy,
        fs_id: fs.id.clone(),
    };

    println!("## CreateSnapshot (moto, {} rounds)\n", a.rounds);
    println!(
        "| objects in the volume | time, median (ms) | S3 requests | of which size measurement after the answer (ListObjectVersions pages) |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    for n in [10usize, 1000, 10_000] {
        let v = bench.volume(&format!("pvc-snap-{n}"), None, false).await;
        bench.fill(&root_of(&v), n, 64).await;
        let mut times = Vec::new();
        let mut requests = 0;
        for r in 0..a.rounds {
            bench.proxy.seen.clear();
            let start = Instant::now();
            bench.snapshot(&format!("snap-{n}-{r}"), &v.volume_id).await;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            requests = bench.proxy.seen.all().len();
        }
        // The size is measured in the background: wait for its listing to end.
        tokio::time::sleep(Duration::from_secs(2) + Duration::from_millis(n as u64 / 2)).await;
        let listing = bench
            .proxy
            .seen
            .all()
            .iter()
            .filter(|r| r.contains("versions"))
            .count();
        println!("| {n} | {:.1} | {requests} | {listing} |", median(times));
    }

    for (label, n, size) in [
        ("small files", a.small, 4096usize),
        ("large files", a.large, a.large_mib << 20),
    ] {
        let source = bench
            .volume(&format!("pvc-src-{}", label.replace(' ', "-")), None, false)
            .await;
        let src_prefix = root_of(&source);
        eprintln!("filling {n} {label} of {size} bytes...");
        bench.fill(&src_prefix, n, size).await;
        let snap = bench
            .snapshot(
                &format!("snap-{}", label.replace(' ', "-")),
                &source.volume_id,
            )
            .await;
        let from = Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Snapshot(
                csi::volume_content_source::SnapshotSource {
                    snapshot_id: snap.snapshot_id.clone(),
                },
            )),
        });
        let mib = (n * size) as f64 / (1 << 20) as f64;
        let mut rows: Vec<(f64, f64, f64)> = Vec::new();
        for r in 0..a.rounds {
            let mut raw_s = 0.0;
            let mut ours = [0.0f64; 2];
            let order: Vec<usize> = if r % 2 == 0 {
                vec![0, 1, 2]
            } else {
                vec![2, 1, 0]
            };
            for step in order {
                let start = Instant::now();
                match step {
                    0 => {
                        let copied = bench
                            .raw_copy(
                                &src_prefix,
                                &format!("k8s/raw-{label}-{r}/").replace(' ', "-"),
                            )
                            .await;
                        assert_eq!(copied, n);
                        raw_s = start.elapsed().as_secs_f64();
                    }
                    s => {
                        let own_gid = s == 2;
                        let name = format!("pvc-{}-{r}-{own_gid}", label.replace(' ', "-"));
                        bench.volume(&name, from.clone(), own_gid).await;
                        ours[s - 1] = start.elapsed().as_secs_f64();
                    }
                }
            }
            rows.push((raw_s, ours[0], ours[1]));
        }
        println!(
            "\n## Restore of {n} {label} ({size} bytes each, {mib:.0} MiB; {PARALLEL} copies in flight; {} rounds)\n",
            a.rounds
        );
        println!(
            "| | raw CopyObject | restore, same owner | restore, own GID (metadata rewritten) |"
        );
        println!("| --- | ---: | ---: | ---: |");
        let per = |f: fn(&(f64, f64, f64)) -> f64| median(rows.iter().map(f).collect());
        let raw = per(|r| r.0);
        let same = per(|r| r.1);
        let own = per(|r| r.2);
        println!(
            "| objects/s | {:.1} | {:.1} | {:.1} |",
            n as f64 / raw,
            n as f64 / same,
            n as f64 / own
        );
        println!(
            "| MiB/s | {:.1} | {:.1} | {:.1} |",
            mib / raw,
            mib / same,
            mib / own
        );
        println!(
            "| ratio to raw (median of rounds) | 1.00x | {:.2}x | {:.2}x |",
            median(rows.iter().map(|r| r.0 / r.1).collect()),
            median(rows.iter().map(|r| r.0 / r.2).collect())
        );
    }
    drop(moto);
    Ok(())
}
