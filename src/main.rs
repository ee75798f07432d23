//! The `s3files-csi` binary: parse the command line, start logging, run the chosen role.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use s3files_csi::cli::{
    Cli, Command, ControllerArgs, EmulatorArgs, HealthArgs, MountArgs, NodeArgs, ServeArgs,
};
use s3files_csi::node::k8s;
use std::sync::Arc;
use tracing::info;

use s3files_csi::cloud::aws::{AwsS3Files, ClientOptions};
use s3files_csi::cloud::health::{CloudMonitor, ReachabilityEvents};
use s3files_csi::cloud::{Observed, S3Files};
use s3files_csi::controller::events::PodEvents;
use s3files_csi::controller::terms::{LeaseTerms, TermSource, provisioner_lease_name};
use s3files_csi::controller::{ControllerConfig, ControllerService};
use s3files_csi::data::{DataLocation, DataStore, ObjectData};
use s3files_csi::emulator::faults::FaultConfig;
use s3files_csi::emulator::store::Settings;
use s3files_csi::emulator::{BucketStore, Config as EmulatorConfig, Emulator};
use s3files_csi::identity::ReadinessCheck;
use s3files_csi::identity::{IdentityService, Mode, validate_driver_name};
use s3files_csi::metrics::Metrics;
use s3files_csi::mount::linux::{LinuxMounter, MountHelper};
use s3files_csi::mount::{Mounter, options};
use s3files_csi::node::efs_utils::{self, EfsUtilsPaths, MemoryBudget, ProxyMemory};
use s3files_csi::node::watchdog::{Watchdog, WatchdogConfig};
use s3files_csi::node::{HelperReadiness, NodeConfig, NodeService, NodeTopology, validate_node_id};
use s3files_csi::process::{Children, become_subreaper, reap_forever};
use s3files_csi::server::{Listener, Services, shutdown_signal};
use s3files_csi::{client, telemetry};

