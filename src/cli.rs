//! The command line: one binary, one subcommand per role.
//!
//! Every flag has an environment fallback where Kubernetes manifests usually set one
//! (`CSI_ENDPOINT`, `NODE_ID`...). The parsed values are plain structs passed down; nothing
//! here is global.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::server::Endpoint;
use crate::telemetry::LogFormat;

/// Default CSI endpoint, as mounted into the driver containers.
pub const DEFAULT_ENDPOINT: &str = "unix:///csi/csi.sock";
/// Default CSI driver name (the `provisioner` of StorageClasses).
pub const DEFAULT_DRIVER_NAME: &str = "s3files.csi.dev";

/// Kubernetes CSI driver for Amazon S3 Files.
#[derive(Debug, Parser)]
#[command(
    name = "s3files-csi",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// The roles of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the CSI controller plugin (Identity + Controller services).
    Controller(ControllerArgs),
    /// Run the CSI node plugin (Identity + Node services) on a Kubernetes node.
    Node(NodeArgs),
    /// Ask a running plugin for its identity and readiness; exit 0 only when it is ready.
    Health(HealthArgs),
    /// Serve a local emulator of the S3 Files API (for tests, CI and the quickstart).
    Emulator(EmulatorArgs),
    /// Mount an access point over FUSE: a mount.s3files-compatible helper for the local data plane.
    Mount(MountArgs),
    /// Run the whole driver on this machine against an emulator: provision, mount, write, clean up.
    Quickstart {
        /// Keep the temporary directory (bucket data, sockets) for inspection.
        #[arg(long)]
        keep: bool,
    },
}

/// Logging flags, accepted before or after the subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log line format; the level filter comes from RUST_LOG (default: info).
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Flags of every role that serves CSI.
#[derive(Debug, Args)]
#[command(next_help_heading = "CSI server")]
pub struct ServeArgs {
    /// Where to serve gRPC: unix:///path/csi.sock, or tcp://127.0.0.1:PORT for tests.
    #[arg(long, env = "CSI_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: Endpoint,

    /// The CSI driver name, as StorageClasses name it in `provisioner`.
    #[arg(long, env = "DRIVER_NAME", default_value = DEFAULT_DRIVER_NAME)]
    pub driver_name: String,

    /// Serve Prometheus metrics at http://ADDRESS/metrics, e.g. 0.0.0.0:8095 (off by default).
    #[arg(long, env = "METRICS_ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,

    /// Seconds that in-flight calls may run after SIGTERM before the process exits.
    #[arg(long, default_value = "25", value_parser = parse_seconds)]
    pub shutdown_grace: Duration,
}

/// `s3files-csi controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub cloud: CloudArgs,

    /// Tag on every access point the driver creates: KEY=VALUE. IAM policies can require it.
    #[arg(long, default_value = "s3files.csi.dev/cluster=true", value_parser = parse_key_value, help_heading = "Provisioning")]
    pub cluster_tag: (String, String),

    /// Extra tags for every access point: KEY=VALUE, repeatable or comma-separated.
    #[arg(long, env = "S3FILES_TAGS", value_delimiter = ',', value_parser = parse_key_value, help_heading = "Provisioning")]
    pub tags: Vec<(String, String)>,

    /// Seconds CreateVolume waits for a new access point to become available.
    #[arg(long, default_value = "60", value_parser = parse_seconds, help_heading = "Provisioning")]
    pub ready_timeout: Duration,

    /// Seconds between background checks that the S3 Files API answers (reported as a metric,
    /// Events and a Probe detail; never a reason for liveness to fail).
    #[arg(long, default_value = "60", value_parser = parse_seconds, help_heading = "Provisioning")]
    pub cloud_check_interval: Duration,

    /// Where volume data lives for the controller: `s3` (the buckets through the S3 API),
    /// `s3:URL` (an S3-compatible endpoint) or `local:DIR` (bucket directories under DIR, for the
    /// emulator). Needed for StorageClasses with onDelete: delete; on S3 it also turns on
    /// snapshots and clones, which read object versions.
    #[arg(long, env = "S3FILES_DATA_STORE", help_heading = "Provisioning")]
    pub data_store: Option<String>,

    /// csi-provisioner's leader Lease, NAMESPACE or NAMESPACE/NAME (the name defaults to the
    /// one csi-provisioner derives from --driver-name). With it, GIDs drawn in a settled
    /// leadership term need no verification; without it, every new access point's GID is
    /// checked against a listing before the volume is returned.
    #[arg(long, value_parser = parse_lease, help_heading = "Provisioning")]
    pub leader_lease: Option<(String, Option<String>)>,

    /// Seconds after a leadership term begins during which new GIDs are still verified: the
    /// longest a create of the previous leader can take to land.
    #[arg(long, default_value = "120", value_parser = parse_seconds, help_heading = "Provisioning")]
    pub gid_settle: Duration,

    /// Seconds a CreateVolume from a snapshot or a volume waits for its copy before it answers
    /// Aborted with the progress; the copy continues and the CO's retry joins it.
    #[arg(long, default_value = "8", value_parser = parse_seconds, help_heading = "Provisioning")]
    pub restore_wait: Duration,
}

