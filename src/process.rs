//! Child processes of the node plugin: the ones it waits for itself, and the orphans it reaps.
//!
//! In its container the node plugin is PID 1, and it is also made a child subreaper, so every
//! process that mount.s3files leaves behind (efs-proxy is started with `setsid` and outlives
//! the helper) is re-parented to it. When such a process exits, nobody else will collect its
//! exit status, so without a reaper it stays `<defunct>` forever. [`Children`] reaps those
//! orphans, and only those: a process the plugin spawned and waits for itself (the mount helper,
//! the watchdog) is registered while it runs, so the reaper never takes its exit status from
//! under tokio's `wait`. Spawning and scanning take the same lock, so a child cannot exit and be
//! reaped between its spawn and its registration.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

/// The plugin's children: those it waits for, and the reaping of the rest.
#[derive(Default)]
pub struct Children {
    waited: Mutex<HashSet<i32>>,
}

/// A registered child; dropping it hands the pid back to the reaper.
pub struct Registered {
    children: Arc<Children>,
    pid: i32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.children.lock().remove(&self.pid);
    }
}

impl Children {
    pub fn new() -> Arc<Self> {
        Arc::new(Children::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<i32>> {
        self.waited.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `cmd` and registers the child until the returned guard is dropped (after the
    /// caller's `wait`). The reaper leaves a registered child alone.
    pub fn spawn(
        self: &Arc<Self>,
        cmd: &mut tokio::process::Command,
    ) -> std::io::Result<(tokio::process::Child, Option<Registered>)> {
        let mut waited = self.lock();
        let child = cmd.spawn()?;
        let registered = child.id().map(|pid| {
            let pid = pid as i32;
            waited.insert(pid);
            Registered {
                children: self.clone(),
                pid,
            }
        });
        Ok((child, registered))
    }

    /// Reaps every exited child that nobody waits for; returns how many.
    pub fn reap(&self) -> usize {
        let waited = self.lock();
        let me = std::process::id() as i32;
        let mut reaped = 0;
        for (pid, state, comm) in children_of(me) {
            if state != 'Z' || waited.contains(&pid) {
                continue;
            }
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => {
                    reaped += 1;
                    debug!(pid, %comm, ?status, "reaped an orphaned process");
                }
                // Someone else (a wait in flight elsewhere) took it first.
                Err(nix::errno::Errno::ECHILD) => {}
                Err(e) => warn!(pid, error = %e, "waitpid failed"),
            }
        }
        reaped
    }
}

/// Makes this process the reaper of its orphaned descendants (PR_SET_CHILD_SUBREAPER), so they
/// come back to it rather than to the host's init when the plugin is not PID 1.
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Reaps orphans on every SIGCHLD, and every 10 s in case a signal was coalesced or missed.
pub async fn reap_forever(children: Arc<Children>) {
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot watch SIGCHLD; reaping every 10 s only");
            None
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        match sigchld.as_mut() {
            Some(s) => {
                tokio::select! {
                    _ = s.recv() => {}
                    _ = tick.tick() => {}
                }
            }
            None => {
                tick.tick().await;
            }
        }
        let children = children.clone();
        match tokio::task::spawn_blocking(move || children.reap()).await {
            Ok(0) => {}
            Ok(n) => info!(count = n, "reaped orphaned processes"),
            Err(e) => warn!(error = %e, "reaper thread failed"),
        }
    }
}

/// `(pid, state, comm)` of every process whose parent is `parent`, from `/proc/*/stat`.
pub fn children_of(parent: i32) -> Vec<(i32, char, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (ppid, state, comm) = parse_stat(&stat)?;
            (ppid == parent).then_some((pid, state, comm))
        })
        .collect()
}

/// `(ppid, state, comm)` from a `/proc/PID/stat` line. The command name is in parentheses and
/// may itself hold spaces and parentheses, so the fields are read after the last `)`.
fn parse_stat(stat: &str) -> Option<(i32, char, String)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ppid, state, comm))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reaping itself is tested through the node binary (tests/node.rs): in a test binary,
    // whose tests share one process, reaping would take other tests' children.

    #[test]
    fn stat_lines_are_read_after_the_command_name() {
        assert_eq!(
            parse_stat("4242 (efs-proxy) Z 1 4242 4242 0 -1 4194560"),
            Some((1, 'Z', "efs-proxy".into()))
        );
        assert_eq!(
            parse_stat("77 (a) b (c)) S 12 77 77 0"),
            Some((12, 'S', "a) b (c)".into()))
        );
        assert_eq!(parse_stat("garbage"), None);
    }
}