/// The command line. Installed as `/sbin/mount.s3files` (a link to this binary), it is the
/// `mount` subcommand with mount(8)'s helper calling convention: `mount.s3files SOURCE TARGET
/// [-s] [-f] [-n] [-v] [-o OPTIONS]`; the sloppy, fake, no-mtab and verbose flags do not apply.
fn command_line() -> Cli {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_os_string());
    if invoked_as.as_deref() == Some(std::ffi::OsStr::new("mount.s3files")) {
        let rest = argv
            .drain(1..)
            .filter(|a| !matches!(a.to_str(), Some("-s" | "-f" | "-n" | "-v")));
        let head = ["s3files-csi", "mount"].map(std::ffi::OsString::from);
        return Cli::parse_from(head.into_iter().chain(rest));
    }
    Cli::parse()
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = command_line();
    match cli.command {
        // The quickstart prints its own steps; the plugins it runs inside log warnings only,
        // unless RUST_LOG asks for more.
        Command::Quickstart { .. } => telemetry::init_with_default(cli.log.log_format, "warn"),
        _ => telemetry::init(cli.log.log_format),
    }
    match run(cli.command).await {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Controller(args) => {
            validate_driver_name(&args.serve.driver_name).map_err(anyhow::Error::msg)?;
            let region = controller_region(args.cloud.region.as_deref()).await?;
            info!(%region, "AWS region");
            let options = ClientOptions {
                region: Some(region.clone()),
                endpoint_url: args.cloud.s3files_endpoint.clone(),
                max_attempts: args.cloud.api_max_attempts,
                rate_limit: (args.cloud.api_rate_limit > 0.0).then_some(args.cloud.api_rate_limit),
                adaptive: args.cloud.api_retry_mode == "adaptive",
                initial_backoff: args.cloud.api_initial_backoff,
                attempt_timeout: args.cloud.api_attempt_timeout,
            };
            let metrics = start_metrics(&args.serve);
            let sdk = AwsS3Files::from_env(&options).await;
            let cloud: Arc<dyn S3Files> = match &metrics {
                Some(m) => Arc::new(Observed::new(sdk, m.clone())),
                None => Arc::new(sdk),
            };
            let data = data_store(args.data_store.as_deref(), &region)?;
            let config = ControllerConfig {
                cluster_tag: args.cluster_tag.clone(),
                extra_tags: args.tags.clone(),
                ready_timeout: args.ready_timeout,
                gid_settle: args.gid_settle,
                restore_wait: args.restore_wait,
                ..ControllerConfig::default()
            };
            let terms = leader_lease(&args).await;
            // Reachability of the API is watched in the background and reported; it never
            // decides liveness (Probe stays local).
            let events: Option<Arc<dyn ReachabilityEvents>> = match kube_client("auto").await {
                Ok(Some(client)) => PodEvents::from_env(client).map(|e| Arc::new(e) as _),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "no Kubernetes Events about the S3 Files API");
                    None
                }
            };
            let monitor = CloudMonitor::start(
                cloud.clone(),
                args.cloud_check_interval,
                metrics.clone(),
                events,
            );
            let mut controller = ControllerService::with_terms(cloud.clone(), data, config, terms);
            if let Some(versions) = versions_store(args.data_store.as_deref(), &region).await? {
                controller = controller.with_snapshots(versions, metrics.clone());
            }
            let identity =
                IdentityService::new(args.serve.driver_name.clone(), Mode::Controller, vec![])
                    .with_detail(monitor);
            let services = Services {
                identity,
                controller: Some(controller),
                node: None,
                metrics,
            };
            serve(&args.serve, services).await
        }
        Command::Node(args) => {
            validate_node_id(&args.node_id).map_err(anyhow::Error::msg)?;
            validate_driver_name(&args.serve.driver_name).map_err(anyhow::Error::msg)?;
            for (flag, value, check) in [
                (
                    "--region",
                    &args.region,
                    options::check_region as fn(&str) -> Result<(), String>,
                ),
                ("--zone-id", &args.zone_id, options::check_zone_id),
            ] {
                if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                    check(v).map_err(|why| anyhow::anyhow!("{flag}: {why}"))?;
                }
            }
            let children = Children::new();
            if args.reap_orphans {
                match become_subreaper() {
                    Ok(()) => info!("reaping orphaned processes (child subreaper)"),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot become a child subreaper; orphans are reaped only when this is PID 1")
                    }
                }
                tokio::spawn(reap_forever(children.clone()));
            }
            let helper = match &args.mount_helper {
                Some(path) => MountHelper::program(path.clone()),
                None => MountHelper::system(),
            };
            let mounter: Arc<dyn Mounter> = Arc::new(LinuxMounter {
                helper,
                mount_timeout: args.mount_timeout,
                unmount_timeout: args.unmount_timeout,
                stat_timeout: std::time::Duration::from_secs(5),
                children: children.clone(),
            });
            let efs_paths = EfsUtilsPaths {
                config_dir: args.efs_utils_config_dir.clone(),
                static_dir: args.efs_utils_static_dir.clone(),
                overrides_dir: args.efs_utils_overrides.clone(),
                log_dir: Some(args.efs_utils_log_dir.clone()),
            };
            efs_utils::prepare(&efs_paths).context("preparing amazon-efs-utils' configuration")?;
            let memory_budget = if args.proxy_memory_budget > 0 {
                let per_mount = ProxyMemory::from_config(&efs_paths.config_dir)
                    .context("reading amazon-efs-utils' proxy settings")?;
                info!(
                    budget_mib = args.proxy_memory_budget,
                    per_mount_mib = per_mount.of_mount(&[]),
                    "efs-proxy memory budget"
                );
                Some(MemoryBudget {
                    per_mount,
                    budget_mib: args.proxy_memory_budget,
                })
            } else {
                None
            };
            let kube = kube_client(&args.kubernetes).await?;
            let topology = resolve_topology(&args, kube.clone()).await;
            // Volumes are placed by zone id (the controller's topology), and mount.s3files needs
            // it as azid=: a node without one could serve no pod, so it does not start.
            if topology.zone_id.is_none() {
                bail!(
                    "this node's availability zone id is unknown: label the Node {} (EKS does), pass --zone-id (NODE_ZONE_ID), or turn on --imds-fallback (chart value node.imdsFallback)",
                    s3files_csi::controller::TOPOLOGY_ZONE_ID_KEY
                );
            }
            info!(zone = ?topology.zone, zone_id = ?topology.zone_id, region = ?topology.region, "node topology");
            let config = NodeConfig {
                node_id: args.node_id.clone(),
                region: topology.region.clone(),
                topology,
                state_dir: args.state_dir.clone(),
                memory_budget,
            };
            let readiness: Arc<dyn ReadinessCheck> = Arc::new(HelperReadiness(mounter.clone()));
            let identity =
                IdentityService::new(args.serve.driver_name.clone(), Mode::Node, vec![readiness]);
            let services = Services {
                identity,
                controller: None,
                node: Some(NodeService::new(config, mounter)),
                metrics: start_metrics(&args.serve),
            };
            let listener = Listener::bind(&args.serve.endpoint).await?;
            let watchdog = watchdog_program(&args.efs_watchdog)?
                .map(|program| Watchdog::start(WatchdogConfig::new(program), children.clone()));
            // Only a plugin that is serving lets pods onto the node.
            if let Some(client) = kube {
                tokio::spawn(k8s::remove_taint_until_done(client, args.node_id.clone()));
            }
            let served = listener
                .serve(services, shutdown_signal(), args.serve.shutdown_grace)
                .await;
            // The watchdog goes last: calls in flight may still have been mounting.
            if let Some(w) = watchdog {
                w.stop().await;
            }
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Health(args) => health(args).await,
        Command::Emulator(args) => emulator(args).await,
        Command::Mount(args) => mount(args).await,
        Command::Quickstart { keep } => {
            s3files_csi::quickstart::run(keep).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The watchdog to supervise, from `--efs-watchdog`: `auto` runs the installed one if any.
fn watchdog_program(setting: &str) -> anyhow::Result<Option<std::path::PathBuf>> {
    const NAME: &str = "amazon-efs-mount-watchdog";
    match setting {
        "off" => Ok(None),
        "auto" => {
            let path = std::env::var_os("PATH").unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            });
            let found = std::env::split_paths(&path)
                .map(|d| d.join(NAME))
                .find(|p| p.is_file());
            if found.is_none() {
                info!("{NAME} is not installed; not supervising it (--efs-watchdog=auto)");
            }
            Ok(found)
        }
        path => {
            let path = std::path::PathBuf::from(path);
            if !path.is_file() {
                bail!(
                    "--efs-watchdog {}: no such file (use auto, off or a path)",
                    path.display()
                );
            }
            Ok(Some(path))
        }
    }
}