/// `NAMESPACE` or `NAMESPACE/NAME`, both DNS labels/subdomains as Kubernetes names them.
fn parse_lease(s: &str) -> Result<(String, Option<String>), String> {
    let (ns, name) = match s.split_once('/') {
        Some((ns, name)) => (ns, Some(name)),
        None => (s, None),
    };
    let label = |v: &str| {
        !v.is_empty()
            && v.len() <= 253
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !v.starts_with(['-', '.'])
            && !v.ends_with(['-', '.'])
    };
    if !label(ns) || name.is_some_and(|n| !label(n)) {
        return Err(format!(
            "{s:?} is not NAMESPACE or NAMESPACE/NAME (lower-case letters, digits, '-' and '.')"
        ));
    }
    Ok((ns.to_owned(), name.map(str::to_owned)))
}

/// How the driver reaches the S3 Files API.
#[derive(Debug, Args)]
#[command(next_help_heading = "S3 Files API")]
pub struct CloudArgs {
    /// AWS region (default: from the environment, AWS_REGION, or instance metadata).
    #[arg(long)]
    pub region: Option<String>,

    /// Endpoint of the S3 Files API, e.g. the emulator (default: AWS_ENDPOINT_URL_S3FILES or AWS).
    #[arg(long)]
    pub s3files_endpoint: Option<String>,

    /// Client-side limit on S3 Files API calls per second (0 for none).
    #[arg(long, default_value_t = 10.0)]
    pub api_rate_limit: f64,

    /// Attempts per API call.
    #[arg(long, default_value_t = 5)]
    pub api_max_attempts: u32,

    /// Retry mode: `adaptive` also slows the client after throttles; `standard` only backs off.
    #[arg(long, default_value = "adaptive", value_parser = ["adaptive", "standard"])]
    pub api_retry_mode: String,

    /// Seconds before the first retry; later ones back off exponentially with jitter.
    #[arg(long, default_value = "1", value_parser = parse_seconds)]
    pub api_initial_backoff: Duration,

    /// Seconds one API attempt may take before it is retried as a transient failure.
    #[arg(long, default_value = "20", value_parser = parse_seconds)]
    pub api_attempt_timeout: Duration,
}

