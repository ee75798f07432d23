//! Data-plane benchmark: our FUSE mount (`s3files-csi mount`), `s3fs` and `rclone mount` side by
//! side against one S3-compatible server, with raw GETs/PUTs (`object_store`, same parallelism)
//! and boto3's transfer manager (same part size and concurrency; skipped without boto3) as the
//! ceiling. Every figure is printed with its ratios to the best peer and to raw, all
//! measured in the same run.
//!
//! ```text
//! apt-get install -y s3fs rclone fuse3        # the peers (a missing peer is reported and skipped)
//! cargo bench --bench dataplane -- [--size-mib 1024] [--small 2000] [--entries 10000]
//!                                  [--server moto|s3s-fs] [--s3-url http://HOST:PORT]
//!                                  [--tools s3files-csi,s3fs,rclone] [--rounds 1] [--serve-only]
//!                                  [--reads N] [--floor]
//! ```
//!
//! Without `--s3-url` it starts a fresh server on loopback for each tool: `moto_server` by
//! default, or `s3s-fs` (in this process, from the s3s crates). Needs root and /dev/fuse.
//! `--serve-only` starts just the server (and its bucket) and waits, for measuring by hand.
//! `--reads N` measures only the sequential read, N times over one object, each time raw and
//! through each build given as `S3FILES_BENCH_BIN=A,B` (`support/reads.rs`).
//! `--floor` measures only the FUSE floor of reading, by the reader's read size, with and
//! without the page cache (no S3 server; `support/null_fuse.rs`).
//! `--rounds N` measures everything N times, the tools in a rotating order, and ends with the
//! median of every figure and of every round's own ratios: one run's figures move more between
//! runs than the gaps between tools.
//!
//! Rows: sequential write of one file (timed until the object is complete in the bucket),
//! sequential read of it (fresh mount, page cache dropped), creating N small files (4 KiB, one
//! process, one at a time, until all are in the bucket), reading them back (fresh mount), and
//! listing a directory of M entries (names, as `ls -f`; fresh mount), the same with every
//! entry's attributes (as `ls -l`; fresh mount; raw: the listing and parallel HEADs), and the
//! mount daemon's memory (resident and anonymous when idle, peak through the write, peak
//! through the read) and CPU time per GiB written and read (what the mount costs the node,
//! steadier than throughput on a busy machine). `S3FILES_BENCH_BIN=PATH` mounts with another
//! build of ours, to compare two builds on one machine.
//!
//! The sequential rows also say what they cost the whole machine (CPU seconds per GiB, every
//! process and the kernel, and the share of the machine busy). Each round first measures the
//! FUSE floor: 1 GiB written to and read from a file system that does nothing
//! (`support/null_fuse.rs`), the least CPU any FUSE client spends moving the bytes, and what
//! touching 1 GiB of fresh memory costs ([`fresh_memory`]). From these it prints the CPU
//! ceiling: the fastest a FUSE client could write or read relative to the
//! best raw client if the machine's CPU is what holds that client back ([`ceiling`]).

#[path = "support/null_fuse.rs"]
mod null_fuse;
#[path = "support/reads.rs"]
mod reads;
#[path = "support/s3s_fs.rs"]
mod s3s_fs_server;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use s3files_csi::cloud::aws::AwsS3Files;
use s3files_csi::cloud::{NewAccessPoint, NewFileSystem, S3Files};
use s3files_csi::emulator::faults::FaultConfig;
use s3files_csi::emulator::store::Settings;
use s3files_csi::emulator::{BucketStore, Config, Emulator};
use s3s_fs_server::{Requests, S3sFs};

const BIN: &str = env!("CARGO_BIN_EXE_s3files-csi");
const KEY_ID: &str = "AKIDBENCH";
/// The bench's own requests (is the upload complete yet?) use this key; only on s3s-fs is it
/// told apart, so its request counts are the tools' own.
const CHECK_KEY_ID: &str = "AKIDCHECK";
const SECRET: &str = "benchsecret";
const SMALL_SIZE: usize = 4096;
/// Parallelism of the raw ceiling: parts in flight, as our mount uses.
const RAW_PARALLEL: usize = 4;
const PART: u64 = 8 << 20;

struct Args {
    size_mib: u64,
    small: usize,
    entries: usize,
    s3_url: Option<String>,
    server: ServerKind,
    tools: Vec<String>,
    serve_only: bool,
    rounds: usize,
    /// `--reads N`: only the sequential read, N times ([`reads`]).
    reads: usize,
    /// `--floor`: only the FUSE floor of reading, by read size, with and without the page
    /// cache ([`null_fuse::by_read_size`]).
    floor: bool,
}

/// The S3 server the bench starts (one per tool) when no `--s3-url` is given.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ServerKind {
    /// `moto_server` (PyPI): Python, one core; what the test suite mounts over.
    Moto,
    /// `s3s-fs` (crates.io): Rust, files on local disk, every core; run in this process with
    /// two quirks mended (`support/s3s_fs.rs`).
    S3sFs,
}