/// The leadership terms from `--leader-lease`. A Lease that cannot be reached is not fatal:
/// every GID is then verified.
async fn leader_lease(args: &ControllerArgs) -> Option<Box<dyn TermSource>> {
    let (namespace, name) = args.leader_lease.clone()?;
    let name = name.unwrap_or_else(|| provisioner_lease_name(&args.serve.driver_name));
    match kube_client("on").await {
        Ok(Some(client)) => {
            info!(lease = %format!("{namespace}/{name}"), "leadership terms from csi-provisioner's Lease");
            Some(Box::new(LeaseTerms::new(client, &namespace, &name)))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no Kubernetes API for --leader-lease: every new access point's GID is verified");
            None
        }
    }
}

/// A Kubernetes client when `--kubernetes` asks for one.
async fn kube_client(mode: &str) -> anyhow::Result<Option<kube::Client>> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("KUBECONFIG").is_some();
    match (mode, in_cluster) {
        ("off", _) | ("auto", false) => Ok(None),
        _ => Ok(Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?,
        )),
    }
}

/// The node's zone and region: flags first, then the Node's labels, then (opt-in) instance
/// metadata. What is still unknown is said once, loudly: mount.s3files then asks instance
/// metadata itself, which pods on EKS often cannot reach.
async fn resolve_topology(args: &NodeArgs, kube: Option<kube::Client>) -> NodeTopology {
    let mut topology = NodeTopology {
        zone: args.zone.clone(),
        zone_id: args.zone_id.clone(),
        // An empty AWS_REGION is no region.
        region: args.region.clone().filter(|r| !r.is_empty()),
    };
    let complete = |t: &NodeTopology| t.zone.is_some() && t.zone_id.is_some() && t.region.is_some();
    if !complete(&topology)
        && let Some(client) = kube
    {
        match k8s::node_topology(client, &args.node_id).await {
            Ok(found) => {
                topology.zone = topology.zone.or(found.zone);
                topology.zone_id = topology.zone_id.or(found.zone_id);
                topology.region = topology.region.or(found.region);
            }
            Err(e) => {
                tracing::warn!(node = %args.node_id, error = %e, "could not read the Node's zone labels")
            }
        }
    }
    if !complete(&topology) && args.imds_fallback {
        let imds = aws_config::imds::Client::builder().build();
        for (slot, path) in [
            (
                &mut topology.zone,
                "/latest/meta-data/placement/availability-zone",
            ),
            (
                &mut topology.zone_id,
                "/latest/meta-data/placement/availability-zone-id",
            ),
            (&mut topology.region, "/latest/meta-data/placement/region"),
        ] {
            if slot.is_none() {
                *slot = imds.get(path).await.ok().map(String::from);
            }
        }
    }
    if topology.region.is_none() {
        tracing::warn!(
            node = %args.node_id,
            "the node's region is unknown, so mounts pass no region= and mount.s3files must ask instance metadata; set the chart's region value (--region / AWS_REGION) or label the Node topology.kubernetes.io/region"
        );
    }
    topology
}

