//! `s3files-csi quickstart`: the whole driver on one machine, with no AWS account.
//!
//! Starts an emulator with a local bucket directory, a controller and a node plugin on
//! temporary sockets, creates a file system, provisions two volumes through CSI `CreateVolume`
//! as csi-provisioner would, publishes them through the local FUSE helper as kubelet would,
//! writes and reads files, shows the same bytes as objects in the bucket, then unpublishes,
//! deletes and cleans up, timing every step.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cloud::aws::AwsS3Files;
use crate::cloud::{NewFileSystem, S3Files};
use crate::controller::{ControllerConfig, ControllerService};
use crate::csi::{self, controller_client::ControllerClient, node_client::NodeClient};
use crate::emulator::faults::FaultConfig;
use crate::emulator::store::Settings;
use crate::emulator::{BucketStore, Config, Emulator};
use crate::identity::{IdentityService, Mode};
use crate::mount::linux::{LinuxMounter, MountHelper};
use crate::node::{NodeConfig, NodeService, NodeTopology};
use crate::server::{Endpoint, Listener, Services};

/// A step under way. On a terminal a spinner turns after its name while it runs longer than
/// [`SPIN_AFTER`] (waiting for a file system to become available, say), and is erased when
/// the step ends; elsewhere (CI logs) the line is printed plain.
struct Step {
    start: Instant,
    stop: Arc<AtomicBool>,
    spinner: Option<std::thread::JoinHandle<bool>>,
}

/// How long a step runs before the spinner shows.
const SPIN_AFTER: Duration = Duration::from_millis(250);
const SPIN_FRAMES: [char; 4] = ['|', '/', '-', '\\'];

fn step(name: &str) -> Step {
    use std::io::{IsTerminal, Write};
    print!("  {name} ... ");
    let _ = std::io::stdout().flush();
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = std::io::stdout().is_terminal().then(|| {
        let stop = stop.clone();
        std::thread::spawn(move || spin(&mut std::io::stdout(), &stop, SPIN_AFTER))
    });
    Step {
        start: Instant::now(),
        stop,
        spinner,
    }
}

/// Turns a spinner on `out` once `after` has passed, until `stop`; each frame is followed by a
/// backspace, so the cursor stays where the step's result goes. Returns whether it showed.
fn spin(out: &mut impl std::io::Write, stop: &AtomicBool, after: Duration) -> bool {
    let started = Instant::now();
    let mut shown = false;
    let mut frame = 0;
    while !stop.load(Ordering::SeqCst) {
        if started.elapsed() >= after {
            let _ = write!(out, "{}\u{8}", SPIN_FRAMES[frame % SPIN_FRAMES.len()]);
            let _ = out.flush();
            shown = true;
            frame += 1;
        }
        // Woken early when the step ends.
        std::thread::park_timeout(Duration::from_millis(80));
    }
    shown
}

fn done(step: Step) {
    let took = step.start.elapsed();
    step.stop.store(true, Ordering::SeqCst);
    if let Some(spinner) = step.spinner {
        spinner.thread().unpark();
        if spinner.join().unwrap_or(false) {
            // Erase the last frame.
            print!(" \u{8}");
        }
    }
    println!("ok ({:.0} ms)", took.as_secs_f64() * 1000.0);
}

fn sdk(url: &str) -> aws_sdk_s3files::Client {
    use aws_sdk_s3files::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_s3files::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new(
            "AKIDQUICKSTART",
            "quickstart",
            None,
            None,
            "quickstart",
        ))
        .build();
    aws_sdk_s3files::Client::from_conf(config)
}