/// `s3files-csi node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    /// This node's id, as kubelet knows it (set it from spec.nodeName).
    #[arg(long, env = "NODE_ID", help_heading = "Node")]
    pub node_id: String,

    /// The node's availability zone name, e.g. us-east-1a (topology.kubernetes.io/zone).
    #[arg(long, env = "NODE_ZONE", help_heading = "Node")]
    pub zone: Option<String>,

    /// The node's availability zone id, e.g. use1-az1; also passed to the helper as azid.
    #[arg(long, env = "NODE_ZONE_ID", help_heading = "Node")]
    pub zone_id: Option<String>,

    /// Region passed to the mount helper (default: the helper's own lookup).
    #[arg(long, env = "AWS_REGION", help_heading = "Node")]
    pub region: Option<String>,

    /// Mount helper: a mount.s3files-compatible program called as HELPER SOURCE TARGET -o OPTS
    /// (default: the system's `mount -t s3files`).
    #[arg(long, env = "S3FILES_MOUNT_HELPER", help_heading = "Node")]
    pub mount_helper: Option<std::path::PathBuf>,

    /// Seconds a mount helper may run before it is killed.
    #[arg(long, default_value = "120", value_parser = parse_seconds, help_heading = "Node")]
    pub mount_timeout: Duration,

    /// Seconds an unmount may take before the mount is detached lazily.
    #[arg(long, default_value = "30", value_parser = parse_seconds, help_heading = "Node")]
    pub unmount_timeout: Duration,

    /// Ask Kubernetes for this Node's zone labels and remove its not-ready taint: `auto` (when
    /// running in a cluster or KUBECONFIG is set), `on` or `off`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"], help_heading = "Node")]
    pub kubernetes: String,

    /// When the zone is still unknown, ask EC2 instance metadata (IMDSv2).
    #[arg(long, env = "S3FILES_IMDS_FALLBACK", help_heading = "Node")]
    pub imds_fallback: bool,

    /// amazon-efs-mount-watchdog to run and keep running: `auto` (the one on PATH, when
    /// installed: the production image), `off`, or a path.
    #[arg(
        long,
        env = "S3FILES_EFS_WATCHDOG",
        default_value = "auto",
        help_heading = "efs-utils"
    )]
    pub efs_watchdog: String,

    /// The directory amazon-efs-utils reads its configuration and keeps its TLS key in.
    #[arg(long, default_value = "/etc/amazon/efs", help_heading = "efs-utils")]
    pub efs_utils_config_dir: std::path::PathBuf,

    /// amazon-efs-utils' packaged configuration, laid into the config directory at start (the
    /// production image keeps it here; when absent nothing is copied).
    #[arg(
        long,
        default_value = "/usr/share/s3files-csi/efs-utils-static",
        help_heading = "efs-utils"
    )]
    pub efs_utils_static_dir: std::path::PathBuf,

    /// INI fragments (s3files-utils.conf, efs-utils.conf) whose keys are set over the packaged
    /// configuration at start (the chart's ConfigMap).
    #[arg(long, env = "S3FILES_EFS_UTILS_OVERRIDES", help_heading = "efs-utils")]
    pub efs_utils_overrides: Option<std::path::PathBuf>,

    /// amazon-efs-utils' log directory, made private (0700) at start when it exists.
    #[arg(
        long,
        default_value = "/var/log/amazon/efs",
        help_heading = "efs-utils"
    )]
    pub efs_utils_log_dir: std::path::PathBuf,

    /// MiB of the node container's memory that efs-proxy processes may take (0: no budget).
    /// Mounts beyond it lose the read-ahead cache, then direct S3 reads, then are refused.
    #[arg(long, default_value_t = 0, help_heading = "efs-utils")]
    pub proxy_memory_budget: u64,

    /// Reap orphaned processes (efs-proxy after its mount helper exits): make the plugin a child
    /// subreaper and collect the exit status of every child nobody waits for.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, help_heading = "efs-utils")]
    pub reap_orphans: bool,

    /// Where published volumes are recorded, so a restarted plugin stays idempotent.
    #[arg(
        long,
        env = "S3FILES_NODE_STATE_DIR",
        default_value = "/var/lib/kubelet/plugins/s3files.csi.dev/volumes",
        help_heading = "Node"
    )]
    pub state_dir: std::path::PathBuf,
}

/// `s3files-csi health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The plugin's endpoint.
    #[arg(long, env = "CSI_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: Endpoint,

    /// Keep asking for up to this many seconds until the plugin is up and ready.
    #[arg(long, default_value = "0", value_parser = parse_seconds)]
    pub wait: Duration,
}

/// `s3files-csi mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// `<fs-id>[:/path]`.
    pub source: String,
    /// Where to mount.
    pub target: std::path::PathBuf,
    /// Options, e.g. accesspoint=fsap-...,ro (options of the AWS helper that do not apply are ignored).
    #[arg(short = 'o')]
    pub options: Option<String>,
    /// Stay in the foreground and serve until unmounted (default: return once mounted).
    #[arg(long)]
    pub foreground: bool,
    /// Where bucket data lives: local:/DIR, s3 or s3:URL (default: ask the emulator).
    #[arg(long, env = "S3FILES_STORAGE")]
    pub storage: Option<String>,
    /// Log of the background daemon.
    #[arg(
        long,
        env = "S3FILES_MOUNT_LOG",
        default_value = "/tmp/s3files-mount.log"
    )]
    pub log_file: std::path::PathBuf,
}

