//! Snapshots and restores against moto (a versioned bucket), through the controller's own code:
//!
//! - CreateSnapshot of volumes of 10, 1,000 and 10,000 objects: time and S3 requests (counted
//!   by a proxy in front of moto). They must stay flat: a snapshot copies nothing.
//! - Restore throughput (objects/s, MiB/s) of CreateVolume from a snapshot against raw
//!   requests doing the same work with the same parallelism on the same server (list the
//!   versions under the source, CopyObject each with its version id), for small files and for
//!   large ones, with the new volume's owner equal to the source's (copies only) and with its
//!   own GID (each object's metadata is read and rewritten). Each phase has its own bucket and
//!   every destination is purged (all versions) after its step, so each step meets the same
//!   bucket: moto lists versions by scanning the whole bucket. Rounds rotate which goes first;
//!   the ratio is the median of each round's.
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
    cloud: Arc<AwsS3Files>,
    moto_url: String,
    proxy: counting::CountingProxy,
}

/// A file system on a bucket of its own.
struct Fs {
    id: String,
    bucket: String,
}

impl Bench {
    async fn file_system(&self, bucket: &str) -> Fs {
        s3files_csi::plain_http::ensure_versioned_bucket(&self.moto_url, bucket)
            .await
            .expect("bucket");
        let fs = self
            .cloud
            .create_file_system(&NewFileSystem {
                bucket_arn: format!("arn:aws:s3:::{bucket}"),
                prefix: Some("k8s/".into()),
                role_arn: "arn:aws:iam::123456789012:role/bench".into(),
                client_token: None,
                tags: vec![],
            })
            .await
            .expect("file system");
        self.cloud
            .create_mount_target(&fs.id, "subnet-0aaaaaaaaaaaaaaa1")
            .await
            .expect("mount target");
        Fs {
            id: fs.id,
            bucket: bucket.to_owned(),
        }
    }