async fn serve(
    services: Services,
    socket: &Path,
) -> anyhow::Result<(Endpoint, tokio::sync::oneshot::Sender<()>)> {
    let endpoint = Endpoint::Unix(socket.to_owned());
    let listener = Listener::bind(&endpoint).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(listener.serve(
        services,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    Ok((endpoint, stop))
}

/// Runs the quickstart; `keep` leaves the temporary directory for inspection.
pub async fn run(keep: bool) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the quickstart mounts file systems, so it must run as root (sudo s3files-csi quickstart)"
        );
    }
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) or run where FUSE is available"
        );
    }
    let total = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("s3files-quickstart-")
        .tempdir()?;
    let buckets = dir.path().join("buckets");
    println!(
        "s3files-csi quickstart (work directory {})",
        dir.path().display()
    );

    let t = step("starting the S3 Files emulator");
    let mut settings = Settings::for_region("us-east-1");
    settings.ready_after = 0.2;
    settings
        .subnet_zones
        .insert("subnet-0a1b2c3d4e5f60718".into(), "use1-az1".into());
    let emulator = Emulator::new(Config {
        settings,
        state_dir: None,
        buckets: BucketStore::Local {
            root: buckets.clone(),
        },
        faults: FaultConfig::default(),
        seed: None,
    })?;
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(emulator.clone().serve(
        "127.0.0.1:0".parse()?,
        std::future::pending(),
        move |a| {
            let _ = bound_tx.send(a);
        },
    ));
    let url = format!("http://{}", bound_rx.await?);
    done(t);

    let t = step("creating a file system and a mount target (waiting for available)");
    let cloud: Arc<dyn S3Files> = Arc::new(AwsS3Files::new(sdk(&url), None));
    let fs = cloud
        .create_file_system(&NewFileSystem {
            bucket_arn: "arn:aws:s3:::quickstart-bucket".into(),
            prefix: Some("k8s/".into()),
            role_arn: "arn:aws:iam::123456789012:role/s3files-quickstart".into(),
            client_token: None,
            tags: vec![("Name".into(), "quickstart".into())],
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cloud
            .create_mount_target(&fs.id, "subnet-0a1b2c3d4e5f60718")
            .await
        {
            Ok(_) => break,
            Err(crate::cloud::CloudError::Conflict { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    done(t);

    let t = step("starting the controller and node plugins");
    let controller = ControllerService::new(cloud.clone(), None, ControllerConfig::default());
    let (controller_endpoint, stop_controller) = serve(
        Services {
            identity: IdentityService::new("s3files.csi.dev".into(), Mode::Controller, vec![]),
            controller: Some(controller),
            node: None,
            metrics: None,
        },
        &dir.path().join("controller.sock"),
    )
    .await?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let helper = MountHelper {
        program: exe,
        leading_args: vec!["mount".into()],
        env: vec![
            ("AWS_ENDPOINT_URL_S3FILES".into(), url.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), "AKIDQUICKSTART".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "quickstart".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ],
    };
    let mounter = Arc::new(LinuxMounter {
        helper,
        mount_timeout: Duration::from_secs(60),
        unmount_timeout: Duration::from_secs(10),
        stat_timeout: Duration::from_secs(5),
        children: crate::process::Children::new(),
    });
    let node = NodeService::new(
        NodeConfig {
            node_id: "quickstart-node".into(),
            topology: NodeTopology {
                zone: Some("us-east-1a".into()),
                zone_id: Some("use1-az1".into()),
                region: Some("us-east-1".into()),
            },
            region: Some("us-east-1".into()),
            state_dir: dir.path().join("node-state"),
            memory_budget: None,
        },
        mounter,
    );
    let (node_endpoint, stop_node) = serve(
        Services {
            identity: IdentityService::new("s3files.csi.dev".into(), Mode::Node, vec![]),
            controller: None,
            node: Some(node),
            metrics: None,
        },
        &dir.path().join("node.sock"),
    )
    .await?;
    let mut controller = ControllerClient::new(crate::client::connect(&controller_endpoint).await?);
    let mut node = NodeClient::new(crate::client::connect(&node_endpoint).await?);
    done(t);

    let capability = csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    };
    let mut volumes = Vec::new();
    for name in ["pvc-quickstart-a", "pvc-quickstart-b"] {
        let t = step(&format!("CreateVolume {name}"));
        let response = controller
            .create_volume(csi::CreateVolumeRequest {
                name: name.into(),
                volume_capabilities: vec![capability.clone()],
                parameters: [
                    ("provisioningMode".to_owned(), "s3files-ap".to_owned()),
                    ("fileSystemId".to_owned(), fs.id.clone()),
                ]
                .into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let volume = response.volume.context("no volume in the answer")?;
        done(t);
        println!("      volume id {}", volume.volume_id);
        volumes.push((name, volume));
    }

    for (name, volume) in &volumes {
        let target = dir.path().join("pods").join(name).join("mount");
        std::fs::create_dir_all(target.parent().context("parent")?)?;
        let t = step(&format!(
            "NodePublishVolume {name} (mount -t s3files through the FUSE helper)"
        ));
        node.node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: volume.volume_id.clone(),
            target_path: target.display().to_string(),
            volume_capability: Some(capability.clone()),
            volume_context: volume.volume_context.clone(),
            ..Default::default()
        })
        .await?;
        done(t);
        let t = step(&format!("writing and reading {name}/hello.txt"));
        let text = format!("hello from {name}\n");
        tokio::fs::write(target.join("hello.txt"), &text).await?;
        let back = tokio::fs::read_to_string(target.join("hello.txt")).await?;
        if back != text {
            bail!("read back {back:?}, wrote {text:?}");
        }
        done(t);
        let root = volume
            .volume_context
            .get("accessPointRoot")
            .cloned()
            .unwrap_or_default();
        let object = buckets
            .join("quickstart-bucket")
            .join("k8s")
            .join(root.trim_start_matches('/'))
            .join("hello.txt");
        let stored = tokio::fs::read_to_string(&object)
            .await
            .with_context(|| format!("reading {}", object.display()))?;
        println!(
            "      object s3://quickstart-bucket/k8s{root}/hello.txt holds {:?}",
            stored.trim_end()
        );
        let t = step(&format!("NodeUnpublishVolume {name}"));
        node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: volume.volume_id.clone(),
            target_path: target.display().to_string(),
        })
        .await?;
        done(t);
    }

    for (name, volume) in &volumes {
        let t = step(&format!("DeleteVolume {name}"));
        controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: volume.volume_id.clone(),
                ..Default::default()
            })
            .await?;
        done(t);
    }
    let t = step("stopping the plugins");
    let _ = stop_controller.send(());
    let _ = stop_node.send(());
    done(t);
    if keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
    println!(
        "quickstart finished in {:.1} s: two volumes provisioned, mounted, written, read and deleted",
        total.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spinner_shows_only_for_slow_steps_and_returns_the_cursor() {
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                stop.store(true, Ordering::SeqCst);
            })
        };
        let mut out = Vec::new();
        assert!(
            spin(&mut out, &stop, Duration::from_millis(100)),
            "a slow step spins"
        );
        stopper.join().expect("stopper");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.len() >= 4, "several frames: {text:?}");
        // Every frame is followed by a backspace.
        let chars: Vec<char> = text.chars().collect();
        for pair in chars.chunks(2) {
            assert!(SPIN_FRAMES.contains(&pair[0]), "{text:?}");
            assert_eq!(pair.get(1), Some(&'\u{8}'), "{text:?}");
        }

        let quick = AtomicBool::new(true);
        let mut out = Vec::new();
        assert!(!spin(&mut out, &quick, Duration::from_millis(100)));
        assert!(out.is_empty(), "a quick step prints nothing");
    }
}