/// The controller's region: `--region`, else the SDK's chain (AWS_REGION, the profile,
/// instance metadata). Both the S3 Files client and the data store use it; with none the
/// controller does not start, rather than guess us-east-1 (EKS Pod Identity sets no region).
async fn controller_region(flag: Option<&str>) -> anyhow::Result<String> {
    let region = match flag.filter(|r| !r.is_empty()) {
        Some(r) => Some(r.to_owned()),
        None => aws_config::meta::region::RegionProviderChain::default_provider()
            .region()
            .await
            .map(|r| r.to_string()),
    };
    match region {
        Some(r) => {
            options::check_region(&r).map_err(|why| anyhow::anyhow!("region: {why}"))?;
            Ok(r)
        }
        None => bail!(
            "the controller cannot find its AWS region (no --region, AWS_REGION, profile or instance metadata); set the chart's region value"
        ),
    }
}

/// The data store for `onDelete: delete`, from `--data-store`, in the controller's region.
fn data_store(spec: Option<&str>, region: &str) -> anyhow::Result<Option<Arc<dyn DataStore>>> {
    let Some(spec) = spec else { return Ok(None) };
    let location = DataLocation::parse(spec).map_err(anyhow::Error::msg)?;
    Ok(Some(Arc::new(
        ObjectData::new(location).with_region(Some(region.to_owned())),
    )))
}

/// Object versions for snapshots and clones, when `--data-store` is on S3.
async fn versions_store(
    spec: Option<&str>,
    region: &str,
) -> anyhow::Result<Option<Arc<dyn s3files_csi::data::versions::Versions>>> {
    let Some(spec) = spec else { return Ok(None) };
    match DataLocation::parse(spec).map_err(anyhow::Error::msg)? {
        DataLocation::S3 { endpoint } => Ok(Some(Arc::new(
            s3files_csi::data::versions::S3Versions::from_env(endpoint.as_deref(), Some(region))
                .await,
        ))),
        DataLocation::Local { .. } => Ok(None),
    }
}