fn args() -> Args {
    let mut a = Args {
        size_mib: 1024,
        small: 2000,
        entries: 10_000,
        s3_url: None,
        server: ServerKind::Moto,
        serve_only: false,
        rounds: 1,
        reads: 0,
        floor: false,
        tools: vec!["s3files-csi".into(), "s3fs".into(), "rclone".into()],
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--size-mib" => a.size_mib = value.parse().expect("--size-mib N"),
            "--small" => a.small = value.parse().expect("--small N"),
            "--entries" => a.entries = value.parse().expect("--entries N"),
            "--rounds" => a.rounds = value.parse::<usize>().expect("--rounds N").max(1),
            "--reads" => a.reads = value.parse().expect("--reads N"),
            "--s3-url" => a.s3_url = Some(value),
            "--server" => {
                a.server = match value.as_str() {
                    "moto" => ServerKind::Moto,
                    "s3s-fs" => ServerKind::S3sFs,
                    other => panic!("--server moto|s3s-fs, not {other:?}"),
                }
            }
            "--tools" => a.tools = value.split(',').map(str::to_owned).collect(),
            "--floor" => {
                a.floor = true;
                i += 1;
                continue;
            }
            "--serve-only" => {
                a.serve_only = true;
                i += 1;
                continue;
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

/// What one tool does for each row; `None` when the row failed (reported, not fatal).
#[derive(Default, Clone)]
struct Figures {
    write_mbs: Option<f64>,
    read_mbs: Option<f64>,
    create_fps: Option<f64>,
    read_fps: Option<f64>,
    list_eps: Option<f64>,
    /// `ls -l`: the names and every entry's attributes (fresh mount).
    stat_eps: Option<f64>,
    /// The daemon's memory (MiB): resident when idle after mounting, peak (VmHWM) through the
    /// sequential write, peak through the sequential read.
    memory: Option<[f64; 3]>,
    /// The idle daemon's anonymous memory (MiB): its own allocations. The rest of its RSS is
    /// clean pages of the binary, shared with every process of the same binary (on a node, the
    /// node plugin's own) and reclaimable.
    anon_idle: Option<f64>,
    /// CPU time (user + system) the daemon spent per GiB of the sequential write and read.
    cpu_write: Option<f64>,
    cpu_read: Option<f64>,
    /// What the sequential write and read cost the whole machine: every process and the
    /// kernel, the server included ([`Run`]).
    machine_write: Run,
    machine_read: Run,
    /// Raw only: the FUSE floor (machine CPU s/GiB through a file system that does nothing,
    /// `support/null_fuse.rs`) and the CPU-bound ceiling of a FUSE client against the best raw
    /// client ([`ceiling`]), for the write and the read.
    floor: [Option<f64>; 2],
    ceiling: [Option<f64>; 2],
    /// Requests the tool made in each row (by row label), where the server counts them.
    requests: BTreeMap<&'static str, Counts>,
}

const WRITE: &str = "sequential write";
const READ: &str = "sequential read";
const CREATE: &str = "small files created";
const SMALL_READ: &str = "small files read";
const LIST: &str = "directory listed";
const STAT: &str = "directory listed with attributes";

/// Requests by S3 operation.
type Counts = BTreeMap<String, u64>;

/// The server's request counts (s3s-fs only), for what each row asked of the server.
#[derive(Clone, Default)]
struct Tally(Option<Requests>);

impl Tally {
    fn now(&self) -> Counts {
        self.0
            .as_ref()
            .and_then(|r| r.lock().ok().map(|c| c.clone()))
            .unwrap_or_default()
    }

    /// Records in `f` what was asked since `start` (from [`Tally::now`]) as `row`'s requests.
    fn row(&self, f: &mut Figures, row: &'static str, start: &Counts) {
        if self.0.is_none() {
            return;
        }
        let diff = self
            .now()
            .into_iter()
            .map(|(op, n)| {
                let before = start.get(&op).copied().unwrap_or(0);
                (op, n - before)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        f.requests.insert(row, diff);
    }
}

/// Picks one row's figure.
type Row = fn(&Figures) -> Option<f64>;

/// A way to mount the bucket (or our access point on it) at a directory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Ours,
    S3fs,
    Rclone,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Ours => "s3files-csi",
            Tool::S3fs => "s3fs",
            Tool::Rclone => "rclone",
        }
    }
}

struct Setup {
    s3_url: String,
    bucket: String,
    emulator_url: String,
    fs_id: String,
    ap_id: String,
    dir: tempfile::TempDir,
}

fn mounted(path: &Path) -> bool {
    let table = s3files_csi::mount::mountinfo::parse(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
    );
    s3files_csi::mount::mountinfo::mount_at(&table, path).is_some()
}

/// Runs a mount command. Output goes to a file, not a pipe: a daemonising mount (rclone
/// `--daemon`) keeps inherited pipes open for as long as it runs.
fn run(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        anyhow::bail!("{cmd:?} failed ({status}): {}", tail.join(" | "));
    }
    Ok(())
}

/// A mount of one row; dropping it unmounts, so a row that fails leaves nothing mounted.
struct Mounted(PathBuf);

impl std::ops::Deref for Mounted {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        if mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// The build of ours the bench mounts with: `S3FILES_BENCH_BIN`, or this tree's.
fn ours_bin() -> std::ffi::OsString {
    std::env::var_os("S3FILES_BENCH_BIN").unwrap_or_else(|| BIN.into())
}

/// Mounts `tool` at a fresh directory.
fn mount(tool: Tool, s: &Setup, name: &str) -> anyhow::Result<Mounted> {
    mount_build(tool, s, name, &ours_bin())
}

/// Mounts `tool` at a fresh directory, ours with the build at `bin`.
fn mount_build(
    tool: Tool,
    s: &Setup,
    name: &str,
    bin: &std::ffi::OsStr,
) -> anyhow::Result<Mounted> {
    let target = s.dir.path().join(format!("{}-{name}", tool.name()));
    std::fs::create_dir_all(&target)?;
    let log = s.dir.path().join(format!("{}.out", tool.name()));
    match tool {
        Tool::Ours => run(
            Command::new(bin)
                .env("AWS_ENDPOINT_URL_S3FILES", &s.emulator_url)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", KEY_ID)
                .env("AWS_SECRET_ACCESS_KEY", SECRET)
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .arg("mount")
                .arg(&s.fs_id)
                .arg(&target)
                .args(["-o", &format!("accesspoint={},tls", s.ap_id)])
                .arg("--log-file")
                .arg(s.dir.path().join("ours.log")),
            &log,
        )?,
        Tool::S3fs => {
            let passwd = s.dir.path().join("s3fs.passwd");
            std::fs::write(&passwd, format!("{KEY_ID}:{SECRET}\n"))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600))?;
            run(
                Command::new("s3fs")
                    .arg(&s.bucket)
                    .arg(&target)
                    .args(["-o", &format!("url={}", s.s3_url)])
                    .args(["-o", "use_path_request_style"])
                    .args(["-o", &format!("passwd_file={}", passwd.display())])
                    .args(["-o", "endpoint=us-east-1"]),
                &log,
            )?
        }
        Tool::Rclone => run(
            Command::new("rclone")
                // rclone refuses the CA bundle these machines set for other tools.
                .env_remove("AWS_CA_BUNDLE")
                .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
                .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
                .env("RCLONE_CONFIG_BENCH_ENDPOINT", &s.s3_url)
                .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", KEY_ID)
                .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", SECRET)
                .env("RCLONE_CONFIG_BENCH_REGION", "us-east-1")
                .arg("mount")
                .arg(format!("bench:{}", s.bucket))
                .arg(&target)
                .arg("--daemon")
                .args([
                    "--log-file",
                    &s.dir.path().join("rclone.log").display().to_string(),
                ]),
            &log,
        )?,
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mounted(&target) {
        anyhow::ensure!(Instant::now() < deadline, "{} did not mount", tool.name());
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Mounted(target))
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn pattern() -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The bench's own look at the bucket (with credentials the server does not count).
struct Raw {
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Handle,
    tally: Tally,
}

impl Raw {
    /// Waits until `key` exists with `size` bytes (a tool's close may return before its upload
    /// is complete; the row counts until the data is in the bucket).
    fn wait_for(&self, key: &str, size: u64) -> anyhow::Result<()> {
        let key = ObjectPath::from(key);
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(meta) = self.rt.block_on(self.store.head(&key))
                && meta.size == size
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{key} never reached {size} bytes"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self, prefix: &str) -> usize {
        let prefix = ObjectPath::from(prefix);
        self.rt
            .block_on(self.store.list(Some(&prefix)).collect::<Vec<_>>())
            .into_iter()
            .filter(|o| o.is_ok())
            .count()
    }
}

/// Reads the file at `path` start to end in 1 MiB reads, as `cat` would: it must hold `size`
/// bytes and begin with `expected`'s.
fn read_file(path: &Path, size: u64, expected: &[u8]) -> anyhow::Result<Run> {
    let span = Span::start();
    let mut file = std::fs::File::open(path)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let (mut first, mut first_at) = (Vec::new(), None);
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        if first.is_empty() {
            first_at = Some(span.at.elapsed().as_secs_f64());
            first = chunk[..n.min(4096)].to_vec();
        }
        total += n as u64;
    }
    let mut run = span.end(size);
    run.first = first_at;
    anyhow::ensure!(total == size, "read {total} of {size} bytes");
    anyhow::ensure!(first == expected[..first.len()], "read the wrong bytes");
    Ok(run)
}

fn mbs(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / t.as_secs_f64()
}

/// Runs the five rows through a mount of `tool`; `base` is the tool's directory in the bucket
/// as the mount sees it and `key_base` the same place as an object key prefix.
fn measure_mount(tool: Tool, s: &Setup, raw: &Raw, a: &Args) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    let size = a.size_mib << 20;
    let buf = pattern();
    let (sub, key_base) = match tool {
        Tool::Ours => ("", "ours".to_owned()),
        Tool::S3fs => ("s3fs", "s3fs".to_owned()),
        Tool::Rclone => ("rclone", "rclone".to_owned()),
    };
    // Ours serves the access point root (`/ours`); the peers serve the bucket root.
    let m = mount(tool, s, "write")?;
    let daemon = daemon_of(&m);
    let idle = daemon.and_then(|pid| memory_mib(pid, "VmRSS"));
    f.anon_idle = daemon.and_then(|pid| memory_mib(pid, "RssAnon"));
    let dir = m.join(sub);
    std::fs::create_dir_all(dir.join("small"))?;
    let c = raw.tally.now();
    let cpu = daemon.and_then(cpu_seconds);
    let span = Span::start();
    let mut file = std::fs::File::create(dir.join("big.bin"))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    drop(file);
    raw.wait_for(&format!("{key_base}/big.bin"), size)?;
    f.machine_write = span.end(size);
    f.write_mbs = Some(f.machine_write.mbs);
    f.cpu_write = per_gib(cpu, daemon.and_then(cpu_seconds), size);
    let write_peak = daemon.and_then(|pid| memory_mib(pid, "VmHWM"));
    raw.tally.row(&mut f, WRITE, &c);
    eprintln!("  {}: sequential write done", tool.name());

    let c = raw.tally.now();
    let t = Instant::now();
    for i in 0..a.small {
        std::fs::write(dir.join(format!("small/f{i:05}")), &buf[..SMALL_SIZE])?;
    }
    let skip_small = a.small == 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while raw.count(&format!("{key_base}/small")) < a.small {
        anyhow::ensure!(Instant::now() < deadline, "small files never all arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    f.create_fps = (!skip_small).then(|| a.small as f64 / t.elapsed().as_secs_f64());
    raw.tally.row(&mut f, CREATE, &c);
    eprintln!("  {}: small files created", tool.name());
    std::fs::create_dir_all(dir.join("list"))?;
    drop(m);

    drop_caches();
    let m = mount(tool, s, "read")?;
    let dir = m.join(sub);
    let c = raw.tally.now();
    let reader = daemon_of(&m);
    let cpu = reader.and_then(cpu_seconds);
    f.machine_read = read_file(&dir.join("big.bin"), size, &buf)?;
    f.read_mbs = Some(f.machine_read.mbs);
    f.cpu_read = per_gib(cpu, reader.and_then(cpu_seconds), size);
    let read_peak = daemon_of(&m).and_then(|pid| memory_mib(pid, "VmHWM"));
    if let (Some(a), Some(b), Some(c)) = (idle, write_peak, read_peak) {
        f.memory = Some([a, b, c]);
    }
    raw.tally.row(&mut f, READ, &c);
    eprintln!("  {}: sequential read done", tool.name());

    let c = raw.tally.now();
    let t = Instant::now();
    for i in 0..a.small {
        let got = std::fs::read(dir.join(format!("small/f{i:05}")))?;
        anyhow::ensure!(
            got.len() == SMALL_SIZE,
            "small file {i} has {} bytes",
            got.len()
        );
    }
    f.read_fps = (!skip_small).then(|| a.small as f64 / t.elapsed().as_secs_f64());
    raw.tally.row(&mut f, SMALL_READ, &c);
    eprintln!("  {}: small files read", tool.name());
    drop(m);
    if a.entries == 0 {
        return Ok(f);
    }

    // The listing directory is filled with raw PUTs (setup, not timed).
    populate(raw, &format!("{key_base}/list"), a.entries)?;
    // No dropped caches here: a fresh mount knows no names anyway, and dropping them would
    // evict the tool's own program, paid back from disk during the timed listing (measured by
    // hand on s3s-fs, 10,000 entries: our listing took 2.4-2.5 s after a drop, 1.8-1.9 s
    // without; raw lists from this warm process).
    let m = mount(tool, s, "list")?;
    let c = raw.tally.now();
    let t = Instant::now();
    let n = std::fs::read_dir(m.join(sub).join("list"))?.count();
    let elapsed = t.elapsed();
    raw.tally.row(&mut f, LIST, &c);
    drop(m);
    // s3fs and rclone also show our hidden directory marker; nothing else may be missing.
    anyhow::ensure!(n >= a.entries, "listed {n} of {} entries", a.entries);
    f.list_eps = Some(a.entries as f64 / elapsed.as_secs_f64());
    eprintln!("  {}: listing done", tool.name());

    // `ls -l`: one process reads the names and asks for each entry's attributes in turn.
    let m = mount(tool, s, "stat")?;
    let c = raw.tally.now();
    let t = Instant::now();
    let mut n = 0;
    for entry in std::fs::read_dir(m.join(sub).join("list"))? {
        std::fs::symlink_metadata(entry?.path())?;
        n += 1;
    }
    let elapsed = t.elapsed();
    raw.tally.row(&mut f, STAT, &c);
    drop(m);
    anyhow::ensure!(
        n >= a.entries,
        "`ls -l` showed {n} of {} entries",
        a.entries
    );
    f.stat_eps = Some(a.entries as f64 / elapsed.as_secs_f64());
    eprintln!("  {}: `ls -l` done", tool.name());
    Ok(f)
}

fn populate(raw: &Raw, prefix: &str, n: usize) -> anyhow::Result<()> {
    let store = raw.store.clone();
    let prefix = prefix.to_owned();
    raw.rt.block_on(async move {
        futures_util::stream::iter(0..n)
            .map(|i| {
                let store = store.clone();
                let key = ObjectPath::from(format!("{prefix}/entry-{i:05}"));
                async move { store.put(&key, vec![b'x'; 16].into()).await }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(())
}

/// boto3's transfer manager writing and reading one object with the mount's part size and
/// parallelism: argv url, bucket, key id, secret, size; prints the write's and the read's
/// "MiB/s CPU-s/GiB busy". With a seventh argument, a key of `size` bytes, only reads that.
const BOTO3: &str = r#"
import boto3, os, sys, tempfile, time
from boto3.s3.transfer import TransferConfig
url, bucket, key_id, secret, size = sys.argv[1:6]
size = int(size)
s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id=key_id,
                  aws_secret_access_key=secret, region_name="us-east-1")
cfg = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=8 << 20,
                     max_concurrency=4, use_threads=True)
def ticks():
    t = [int(v) for v in open("/proc/stat").readline().split()[1:8]]
    busy = t[0] + t[1] + t[2] + t[5] + t[6]
    return busy, busy + t[3] + t[4]
def run(transfer):
    (b0, a0), t = ticks(), time.monotonic()
    transfer()
    elapsed, (b1, a1) = time.monotonic() - t, ticks()
    return "%f %f %f" % (size / (1 << 20) / elapsed, (b1 - b0) / 100 / (size / (1 << 30)),
                         (b1 - b0) / max(a1 - a0, 1))
class Sink:
    def write(self, b):
        return len(b)
if len(sys.argv) > 6:
    print(run(lambda: s3.download_fileobj(bucket, sys.argv[6], Sink(), Config=cfg)))
    sys.exit()
with tempfile.NamedTemporaryFile() as f:
    block = os.urandom(1 << 20)
    for _ in range(size >> 20):
        f.write(block)
    f.flush()
    write = run(lambda: s3.upload_file(f.name, bucket, "boto3/big.bin", Config=cfg))
read = run(lambda: s3.download_fileobj(bucket, "boto3/big.bin", Sink(), Config=cfg))
print(write, read)
"#;

/// boto3's write and read figures against the server at `url`, if boto3 is installed.
fn boto3_figures(url: &str, bucket: &str, size: u64) -> Option<(Run, Run)> {
    let mut runs = boto3_runs(&[url, bucket, KEY_ID, SECRET, &size.to_string()])?.into_iter();
    Some((runs.next()?, runs.next()?))
}

/// boto3's read of `key` (`size` bytes) at the server at `url`, if boto3 is installed.
fn boto3_read(url: &str, bucket: &str, size: u64, key: &str) -> Option<Run> {
    boto3_runs(&[url, bucket, KEY_ID, SECRET, &size.to_string(), key])?
        .into_iter()
        .next()
}

/// The runs [`BOTO3`] prints, given `args`; `None` (reported) when it fails.
fn boto3_runs(args: &[&str]) -> Option<Vec<Run>> {
    let out = Command::new("python3")
        .args(["-c", BOTO3])
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        println!(
            "raw boto3: skipped ({})",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut figures = text
        .split_whitespace()
        .filter_map(|v| v.parse::<f64>().ok());
    let mut runs = Vec::new();
    while let Some(mbs) = figures.next() {
        runs.push(Run {
            mbs,
            cpu: figures.next(),
            busy: figures.next(),
            first: None,
            cpu_after_first: None,
        });
    }
    Some(runs)
}

/// Writes `size` bytes of `buf` repeated to `key` as the mount would: one multipart upload of
/// [`PART`]-byte parts, [`RAW_PARALLEL`] in flight.
async fn put_raw(
    store: &Arc<dyn ObjectStore>,
    key: &ObjectPath,
    size: u64,
    buf: &bytes::Bytes,
) -> anyhow::Result<Run> {
    let span = Span::start();
    let upload = store.put_multipart(key).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART as usize);
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        writer.wait_for_capacity(RAW_PARALLEL).await?;
        writer.put(buf.slice(..n));
        left -= n as u64;
    }
    writer.finish().await?;
    Ok(span.end(size))
}

/// Reads the `size` bytes of `key` as [`PART`]-byte ranges, [`RAW_PARALLEL`] in flight.
async fn read_raw(
    store: &Arc<dyn ObjectStore>,
    key: &ObjectPath,
    size: u64,
) -> anyhow::Result<Run> {
    let span = Span::start();
    let ranges: Vec<_> = (0..size.div_ceil(PART))
        .map(|i| i * PART..((i + 1) * PART).min(size))
        .collect();
    let total: u64 = futures_util::stream::iter(ranges)
        .map(|r| {
            let (store, key) = (store.clone(), key.clone());
            async move { store.get_range(&key, r).await.map(|b| b.len() as u64) }
        })
        .buffered(RAW_PARALLEL)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum::<Result<u64, _>>()?;
    let run = span.end(size);
    anyhow::ensure!(total == size, "raw read {total} of {size}");
    Ok(run)
}

/// Reads the `size` bytes of `key` with one streaming GET.
async fn read_streamed(
    store: &Arc<dyn ObjectStore>,
    key: &ObjectPath,
    size: u64,
) -> anyhow::Result<Run> {
    let span = Span::start();
    let mut body = store.get(key).await?.into_stream();
    let (mut total, mut first_at, mut tail) = (0u64, None, None);
    while let Some(piece) = body.next().await {
        if first_at.is_none() {
            first_at = Some(span.at.elapsed().as_secs_f64());
            tail = Some(Span::start());
        }
        total += piece?.len() as u64;
    }
    let mut run = span.end(size);
    run.first = first_at;
    run.cpu_after_first = tail.and_then(|t| t.end(size).cpu);
    anyhow::ensure!(total == size, "raw stream read {total} of {size}");
    Ok(run)
}

/// The ceiling: the same rows as plain S3 requests with the mount's parallelism. The write
/// and read rows take the better of `object_store` and boto3 (into the server at `url`, bucket
/// `bucket`).
async fn measure_raw(
    store: Arc<dyn ObjectStore>,
    tally: &Tally,
    a: &Args,
    url: &str,
    bucket: &str,
    floor: [Option<f64>; 2],
) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    let size = a.size_mib << 20;
    let buf = bytes::Bytes::from(pattern());
    let key = ObjectPath::from("raw/big.bin");
    let c = tally.now();
    let mut writes = vec![put_raw(&store, &key, size, &buf).await?];
    tally.row(&mut f, WRITE, &c);

    // The mounts read after a remount with the page cache dropped, which also drops moto's copy
    // of the object (moto keeps values above 5 MiB in temporary files): raw reads the same way.
    drop_caches();
    let c = tally.now();
    let ranged = read_raw(&store, &key, size).await?;
    // The other way to read: one streaming GET. Some servers (moto) pay per request in
    // proportion to the object size, so the ceiling is the better of the two.
    drop_caches();
    let streamed = read_streamed(&store, &key, size).await?;
    let mut reads = vec![ranged, streamed];
    drop_caches();
    let (url, bucket) = (url.to_owned(), bucket.to_owned());
    let boto3 = tokio::task::spawn_blocking(move || boto3_figures(&url, &bucket, size)).await?;
    if let Some((write, read)) = boto3 {
        writes.push(write);
        reads.push(read);
    }
    let show = |r: &Run| {
        format!(
            "{:.1} MiB/s ({} CPU s/GiB, machine {} busy)",
            r.mbs,
            r.cpu.map_or("-".into(), |c| format!("{c:.2}")),
            r.busy.map_or("-".into(), |b| format!("{:.0}%", b * 100.0))
        )
    };
    println!(
        "raw write: object_store {}{}",
        show(&writes[0]),
        writes
            .get(1)
            .map_or(String::new(), |b| format!(", boto3 {}", show(b)))
    );
    println!(
        "raw read: object_store {} as {RAW_PARALLEL} parallel 8 MiB ranges, {} as one streaming GET{}",
        show(&reads[0]),
        show(&reads[1]),
        reads
            .get(2)
            .map_or(String::new(), |b| format!(", boto3 {}", show(b)))
    );
    let fastest = |runs: &[Run]| {
        runs.iter()
            .copied()
            .max_by(|a, b| a.mbs.total_cmp(&b.mbs))
            .unwrap_or_default()
    };
    f.machine_write = fastest(&writes);
    f.machine_read = fastest(&reads);
    f.write_mbs = Some(f.machine_write.mbs);
    f.read_mbs = Some(f.machine_read.mbs);
    f.floor = floor;
    f.ceiling = [ceiling(&writes, floor[0]), ceiling(&reads, floor[1])];
    // Every way of reading.
    tally.row(&mut f, READ, &c);

    let c = tally.now();
    let t = Instant::now();
    for i in 0..a.small {
        let key = ObjectPath::from(format!("raw/small/f{i:05}"));
        store.put(&key, buf.slice(..SMALL_SIZE).into()).await?;
    }
    f.create_fps = Some(a.small as f64 / t.elapsed().as_secs_f64());
    tally.row(&mut f, CREATE, &c);
    let c = tally.now();
    let t = Instant::now();
    for i in 0..a.small {
        let key = ObjectPath::from(format!("raw/small/f{i:05}"));
        store.get(&key).await?.bytes().await?;
    }
    f.read_fps = Some(a.small as f64 / t.elapsed().as_secs_f64());
    tally.row(&mut f, SMALL_READ, &c);

    let prefix = ObjectPath::from("raw/list");
    futures_util::stream::iter(0..a.entries)
        .map(|i| {
            let store = store.clone();
            let key = prefix.clone().join(format!("entry-{i:05}"));
            async move { store.put(&key, vec![b'x'; 16].into()).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    // Each tool lists a directory it made, which holds its marker object as well (ours
    // `.s3files-dir`, s3fs and rclone `list/`): raw lists one more key too, so that it reads
    // as many pages as the mounts (10,000 entries and a marker take 11 pages of 1,000).
    store
        .put(&prefix.clone().join(".s3files-dir"), Vec::new().into())
        .await?;
    let c = tally.now();
    let t = Instant::now();
    let listing = store.list_with_delimiter(Some(&prefix)).await?;
    anyhow::ensure!(listing.objects.len() == a.entries + 1, "raw listing short");
    f.list_eps = Some(a.entries as f64 / t.elapsed().as_secs_f64());
    tally.row(&mut f, LIST, &c);
    // `ls -l`'s ceiling: the listing, then a HEAD of every entry, 32 at a time.
    let c = tally.now();
    let t = Instant::now();
    let listing = store.list_with_delimiter(Some(&prefix)).await?;
    let entries = listing
        .objects
        .into_iter()
        .filter(|o| o.location.filename() != Some(".s3files-dir"));
    let heads = futures_util::stream::iter(entries)
        .map(|o| {
            let store = store.clone();
            async move { store.head(&o.location).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    anyhow::ensure!(heads.iter().all(|h| h.is_ok()), "raw HEADs failed");
    f.stat_eps = Some(a.entries as f64 / t.elapsed().as_secs_f64());
    tally.row(&mut f, STAT, &c);
    Ok(f)
}

/// The process serving the mount at `target` (whose command line names it).
fn daemon_of(target: &Path) -> Option<u32> {
    let want = target.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == want)
            .then_some(pid)
    })
}

/// CPU time `pid` has used so far (user + system), in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15 of the line (11 and 12 counted from the state), in
    // clock ticks: USER_HZ, 100 on every Linux the bench runs on.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// CPU seconds per GiB between two readings of `cpu_seconds`.
fn per_gib(before: Option<f64>, after: Option<f64>, bytes: u64) -> Option<f64> {
    Some((after? - before?) / (bytes as f64 / f64::from(1 << 30)))
}

/// Machine-wide CPU clock ticks so far (all cores, from /proc/stat): busy (user, nice,
/// system, irq, softirq) and available (busy, idle and iowait; time the hypervisor stole is
/// in neither).
#[derive(Clone, Copy)]
struct Ticks {
    busy: u64,
    all: u64,
}

fn machine_cpu() -> Option<Ticks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let t: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let (user, nice, system, idle, iowait, irq, softirq) = (
        *t.first()?,
        *t.get(1)?,
        *t.get(2)?,
        *t.get(3)?,
        *t.get(4)?,
        *t.get(5)?,
        *t.get(6)?,
    );
    let busy = user + nice + system + irq + softirq;
    Some(Ticks {
        busy,
        all: busy + idle + iowait,
    })
}

/// One timed transfer: its rate, the machine's CPU seconds per GiB moved, the share of the
/// machine's CPU that was busy meanwhile (1.0: every core, all the time), and for reads that
/// time it, the seconds until the first bytes came; for a streamed read, the machine's CPU
/// seconds per GiB from its first bytes to its end.
#[derive(Clone, Copy, Default, Debug)]
struct Run {
    mbs: f64,
    cpu: Option<f64>,
    busy: Option<f64>,
    first: Option<f64>,
    cpu_after_first: Option<f64>,
}

/// The start of a [`Run`].
struct Span {
    at: Instant,
    ticks: Option<Ticks>,
}

impl Span {
    fn start() -> Span {
        Span {
            ticks: machine_cpu(),
            at: Instant::now(),
        }
    }

    /// The run since the start, `bytes` moved. CPU seconds are clock ticks over USER_HZ (100).
    fn end(&self, bytes: u64) -> Run {
        let elapsed = self.at.elapsed();
        let (cpu, busy) = match (self.ticks, machine_cpu()) {
            (Some(a), Some(b)) => {
                let busy_ticks = (b.busy - a.busy) as f64;
                let cpu = per_gib(Some(0.0), Some(busy_ticks / 100.0), bytes);
                let busy = (b.all > a.all).then(|| busy_ticks / (b.all - a.all) as f64);
                (cpu, busy)
            }
            _ => (None, None),
        };
        Run {
            mbs: mbs(bytes, elapsed),
            cpu,
            busy,
            first: None,
            cpu_after_first: None,
        }
    }
}

/// How fast, at most, a FUSE client could go against the fastest of `raw` (one transfer by
/// each raw client), as a ratio to it, if that client was held back by the machine's CPU. A
/// FUSE client does at least what the cheapest raw client does per GiB (the same requests, and
/// the server's work is the same) plus the FUSE `floor`, so with the machine's CPU as the
/// limit it moves at most `capacity / (cheapest + floor)`; the fastest raw client moved
/// `busy x capacity / its CPU`. `None` without CPU figures.
fn ceiling(raw: &[Run], floor: Option<f64>) -> Option<f64> {
    let best = raw.iter().max_by(|a, b| a.mbs.total_cmp(&b.mbs))?;
    let cheapest = raw.iter().filter_map(|r| r.cpu).min_by(f64::total_cmp)?;
    Some(best.cpu? / (best.busy? * (cheapest + floor?)))
}

/// A `VmRSS`/`RssAnon`/`VmHWM` figure of `pid`, in MiB.
fn memory_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// What each tool asked of the server in each row, where the server counted it.
fn print_requests(raw: &Figures, results: &[(Tool, Option<Figures>)]) {
    let mut tools: Vec<(&str, &Figures)> = vec![("raw", raw)];
    tools.extend(
        results
            .iter()
            .filter_map(|(t, f)| f.as_ref().map(|f| (t.name(), f))),
    );
    if tools.iter().all(|(_, f)| f.requests.is_empty()) {
        return;
    }
    println!();
    println!("requests per row, as the server counted them:");
    for row in [WRITE, READ, CREATE, SMALL_READ, LIST, STAT] {
        println!("  {row}");
        for (name, f) in &tools {
            let Some(counts) = f.requests.get(row) else {
                continue;
            };
            let total: u64 = counts.values().sum();
            let each: Vec<String> = counts.iter().map(|(op, n)| format!("{op} {n}")).collect();
            println!("    {name:<12} {total:>7}  {}", each.join(", "));
        }
    }
}

fn start_moto() -> anyhow::Result<(Child, String)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("moto_server ({e}); pip install 'moto[server]'"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((child, format!("http://127.0.0.1:{port}")))
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn cell(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

/// One measurement's S3 server and bucket: a fresh server per tool (moto lists by scanning
/// its whole bucket and keeps every object in one process, so a shared server would favour
/// whoever runs first), or a bucket of its own on the server given by `--s3-url`.
struct Server {
    running: Running,
    url: String,
    bucket: String,
    /// With the tools' credentials.
    store: Arc<dyn ObjectStore>,
    /// With the bench's own, which s3s-fs does not count.
    checker: Arc<dyn ObjectStore>,
    tally: Tally,
}

impl Server {
    async fn start(a: &Args, name: &str) -> anyhow::Result<Server> {
        // Unique per run: a server given by --s3-url keeps the buckets of earlier runs.
        let bucket = format!("bench-{name}-{}", std::process::id());
        let (running, url) = match (&a.s3_url, a.server) {
            (Some(url), _) => (Running::Elsewhere, url.clone()),
            (None, ServerKind::Moto) => {
                let (child, url) = start_moto()?;
                (Running::Child(child), url)
            }
            (None, ServerKind::S3sFs) => {
                // In memory where the machine has /dev/shm: the fast server stands for a
                // remote S3 that this machine's disk does not slow (on disk its figures moved
                // 2x between runs with journal commits).
                let shm = Path::new("/dev/shm");
                let root = if shm.is_dir() {
                    tempfile::tempdir_in(shm)?
                } else {
                    tempfile::tempdir()?
                };
                // s3s-fs keeps a bucket as a directory of its root.
                std::fs::create_dir(root.path().join(&bucket))?;
                let keys = [(KEY_ID, SECRET), (CHECK_KEY_ID, SECRET)];
                let server = S3sFs::start(root.path(), &keys, KEY_ID)?;
                let url = server.url.clone();
                (Running::InProcess(server, root), url)
            }
        };
        if a.server == ServerKind::Moto || a.s3_url.is_some() {
            // Versioned, as S3 Files requires of its buckets (rclone also relies on it with
            // moto: it checks uploads by version id). s3s-fs has no versioning.
            s3files_csi::plain_http::ensure_versioned_bucket(&url, &bucket).await?;
        }
        let client = |key_id: &str| -> anyhow::Result<Arc<dyn ObjectStore>> {
            Ok(Arc::new(
                AmazonS3Builder::new()
                    .with_endpoint(&url)
                    .with_allow_http(true)
                    .with_bucket_name(&bucket)
                    .with_region("us-east-1")
                    .with_access_key_id(key_id)
                    .with_secret_access_key(SECRET)
                    .build()?,
            ))
        };
        let (checker, tally) = match &running {
            Running::InProcess(server, _) => {
                (client(CHECK_KEY_ID)?, Tally(Some(server.requests.clone())))
            }
            _ => (client(KEY_ID)?, Tally::default()),
        };
        Ok(Server {
            store: client(KEY_ID)?,
            checker,
            tally,
            running,
            url,
            bucket,
        })
    }
}

/// Where a measurement's server runs.
enum Running {
    /// Started by `--s3-url`'s owner.
    Elsewhere,
    Child(Child),
    /// Held until the measurement ends (dropping it stops the server), with its data directory.
    InProcess(S3sFs, #[allow(dead_code)] tempfile::TempDir),
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Running::Child(child) = &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An emulated file system on `server`'s bucket with one access point (root `/ours`), as the
/// driver would provision it; the emulator keeps serving on loopback for the rest of the run.
async fn emulated(server: &Server) -> anyhow::Result<Setup> {
    let mut settings = Settings::for_region("us-east-1");
    settings.ready_after = 0.0;
    let emu = Emulator::new(Config {
        settings,
        state_dir: None,
        buckets: BucketStore::S3 {
            endpoint: server.url.clone(),
        },
        faults: FaultConfig::default(),
        seed: Some(1),
    })?;
    let emulator_url = format!("http://{}", emu.serve_on_loopback().await?);
    let sdk = {
        use aws_sdk_s3files::config::{BehaviorVersion, Credentials, Region};
        aws_sdk_s3files::Client::from_conf(
            aws_sdk_s3files::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(&emulator_url)
                .credentials_provider(Credentials::new(KEY_ID, SECRET, None, None, "bench"))
                .build(),
        )
    };
    let cloud = AwsS3Files::new(sdk, None);
    let fs = cloud
        .create_file_system(&NewFileSystem {
            bucket_arn: format!("arn:aws:s3:::{}", server.bucket),
            prefix: None,
            role_arn: "arn:aws:iam::123456789012:role/bench".into(),
            client_token: None,
            tags: vec![],
        })
        .await?;
    let ap = cloud
        .create_access_point(&NewAccessPoint {
            file_system_id: fs.id.clone(),
            client_token: "bench".into(),
            posix_user: None,
            root_path: Some("/ours".into()),
            creation_permissions: None,
            tags: vec![],
        })
        .await?;
    Ok(Setup {
        s3_url: server.url.clone(),
        bucket: server.bucket.clone(),
        emulator_url,
        fs_id: fs.id,
        ap_id: ap.id,
        dir: tempfile::tempdir()?,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    if a.serve_only {
        // The server a run would start, for measuring by hand; stops at Ctrl-C.
        let server = Server::start(&a, "by-hand").await?;
        println!(
            "serving bucket {} at {} (access key {KEY_ID}, secret {SECRET}); Ctrl-C stops",
            server.bucket, server.url
        );
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    if a.reads > 0 {
        return reads::run(&a).await;
    }
    if a.floor {
        return null_fuse::by_read_size(a.size_mib << 20, a.rounds);
    }
    println!(
        "data-plane benchmark: {} MiB sequential, {} small files of {} KiB, {} entries listed; S3 server {}",
        a.size_mib,
        a.small,
        SMALL_SIZE / 1024,
        a.entries,
        match (&a.s3_url, a.server) {
            (None, ServerKind::Moto) => "moto_server on loopback, a fresh one per tool",
            (None, ServerKind::S3sFs) => "s3s-fs on loopback, a fresh one per tool",
            (Some(url), _) => url.as_str(),
        }
    );
    let a = Arc::new(a);
    let mut rounds: Vec<Round> = Vec::new();
    for r in 0..a.rounds {
        // Each round runs the tools in another order, so none always goes first.
        let mut order = vec![Tool::Ours, Tool::S3fs, Tool::Rclone];
        order.rotate_left(r % 3);
        if a.rounds > 1 {
            eprintln!("round {} of {}", r + 1, a.rounds);
        }
        let round = one_round(&a, &order).await?;
        if r == 0 {
            print_requests(&round.raw, &round.tools);
        }
        let title = if a.rounds > 1 {
            format!("round {} of {}", r + 1, a.rounds)
        } else {
            String::new()
        };
        print_table(&title, &[round.ratios()]);
        rounds.push(round);
    }
    if rounds.len() > 1 {
        let title = format!(
            "median of {} rounds (ratios: the median of each round's own)",
            rounds.len()
        );
        let each: Vec<Table> = rounds.iter().map(Round::ratios).collect();
        print_table(&title, &each);
    }
    Ok(())
}

/// Every figure of one round: raw and each tool (`None`: skipped or failed).
struct Round {
    raw: Figures,
    tools: Vec<(Tool, Option<Figures>)>,
}

/// One round's figures and ratios, row by row: raw, ours, s3fs, rclone, ours vs the best
/// peer, ours vs raw.
type Table = Vec<[Option<f64>; 6]>;

const ROWS: [(&str, Row); 20] = [
    ("sequential write (MiB/s)", |f| f.write_mbs),
    ("sequential read (MiB/s)", |f| f.read_mbs),
    ("small files created (files/s)", |f| f.create_fps),
    ("small files read (files/s)", |f| f.read_fps),
    ("`ls -f` (entries/s)", |f| f.list_eps),
    ("`ls -l` (entries/s)", |f| f.stat_eps),
    ("memory idle (MiB)", |f| f.memory.map(|m| m[0])),
    ("memory idle, anonymous (MiB)", |f| f.anon_idle),
    ("memory peak in write (MiB)", |f| f.memory.map(|m| m[1])),
    ("memory peak in read (MiB)", |f| f.memory.map(|m| m[2])),
    ("daemon CPU in write (s/GiB)", |f| f.cpu_write),
    ("daemon CPU in read (s/GiB)", |f| f.cpu_read),
    ("machine CPU in write (s/GiB)", |f| f.machine_write.cpu),
    ("machine CPU in read (s/GiB)", |f| f.machine_read.cpu),
    ("machine busy in write (%)", |f| {
        f.machine_write.busy.map(|b| b * 100.0)
    }),
    ("machine busy in read (%)", |f| {
        f.machine_read.busy.map(|b| b * 100.0)
    }),
    ("FUSE floor, write (s/GiB)", |f| f.floor[0]),
    ("FUSE floor, read (s/GiB)", |f| f.floor[1]),
    ("CPU ceiling, write (x raw)", |f| f.ceiling[0]),
    ("CPU ceiling, read (x raw)", |f| f.ceiling[1]),
];

/// Rows where less is better: the best peer is the lowest.
fn lower_is_better(label: &str) -> bool {
    label.starts_with("memory") || label.contains("CPU in")
}

impl Round {
    fn ratios(&self) -> Table {
        let get = |tool: Tool, row: Row| {
            self.tools
                .iter()
                .find(|(t, _)| *t == tool)
                .and_then(|(_, f)| f.as_ref())
                .and_then(row)
        };
        let over = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        ROWS.iter()
            .map(|(label, row)| {
                let ours = get(Tool::Ours, *row);
                let (s3fs, rclone) = (get(Tool::S3fs, *row), get(Tool::Rclone, *row));
                let best = |m: f64, v: f64| {
                    if lower_is_better(label) {
                        m.min(v)
                    } else {
                        m.max(v)
                    }
                };
                let best_peer = [s3fs, rclone]
                    .into_iter()
                    .flatten()
                    .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| best(m, v))));
                let raw = row(&self.raw);
                [
                    raw,
                    ours,
                    s3fs,
                    rclone,
                    over(ours, best_peer),
                    over(ours, raw),
                ]
            })
            .collect()
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Prints `tables` (one per round) as one: each cell the median over the rounds.
fn print_table(title: &str, tables: &[Table]) {
    println!();
    if !title.is_empty() {
        println!("{title}");
    }
    println!(
        "{:<32} {:>10} {:>12} {:>10} {:>10} {:>14} {:>10}",
        "row", "raw", "s3files-csi", "s3fs", "rclone", "vs best peer", "vs raw"
    );
    for (i, (label, _)) in ROWS.iter().enumerate() {
        let cell_of = |c: usize| median(tables.iter().filter_map(|t| t[i][c]).collect());
        let figure = |c: usize| cell(cell_of(c));
        let times = |c: usize| {
            cell_of(c)
                .map(|v| format!("{v:.2}x"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<32} {:>10} {:>12} {:>10} {:>10} {:>14} {:>10}",
            label,
            figure(0),
            figure(1),
            figure(2),
            figure(3),
            times(4),
            times(5),
        );
    }
}

/// The FUSE floor of writing and of reading `size` bytes: the machine's CPU seconds per GiB
/// through a file system that does nothing, the cheaper of with and without the page cache.
fn fuse_floor(size: u64) -> [Option<f64>; 2] {
    let mut best = [None::<f64>; 2];
    for direct in [false, true] {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(_) => return best,
        };
        match null_fuse::floor(&dir.path().join("null"), size, direct) {
            Ok((write, read)) => {
                println!(
                    "FUSE floor ({}): write {write:.2}, read {read:.2} machine CPU s/GiB",
                    null_fuse::mode_name(direct)
                );
                for (b, v) in best.iter_mut().zip([write, read]) {
                    *b = Some(b.map_or(v, |b: f64| b.min(v)));
                }
            }
            Err(e) => println!("FUSE floor: not measured ({e:#})"),
        }
    }
    best
}

/// Machine CPU seconds per GiB to touch `size` bytes of memory the process never had, one
/// write per page: what handing out fresh pages costs on this machine. A read through the page
/// cache takes a fresh page for every page it reads; a raw client reads into buffers it reuses.
fn fresh_memory(size: u64) -> Option<f64> {
    let span = Span::start();
    let mut block = Vec::<u8>::with_capacity(size as usize);
    for byte in block.spare_capacity_mut().iter_mut().step_by(4096) {
        byte.write(1);
    }
    std::hint::black_box(&block);
    span.end(size).cpu
}

/// How this VM hands freed memory back to its host, when it does (free page reporting): the
/// smallest block it reports and how long a block stays free first. A page the host took back
/// costs a fault on the host the next time it is touched, so with blocks reported at once a
/// client that reads through the page cache pays for memory that a raw client, reading into
/// buffers it reuses, never asks for (docs/BENCHMARKS.md, "Free page reporting").
fn page_reporting() -> Option<String> {
    let param = |name: &str| {
        std::fs::read_to_string(format!("/sys/module/page_reporting/parameters/{name}"))
            .ok()
            .map(|v| v.trim().to_owned())
    };
    let order: u32 = param("page_reporting_order")?.parse().ok()?;
    let held = param("min_free_ms").map_or(String::new(), |ms| format!(", held {ms} ms first"));
    Some(format!(
        "free page reporting: blocks of {} KiB and more go back to the host{held}",
        4u64 << order
    ))
}

/// Raw, then each tool in `order`, each against a fresh server.
async fn one_round(a: &Arc<Args>, order: &[Tool]) -> anyhow::Result<Round> {
    eprintln!("FUSE floor...");
    let floor = fuse_floor(a.size_mib << 20);
    if let Some(fresh) = fresh_memory(a.size_mib << 20) {
        println!("fresh memory: {fresh:.2} machine CPU s/GiB to touch");
    }
    if let Some(reporting) = page_reporting() {
        println!("{reporting}");
    }
    eprintln!("raw...");
    // The ceiling is no system under test: one that fails (s3s-fs once refused a part under
    // load, ending a 3-round run) is measured again on a fresh server, once.
    let mut attempt = 0;
    let raw = loop {
        attempt += 1;
        let server = Server::start(a, "raw").await?;
        // boto3 writes into a server of its own: a fresh server is what each mount and
        // object_store meet, and moto serves a second 1 GiB faster than the first (256 MiB by
        // hand: 85-107 MiB/s into a fresh moto, 142-159 once one had been written).
        let boto3 = Server::start(a, "boto3").await?;
        let measured = measure_raw(
            server.store.clone(),
            &server.tally,
            a,
            &boto3.url,
            &boto3.bucket,
            floor,
        )
        .await;
        match measured {
            Ok(f) => break f,
            Err(e) if attempt == 1 => eprintln!("raw failed ({e:#}); measuring it again"),
            Err(e) => return Err(e),
        }
    };
    let mut tools: Vec<(Tool, Option<Figures>)> = Vec::new();
    for &tool in order {
        if !a.tools.iter().any(|t| t == tool.name()) {
            tools.push((tool, None));
            continue;
        }
        if tool != Tool::Ours && !installed(tool.name()) {
            println!(
                "{}: not installed (apt-get install -y s3fs rclone fuse3)",
                tool.name()
            );
            tools.push((tool, None));
            continue;
        }
        eprintln!("{}...", tool.name());
        let server = Server::start(a, tool.name()).await?;
        // Ours reaches the bucket through an emulated file system; the peers take it directly.
        let setup = match tool {
            Tool::Ours => emulated(&server).await?,
            _ => Setup {
                s3_url: server.url.clone(),
                bucket: server.bucket.clone(),
                emulator_url: String::new(),
                fs_id: String::new(),
                ap_id: String::new(),
                dir: tempfile::tempdir()?,
            },
        };
        let raw = Raw {
            store: server.checker.clone(),
            rt: tokio::runtime::Handle::current(),
            tally: server.tally.clone(),
        };
        let a2 = a.clone();
        let outcome =
            tokio::task::spawn_blocking(move || measure_mount(tool, &setup, &raw, &a2)).await?;
        match outcome {
            Ok(f) => tools.push((tool, Some(f))),
            Err(e) => {
                println!("{}: failed: {e:#}", tool.name());
                tools.push((tool, None));
            }
        }
    }
    Ok(Round { raw, tools })
}