    async fn volume(
        &self,
        fs: &Fs,
        name: &str,
        source: Option<csi::VolumeContentSource>,
        own_gid: bool,
    ) -> csi::Volume {
        let mut parameters: std::collections::HashMap<String, String> = [
            ("provisioningMode".to_owned(), "s3files-ap".to_owned()),
            ("fileSystemId".to_owned(), fs.id.clone()),
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

    /// Waits until the snapshot's size is measured (its listing in the background is over).
    async fn measured(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let listed = Controller::list_snapshots(
                &self.controller,
                tonic::Request::new(csi::ListSnapshotsRequest {
                    snapshot_id: id.into(),
                    ..Default::default()
                }),
            )
            .await
            .expect("list")
            .into_inner();
            if listed
                .entries
                .first()
                .and_then(|e| e.snapshot.as_ref())
                .is_some_and(|s| s.size_bytes > 0)
            {
                return;
            }
            assert!(Instant::now() < deadline, "snapshot {id} never measured");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Puts `n` objects of `size` bytes under `prefix`, owned (in their metadata) by 1000:1000.
    async fn fill(&self, bucket: &str, prefix: &str, n: usize, size: usize) {
        let body = bytes::Bytes::from(vec![b'x'; size]);
        futures_util::stream::iter(0..n)
            .map(|i| {
                let (client, body) = (self.client.clone(), body.clone());
                let key = format!("{prefix}d{:02}/f{i:05}", i % 20);
                async move {
                    client
                        .put_object()
                        .bucket(bucket)
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

    /// Every version and delete marker under `prefix`: (key, version id).
    async fn all_versions(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        let mut all = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let out = self
                .client
                .list_object_versions()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker)
                .set_version_id_marker(version_marker)
                .send()
                .await
                .expect("list versions");
            all.extend(out.versions().iter().map(|v| {
                (
                    v.key().unwrap_or_default().to_owned(),
                    v.version_id().unwrap_or("null").to_owned(),
                )
            }));
            all.extend(out.delete_markers().iter().map(|v| {
                (
                    v.key().unwrap_or_default().to_owned(),
                    v.version_id().unwrap_or("null").to_owned(),
                )
            }));
            if out.is_truncated() != Some(true) {
                return all;
            }
            key_marker = out.next_key_marker().map(str::to_owned);
            version_marker = out.next_version_id_marker().map(str::to_owned);
        }
    }

    /// Deletes every version under `prefix` for good, so the next step meets the same bucket.
    async fn purge(&self, bucket: &str, prefix: &str) {
        let all = self.all_versions(bucket, prefix).await;
        futures_util::stream::iter(all)
            .map(|(key, version)| {
                let client = self.client.clone();
                async move {
                    client
                        .delete_object()
                        .bucket(bucket)
                        .key(key)
                        .version_id(version)
                        .send()
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await
            .expect("purge");
    }

    /// Raw: list the versions under `from` and CopyObject each (by version id) to `to`,
    /// `PARALLEL` at a time. The objects have one version each, so every version is copied.
    /// With `rewrite`, each object's metadata is read (HEAD) and written again with the copy
    /// (MetadataDirective REPLACE), as a restore that changes owners must.
    async fn raw_copy(&self, bucket: &str, from: &str, to: &str, rewrite: bool) -> usize {
        let versions = self.all_versions(bucket, from).await;
        let n = versions.len();
        futures_util::stream::iter(versions)
            .map(|(k, version)| {
                let client = self.client.clone();
                let dest = format!("{to}{}", &k[from.len()..]);
                async move {
                    let mut copy = client
                        .copy_object()
                        .bucket(bucket)
                        .key(dest)
                        .copy_source(format!("{bucket}/{k}?versionId={version}"));
                    if rewrite {
                        let head = client
                            .head_object()
                            .bucket(bucket)
                            .key(&k)
                            .version_id(&version)
                            .send()
                            .await
                            .expect("head");
                        copy = copy
                            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
                            .set_metadata(head.metadata().cloned())
                            .set_content_type(head.content_type().map(str::to_owned));
                    }
                    copy.send().await.map(|_| ())
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
    while s3files_csi::plain_http::ensure_versioned_bucket(&moto_url, "bench-probe")
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
    let cloud = Arc::new(AwsS3Files::new(s3files(&url), None));
    let config = ControllerConfig {
        // The bench waits for each restore in one call.
        restore_wait: Duration::from_secs(3600),
        ..ControllerConfig::default()
    };
    let controller = ControllerService::new(cloud.clone(), None, config)
        .with_snapshots(Arc::new(S3Versions::new(s3(&proxy.url))), None);
    let bench = Bench {
        controller,
        client: s3(&moto_url),
        cloud,
        moto_url,
        proxy,
    };

    println!("## CreateSnapshot (moto, {} rounds)\n", a.rounds);
    println!(
        "| objects in the volume | CreateSnapshot, median (ms) | raw PUT + one-key LIST in the same bucket, median (ms) | S3 requests of the call | ListObjectVersions pages measuring the size afterwards |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for n in [10usize, 1000, 10_000] {
        let fs = bench.file_system(&format!("bench-snap-{n}")).await;
        let v = bench
            .volume(&fs, &format!("pvc-snap-{n}"), None, false)
            .await;
        bench.fill(&fs.bucket, &root_of(&v), n, 64).await;
        let (mut times, mut floors) = (Vec::new(), Vec::new());
        let (mut requests, mut listing) = (0, 0);
        for r in 0..a.rounds {
            let start = Instant::now();
            let key = format!("k8s/floor-{r}");
            bench
                .client
                .put_object()
                .bucket(&fs.bucket)
                .key(&key)
                .body(ByteStream::from_static(b"{}"))
                .send()
                .await?;
            bench
                .client
                .list_objects_v2()
                .bucket(&fs.bucket)
                .prefix(&key)
                .max_keys(1)
                .send()
                .await?;
            floors.push(start.elapsed().as_secs_f64() * 1000.0);
            bench.proxy.seen.clear();
            let start = Instant::now();
            let snap = bench.snapshot(&format!("snap-{n}-{r}"), &v.volume_id).await;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            requests = bench.proxy.seen.all().len();
            bench.measured(&snap.snapshot_id).await;
            listing = bench
                .proxy
                .seen
                .all()
                .iter()
                .filter(|r| r.contains("versions"))
                .count();
        }
        println!(
            "| {n} | {:.1} | {:.1} | {requests} | {listing} |",
            median(times),
            median(floors)
        );
    }

    for (label, n, size) in [
        ("small files", a.small, 4096usize),
        ("large files", a.large, a.large_mib << 20),
    ] {
        let slug = label.replace(' ', "-");
        let fs = bench.file_system(&format!("bench-{slug}")).await;
        let source = bench
            .volume(&fs, &format!("pvc-src-{slug}"), None, false)
            .await;
        let src_prefix = root_of(&source);
        eprintln!("filling {n} {label} of {size} bytes...");
        bench.fill(&fs.bucket, &src_prefix, n, size).await;
        let snap = bench
            .snapshot(&format!("snap-{slug}"), &source.volume_id)
            .await;
        bench.measured(&snap.snapshot_id).await;
        let from = Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Snapshot(
                csi::volume_content_source::SnapshotSource {
                    snapshot_id: snap.snapshot_id.clone(),
                },
            )),
        });
        let mib = (n * size) as f64 / (1 << 20) as f64;
        // Seconds per round: raw copy, raw HEAD + copy (REPLACE), ours same owner, ours own GID.
        let mut rows: Vec<[f64; 4]> = Vec::new();
        for r in 0..a.rounds {
            let mut t = [0.0f64; 4];
            let order: Vec<usize> = if r % 2 == 0 {
                vec![0, 1, 2, 3]
            } else {
                vec![3, 2, 1, 0]
            };
            for step in order {
                let start = Instant::now();
                let dest = if step < 2 {
                    let dest = format!("k8s/raw-{slug}-{r}-{step}/");
                    let copied = bench
                        .raw_copy(&fs.bucket, &src_prefix, &dest, step == 1)
                        .await;
                    assert_eq!(copied, n);
                    dest
                } else {
                    let own_gid = step == 3;
                    let name = format!("pvc-{slug}-{r}-{own_gid}");
                    root_of(&bench.volume(&fs, &name, from.clone(), own_gid).await)
                };
                t[step] = start.elapsed().as_secs_f64();
                bench.purge(&fs.bucket, &dest).await;
            }
            rows.push(t);
        }
        println!(
            "\n## Restore of {n} {label} ({size} bytes each, {mib:.0} MiB; {PARALLEL} copies in flight; {} rounds)\n",
            a.rounds
        );
        println!(
            "| | raw: list versions, CopyObject | restore, same owner | raw: list versions, HEAD + CopyObject (REPLACE) | restore, own GID (owner rewritten) |"
        );
        println!("| --- | ---: | ---: | ---: | ---: |");
        let med = |i: usize| median(rows.iter().map(|r| r[i]).collect());
        let ratio =
            |raw: usize, ours: usize| median(rows.iter().map(|r| r[raw] / r[ours]).collect());
        let (c, h, same, own) = (med(0), med(1), med(2), med(3));
        println!(
            "| objects/s | {:.1} | {:.1} | {:.1} | {:.1} |",
            n as f64 / c,
            n as f64 / same,
            n as f64 / h,
            n as f64 / own
        );
        println!(
            "| MiB/s | {:.1} | {:.1} | {:.1} | {:.1} |",
            mib / c,
            mib / same,
            mib / h,
            mib / own
        );
        println!(
            "| ratio to the raw column on its left (median of rounds) | 1.00x | {:.2}x | 1.00x | {:.2}x |",
            ratio(0, 2),
            ratio(1, 3)
        );
        println!(
            "| own GID against raw CopyObject alone | | | | {:.2}x |",
            ratio(0, 3)
        );
    }
    drop(moto);
    Ok(())
}