/// `s3files-csi emulator`.
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to serve the API on; point clients at it with AWS_ENDPOINT_URL_S3FILES.
    #[arg(
        long,
        env = "S3FILES_EMULATOR_LISTEN",
        default_value = "127.0.0.1:9559"
    )]
    pub listen: std::net::SocketAddr,

    /// Keep state here so it survives restarts; without it state lives in memory only.
    #[arg(long, env = "S3FILES_EMULATOR_STATE_DIR")]
    pub state_dir: Option<std::path::PathBuf>,

    /// Region in ARNs and zone ids.
    #[arg(
        long,
        env = "AWS_REGION",
        default_value = "us-east-1",
        help_heading = "Emulated account"
    )]
    pub region: String,

    /// Account id in ARNs and ownerId.
    #[arg(
        long,
        default_value = "123456789012",
        help_heading = "Emulated account"
    )]
    pub account_id: String,

    /// Availability zone ids that subnets map into (default: <region>-az1..3, e.g. use1-az1).
    #[arg(long, value_delimiter = ',', help_heading = "Emulated account")]
    pub zone_ids: Vec<String>,

    /// Put a subnet in a zone: SUBNET=ZONE_ID (repeatable); other subnets are hashed onto zones.
    #[arg(long, value_parser = parse_key_value, help_heading = "Emulated account")]
    pub subnet_zone: Vec<(String, String)>,

    /// Seconds new file systems, access points and mount targets stay `creating`, and deleted
    /// mount targets `deleting`.
    #[arg(long, default_value = "0.5", value_parser = parse_seconds, help_heading = "Behaviour")]
    pub ready_after: Duration,

    /// File systems per account.
    #[arg(long, default_value_t = 1000, help_heading = "Behaviour")]
    pub max_file_systems: usize,

    /// Access points per file system.
    #[arg(long, default_value_t = 10_000, help_heading = "Behaviour")]
    pub max_access_points: usize,

    /// Directory holding one sub-directory per bucket (the local data plane reads it).
    #[arg(
        long,
        default_value = "/tmp/s3files-emulator/buckets",
        help_heading = "Bucket data"
    )]
    pub bucket_dir: std::path::PathBuf,

    /// Create this file system at start unless it exists, available, with a mount target in
    /// every zone: FS_ID=BUCKET_ARN (repeatable). With --bucket-endpoint the bucket is created
    /// there too (versioned), for servers that take unsigned requests such as moto.
    #[arg(long, value_parser = parse_key_value, help_heading = "Bucket data")]
    pub preset_file_system: Vec<(String, String)>,

    /// Buckets live on this S3-compatible endpoint instead of --bucket-dir.
    #[arg(long, help_heading = "Bucket data")]
    pub bucket_endpoint: Option<String>,

    /// Fraction (0-1) of all calls answered with ThrottlingException.
    #[arg(long, default_value_t = 0.0, help_heading = "Fault injection")]
    pub throttle_rate: f64,

    /// Fraction (0-1) of all calls answered with InternalServerException.
    #[arg(long, default_value_t = 0.0, help_heading = "Fault injection")]
    pub error_rate: f64,

    /// Fraction (0-1) of all calls applied and then answered with InternalServerException, as
    /// if the answer had been lost.
    #[arg(long, default_value_t = 0.0, help_heading = "Fault injection")]
    pub drop_rate: f64,

    /// Milliseconds added to every call.
    #[arg(long, default_value_t = 0, help_heading = "Fault injection")]
    pub latency_ms: u64,

    /// Calls per second per operation: OPERATION=RATE (repeatable; `*` for all operations).
    #[arg(long, value_parser = parse_key_value, help_heading = "Fault injection")]
    pub rate_limit: Vec<(String, String)>,

    /// Seed for ids and fault dice, for reproducible runs.
    #[arg(long, help_heading = "Fault injection")]
    pub seed: Option<u64>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s} seconds is out of range (0 to 86400)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn node_takes_its_id_and_defaults_the_rest() {
        let cli = Cli::try_parse_from(["s3files-csi", "node", "--node-id", "n1"]).expect("parses");
        let Command::Node(args) = cli.command else {
            panic!("expected node")
        };
        assert_eq!(args.node_id, "n1");
        assert_eq!(args.serve.driver_name, DEFAULT_DRIVER_NAME);
        assert_eq!(args.serve.endpoint.to_string(), DEFAULT_ENDPOINT);
    }

    #[test]
    fn a_bad_endpoint_is_rejected_at_parse_time() {
        let err = Cli::try_parse_from(["s3files-csi", "controller", "--endpoint", "csi.sock"])
            .expect_err("must fail");
        assert!(err.to_string().contains("unix://"), "{err}");
    }

    #[test]
    fn the_leader_lease_is_a_namespace_and_an_optional_name() {
        assert_eq!(
            parse_lease("kube-system"),
            Ok(("kube-system".to_owned(), None))
        );
        assert_eq!(
            parse_lease("storage/s3files-csi-dev"),
            Ok(("storage".to_owned(), Some("s3files-csi-dev".to_owned())))
        );
        for bad in ["", "Kube-System", "ns/", "/name", "ns/a b", "-ns"] {
            let err = parse_lease(bad).expect_err(bad);
            assert!(err.contains("NAMESPACE/NAME"), "{err}");
        }
    }
}
