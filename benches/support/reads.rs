//! `--reads N`: the sequential read row alone, N times over one object on one server, to tell
//! apart gaps of a few percent that a full run's noise hides (one round's read ratio moved
//! between 0.77x and 1.26x for one build).
//!
//! Each repetition reads the object raw, as a full run does (one streaming GET, object_store's
//! parallel ranges and boto3 where it is installed; on moto the stream alone), then through a fresh mount of each
//! build of ours in a rotating order (`S3FILES_BENCH_BIN=A,B,...`, comma-separated; this tree's
//! build without it), with the page cache dropped before every read. Every mount's read is
//! paired with the best raw read of its own repetition, and every build after the first with
//! the first build's read of the same repetition; the run ends with the median and quartiles of
//! each, and with what fresh memory cost the machine before and after the reads.
//!
//! Every read prints when its first bytes came. Where one stream is the fastest raw read (on
//! moto), each repetition also measures the FUSE floor and prints the fastest any FUSE client
//! reading through the page cache could read, given the stream's load time and the machine's
//! CPU (see the comment where it is computed); the summary gives each build's reads over that
//! ceiling. With more than one build it also gives the first mount read of every repetition,
//! which comes right after the raw reads and the floor, apart from the others: on this VM it
//! is often the slower.

use std::ffi::OsString;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;

use super::null_fuse;
use super::{
    Args, Run, Server, ServerKind, Tool, boto3_read, cpu_seconds, daemon_of, drop_caches, emulated,
    fresh_memory, mount_build, ours_bin, page_reporting, pattern, per_gib, put_raw, read_file,
    read_raw, read_streamed,
};

/// The object every read reads, under the access point's root (`/ours`).
const KEY: &str = "ours/big.bin";