async fn mount(args: MountArgs) -> anyhow::Result<ExitCode> {
    use s3files_csi::fuse::helper;
    // The mount table names targets by absolute path, and the daemon runs elsewhere: a
    // relative target would mount but never be seen as mounted.
    let target = std::fs::canonicalize(&args.target)
        .with_context(|| format!("mount point {}", args.target.display()))?;
    let args = MountArgs { target, ..args };
    let request = helper::parse(&args.source, &args.target, args.options.as_deref())?;
    if args.foreground {
        helper::serve(request, args.storage).await?;
    } else {
        let mut forward = vec![args.source.clone(), args.target.display().to_string()];
        if let Some(o) = &args.options {
            forward.extend(["-o".to_owned(), o.clone()]);
        }
        if let Some(s) = &args.storage {
            forward.extend(["--storage".to_owned(), s.clone()]);
        }
        let mut all = vec!["mount".to_owned()];
        all.extend(forward);
        helper::daemonize(&all, &args.target, &args.log_file).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn emulator(args: EmulatorArgs) -> anyhow::Result<ExitCode> {
    let presets = args.preset_file_system.clone();
    let bucket_endpoint = args.bucket_endpoint.clone();
    let config = emulator_config(args)?;
    let listen = config.1;
    let emu = Emulator::new(config.0)?;
    for (id, bucket) in &presets {
        if let Some(endpoint) = &bucket_endpoint {
            let name = s3files_csi::data::bucket_name(bucket)?;
            // The object store may still be starting (a pod next to this one): retry a while.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                match s3files_csi::plain_http::ensure_versioned_bucket(endpoint, name).await {
                    Ok(()) => break,
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::info!(error = %format!("{e:#}"), "waiting for the object store");
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        emu.preset_file_system(id, bucket)?;
    }
    emu.serve(listen, shutdown_signal(), |_| {}).await?;
    Ok(ExitCode::SUCCESS)
}

fn emulator_config(args: EmulatorArgs) -> anyhow::Result<(EmulatorConfig, std::net::SocketAddr)> {
    let mut settings = Settings::for_region(&args.region);
    settings.account_id = args.account_id;
    if !args.zone_ids.is_empty() {
        settings.zone_ids = args.zone_ids;
    }
    settings.subnet_zones = args.subnet_zone.into_iter().collect();
    settings.ready_after = args.ready_after.as_secs_f64();
    settings.max_file_systems = args.max_file_systems;
    settings.max_access_points_per_file_system = args.max_access_points;
    let mut faults = FaultConfig::default();
    faults.default.throttle_rate = args.throttle_rate;
    faults.default.error_rate = args.error_rate;
    faults.default.drop_rate = args.drop_rate;
    faults.default.latency_ms = args.latency_ms;
    for (op, rate) in args.rate_limit {
        let rate: f64 = rate
            .parse()
            .with_context(|| format!("--rate-limit {op}={rate}: not a number"))?;
        if op == "*" {
            faults.default.rate_limit = Some(rate);
        } else {
            let mut spec = faults.default.clone();
            spec.rate_limit = Some(rate);
            faults.operations.insert(op, spec);
        }
    }
    let buckets = match args.bucket_endpoint {
        Some(endpoint) => BucketStore::S3 { endpoint },
        None => BucketStore::Local {
            root: args.bucket_dir,
        },
    };
    let config = EmulatorConfig {
        settings,
        state_dir: args.state_dir,
        buckets,
        faults,
        seed: args.seed,
    };
    Ok((config, args.listen))
}

/// Starts the metrics endpoint when `--metrics-address` is set.
fn start_metrics(args: &ServeArgs) -> Option<Arc<Metrics>> {
    let addr = args.metrics_address?;
    let metrics = Metrics::new();
    let serving = metrics.clone();
    tokio::spawn(async move {
        if let Err(e) = serving.serve(addr).await {
            tracing::error!(%addr, "metrics endpoint failed: {e:#}");
        }
    });
    Some(metrics)
}

async fn serve(args: &ServeArgs, services: Services) -> anyhow::Result<ExitCode> {
    let listener = Listener::bind(&args.endpoint).await?;
    listener
        .serve(services, shutdown_signal(), args.shutdown_grace)
        .await?;
    Ok(ExitCode::SUCCESS)
}

async fn health(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let health = client::wait_ready(&args.endpoint, args.wait)
        .await
        .with_context(|| format!("no CSI plugin answered at {}", args.endpoint))?;
    println!("{} {} ready={}", health.name, health.version, health.ready);
    if let Some(detail) = &health.detail {
        println!("{detail}");
    }
    if !health.ready {
        let reason = health.reason.unwrap_or_else(|| "no reason given".into());
        bail!("plugin at {} is not ready: {reason}", args.endpoint);
    }
    Ok(ExitCode::SUCCESS)
}