/// Runs `a.reads` repetitions and prints each, then the summary.
pub async fn run(a: &Args) -> anyhow::Result<()> {
    let builds: Vec<OsString> = match std::env::var("S3FILES_BENCH_BIN") {
        Ok(list) => list.split(',').map(OsString::from).collect(),
        Err(_) => vec![ours_bin()],
    };
    let size = a.size_mib << 20;
    let server = Server::start(a, "reads").await?;
    let setup = Arc::new(emulated(&server).await?);
    let buf = bytes::Bytes::from(pattern());
    let key = ObjectPath::from(KEY);
    let fresh_before = fresh_memory(size);
    put_raw(&server.store, &key, size, &buf).await?;
    println!(
        "{} reads of {} MiB, each build against the best raw read of the same repetition",
        a.reads, a.size_mib
    );
    for (i, bin) in builds.iter().enumerate() {
        println!("  build {}: {}", i + 1, bin.to_string_lossy());
    }

    // Per build: each repetition's ratio to raw, and to build 1; machine busy share.
    let mut to_raw = vec![Vec::new(); builds.len()];
    let mut to_first = vec![Vec::new(); builds.len()];
    let mut busy = vec![Vec::new(); builds.len() + 1];
    let mut ceiling = Vec::new();
    // Per build: each read's ratio to raw over its repetition's ceiling, where there is one.
    let mut to_ceiling = vec![Vec::new(); builds.len()];
    // Every build's ratio to raw: the first mount read after the raw reads, and the others.
    let mut by_order = [Vec::new(), Vec::new()];
    // Seconds until the first bytes: raw's stream, then each build.
    let mut first = vec![Vec::new(); builds.len() + 1];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let null_dir = tempfile::tempdir()?;
    for rep in 0..a.reads {
        drop_caches();
        let mut raw = vec![read_streamed(&server.store, &key, size).await?];
        // moto copies the whole object for every ranged GET: object_store's ranges and boto3
        // read 1 GiB at about 11 MiB/s there, a twentieth of the stream.
        if a.server != ServerKind::Moto {
            drop_caches();
            raw.push(read_raw(&server.store, &key, size).await?);
            drop_caches();
            let (url, bucket) = (server.url.clone(), server.bucket.clone());
            let boto3 =
                tokio::task::spawn_blocking(move || boto3_read(&url, &bucket, size, KEY)).await?;
            raw.extend(boto3);
        }
        let best = raw
            .iter()
            .copied()
            .max_by(|a, b| a.mbs.total_cmp(&b.mbs))
            .unwrap_or_default();
        busy[0].extend(best.busy);
        let mut line = format!(
            "{:>3}  raw {:.1} MiB/s ({}; stream's first bytes {})",
            rep + 1,
            best.mbs,
            raw.iter()
                .map(|r| format!("{:.1}", r.mbs))
                .collect::<Vec<_>>()
                .join(" / "),
            seconds(raw[0].first)
        );
        first[0].extend(raw[0].first);
        // Where one stream is the fastest raw read (moto), the fastest any FUSE client could
        // read: nothing reaches the kernel before the stream's first bytes; after them the
        // machine does at least the stream's own work (the server's sending, the socket's
        // receive) plus the FUSE floor, on every core at once, and no faster than the stream
        // alone.
        let stream = raw[0];
        let floor = || {
            null_fuse::floor(&null_dir.path().join("null"), size, false)
                .ok()
                .map(|(_, read)| read)
        };
        let mut rep_ceiling = None;
        if let (Some(first), Some(after), true) =
            (stream.first, stream.cpu_after_first, stream.mbs >= best.mbs)
            && let Some(floor) = floor()
        {
            let (mib, gib) = (
                size as f64 / (1 << 20) as f64,
                size as f64 / (1u64 << 30) as f64,
            );
            let secs = mib / stream.mbs;
            let fastest = first + (secs - first).max((after + floor) * gib / cores);
            let bound = mib / fastest / best.mbs;
            ceiling.push(bound);
            rep_ceiling = Some(bound);
            line += &format!(
                "  [stream after its first bytes: {:.2} s, {:.2} CPU s/GiB; floor {:.2} s/GiB; a FUSE client at most {:.2}x]",
                secs - first,
                after,
                floor,
                bound
            );
        }
        let mut got = vec![Run::default(); builds.len()];
        for k in 0..builds.len() {
            let j = (rep + k) % builds.len();
            let (setup, buf, bin) = (setup.clone(), buf.clone(), builds[j].clone());
            let (run, cpu) = tokio::task::spawn_blocking(move || {
                drop_caches();
                let m = mount_build(Tool::Ours, &setup, &format!("read{j}"), &bin)?;
                let daemon = daemon_of(&m);
                let before = daemon.and_then(cpu_seconds);
                let run = read_file(&m.join("big.bin"), size, &buf)?;
                anyhow::Ok((run, per_gib(before, daemon.and_then(cpu_seconds), size)))
            })
            .await??;
            got[j] = run;
            to_raw[j].push(run.mbs / best.mbs);
            by_order[usize::from(k > 0)].push(run.mbs / best.mbs);
            to_ceiling[j].extend(rep_ceiling.map(|c| run.mbs / best.mbs / c));
            busy[j + 1].extend(run.busy);
            first[j + 1].extend(run.first);
            line += &format!(
                "  #{} {:.1} {:.2}x (first bytes {} s, busy {}, daemon {} s/GiB)",
                j + 1,
                run.mbs,
                run.mbs / best.mbs,
                seconds(run.first),
                percent(run.busy),
                cpu.map_or("-".into(), |c| format!("{c:.2}"))
            );
        }
        for j in 1..builds.len() {
            to_first[j].push(got[j].mbs / got[0].mbs);
        }
        println!("{line}");
    }

    let fresh_after = fresh_memory(size);
    println!("summary over {} repetitions (median [quartiles]):", a.reads);
    if !ceiling.is_empty() {
        println!(
            "  the fastest a FUSE client could read with one stream: {} raw",
            spread(&ceiling)
        );
    }
    println!(
        "  fresh memory: {} machine CPU s/GiB to touch before the reads, {} after",
        seconds(fresh_before),
        seconds(fresh_after)
    );
    if let Some(reporting) = page_reporting() {
        println!("  {reporting}");
    }
    println!(
        "  raw: machine busy {}, the stream's first bytes after {} s",
        percent(quantile(&busy[0], 0.5)),
        seconds(quantile(&first[0], 0.5))
    );
    for j in 0..builds.len() {
        let mut text = format!(
            "  #{}: {} raw, machine busy {}, first bytes after {} s",
            j + 1,
            spread(&to_raw[j]),
            percent(quantile(&busy[j + 1], 0.5)),
            seconds(quantile(&first[j + 1], 0.5))
        );
        if j > 0 {
            text += &format!(", {} build 1", spread(&to_first[j]));
        }
        if !to_ceiling[j].is_empty() {
            text += &format!(", {} the ceiling", spread(&to_ceiling[j]));
        }
        println!("{text}");
    }
    if !by_order[1].is_empty() {
        println!(
            "  every build: the first mount read after the raw reads {} raw, the others {}",
            spread(&by_order[0]),
            spread(&by_order[1])
        );
    }
    Ok(())
}

/// `values`' `q` quantile (nearest rank), `None` when empty.
fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let last = sorted.len().checked_sub(1)?;
    sorted.get((last as f64 * q).round() as usize).copied()
}

/// "0.93x [0.90x-0.95x]": the median ratio and its quartiles.
fn spread(ratios: &[f64]) -> String {
    let at = |q| quantile(ratios, q).map_or("-".into(), |r| format!("{r:.2}x"));
    format!("{} [{}-{}]", at(0.5), at(0.25), at(0.75))
}

fn seconds(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{s:.2}"))
}

fn percent(share: Option<f64>) -> String {
    share.map_or("-".into(), |b| format!("{:.0}%", b * 100.0))
}
