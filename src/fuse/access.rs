//! Who an operation acts as, and the POSIX rules that decide what they may do.
//!
//! Through an access point with a POSIX user, every operation acts as that user whatever the
//! caller, as S3 Files enforces; without one, the caller's own ids count. The rules are Linux's
//! (permission bits; who may chmod, chown and set times; when set-user/group-ID bits are
//! cleared), checked here because the mount does not use the kernel's `default_permissions`:
//! the access point's user replaces the caller's ids, which the kernel cannot know.

use std::sync::OnceLock;
use std::time::SystemTime;

use super::error::FsError;
use super::objects::{Posix, S_IFDIR, S_IFMT, S_IFREG};

pub const R: u32 = 4;
pub const W: u32 = 2;
pub const X: u32 = 1;
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o010;

/// The ids of the process that made a request, as the kernel reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A user as the file system checks permissions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Groups,
}

/// Supplementary groups of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Groups {
    /// Known up front (an access point's POSIX user).
    Listed(Vec<u32>),
    /// The calling process's, read from /proc the first time a check needs them: most checks
    /// are settled by the owner or the primary group, and a lookup or create should not cost
    /// a read of /proc.
    OfProcess { pid: u32, read: OnceLock<Vec<u32>> },
}

impl Groups {
    fn contains(&self, gid: u32) -> bool {
        match self {
            Groups::Listed(groups) => groups.contains(&gid),
            Groups::OfProcess { pid, read } => {
                read.get_or_init(|| process_groups(*pid)).contains(&gid)
            }
        }
    }
}

/// Supplementary groups of a process (`/proc/<pid>/status`).
fn process_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Whose identity operations carry.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The access point's POSIX user; `None`: callers act as themselves.
    pub user: Option<User>,
    /// Owner shown for objects that carry no POSIX attributes.
    pub default_uid: u32,
    pub default_gid: u32,
}

impl Identity {
    /// Who a request of `caller` acts as.
    pub fn user(&self, caller: &Caller) -> User {
        match &self.user {
            Some(user) => user.clone(),
            None => User {
                uid: caller.uid,
                gid: caller.gid,
                groups: Groups::OfProcess {
                    pid: caller.pid,
                    read: OnceLock::new(),
                },
            },
        }
    }
}

impl User {
    fn is_root(&self) -> bool {
        self.uid == 0
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(gid)
    }

    fn owns(&self, p: &Posix) -> bool {
        self.is_root() || self.uid == p.uid
    }

    /// Whether this user may access a file with attributes `p` for `want` (bits [`R`], [`W`],
    /// [`X`]) by its owner, group and other bits. Root may do anything but execute a file that
    /// no one may execute.
    pub fn permits(&self, p: &Posix, want: u32) -> bool {
        if self.is_root() {
            return want & X == 0 || p.file_type() == S_IFDIR || p.mode & 0o111 != 0;
        }
        let bits = if self.uid == p.uid {
            p.mode >> 6
        } else if self.in_group(p.gid) {
            p.mode >> 3
        } else {
            p.mode
        } & 7;
        bits & want == want
    }

    pub fn check(&self, p: &Posix, want: u32) -> Result<(), FsError> {
        if self.permits(p, want) {
            Ok(())
        } else {
            Err(FsError::Denied)
        }
    }

    /// Whether this user may remove or rename `child` out of directory `dir`: write and search
    /// on the directory, and in a sticky directory also ownership of the child or the directory.
    pub fn may_unlink(&self, dir: &Posix, child: &Posix) -> Result<(), FsError> {
        self.check(dir, W | X)?;
        if dir.mode & 0o1000 != 0 && !self.owns(child) && !self.owns(dir) {
            return Err(FsError::NotPermitted("the directory is sticky"));
        }
        Ok(())
    }

    /// Attributes of what this user creates in directory `parent` with `mode` (type and bits,
    /// the umask applied). A set-group-ID directory hands down its group, and to directories
    /// its set-group-ID bit; a set-group-ID bit on a file in a group the creator is not in is
    /// dropped.
    pub fn new_posix(&self, parent: &Posix, mode: u32) -> Posix {
        let mut mode = mode;
        let gid = if parent.mode & S_ISGID != 0 {
            if mode & S_IFMT == S_IFDIR {
                mode |= S_ISGID;
            }
            parent.gid
        } else {
            self.gid
        };
        if mode & S_IFMT != S_IFDIR && mode & S_ISGID != 0 && !self.is_root() && !self.in_group(gid)
        {
            mode &= !S_ISGID;
        }
        Posix {
            uid: self.uid,
            gid,
            mode,
            ..Posix::default()
        }
    }

    /// The attributes after a setattr of `mode`, `uid`, `gid` on `p`, or why not.
    ///
    /// The kernel clears set-user/group-ID bits itself after a write, a truncate or a chown by
    /// sending a mode change in the caller's name; such a change, which only drops those bits,
    /// is allowed to anyone (otherwise a non-owner could not write a 0777 set-user-ID file).
    pub fn change(
        &self,
        p: &Posix,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<Posix, FsError> {
        let mut out = *p;
        if let Some(uid) = uid
            && uid != p.uid
        {
            if !self.is_root() {
                return Err(FsError::NotPermitted("only root gives a file away"));
            }
            out.uid = uid;
        }
        if let Some(gid) = gid
            && gid != p.gid
        {
            let owner_in_group = self.uid == p.uid && self.in_group(gid);
            if !(self.is_root() || owner_in_group) {
                return Err(FsError::NotPermitted(
                    "only the owner changes the group, to one of its own",
                ));
            }
            out.gid = gid;
        }
        if (uid.is_some() || gid.is_some()) && p.file_type() != S_IFDIR {
            // A chown, even root's or to the same ids, drops set-user-ID, and set-group-ID
            // where the group may execute (where it is not a mandatory-locking mark).
            out.mode &= !S_ISUID;
            if out.mode & S_IXGRP != 0 {
                out.mode &= !S_ISGID;
            }
        }
        if let Some(mode) = mode {
            let wanted = (p.mode & S_IFMT) | (mode & 0o7777);
            let only_drops_ids = wanted & !(S_ISUID | S_ISGID) == out.mode & !(S_ISUID | S_ISGID)
                && wanted & !out.mode == 0;
            if !self.owns(p) && !only_drops_ids {
                return Err(FsError::NotPermitted("only the owner changes the mode"));
            }
            out.mode = wanted;
            if !self.is_root() && !self.in_group(out.gid) {
                out.mode &= !S_ISGID;
            }
        }
        Ok(out)
    }

    /// The attributes after a setattr of times on `p`: to now needs ownership or write
    /// permission, to a given time ownership.
    pub fn touch(
        &self,
        p: &Posix,
        atime: Option<Time>,
        mtime: Option<Time>,
    ) -> Result<Posix, FsError> {
        let explicit = matches!(atime, Some(Time::At(_))) || matches!(mtime, Some(Time::At(_)));
        if !self.owns(p) {
            if explicit {
                return Err(FsError::NotPermitted("only the owner sets a file's times"));
            }
            self.check(p, W)?;
        }
        let now = SystemTime::now();
        let at = |t: Time| match t {
            Time::Now => now,
            Time::At(t) => t,
        };
        let mut out = *p;
        if let Some(t) = atime {
            out.atime = Some(at(t));
        }
        if let Some(t) = mtime {
            out.mtime = Some(at(t));
        }
        Ok(out)
    }
}

/// The attributes of `p` after a write by a process without `CAP_FSETID`: a regular file loses
/// set-user-ID, and set-group-ID where the group may execute (without group execute the bit
/// marks mandatory locking and stays), as the kernel's `should_remove_suid` decides.
pub fn after_unprivileged_write(p: &Posix) -> Posix {
    let mut out = *p;
    if p.file_type() == S_IFREG {
        out.mode &= !S_ISUID;
        if out.mode & S_IXGRP != 0 {
            out.mode &= !S_ISGID;
        }
    }
    out
}

/// A time a setattr asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Time {
    Now,
    At(SystemTime),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::objects::S_IFREG;

    fn posix(uid: u32, gid: u32, mode: u32) -> Posix {
        Posix {
            uid,
            gid,
            mode,
            ..Posix::default()
        }
    }

    fn user(uid: u32, gid: u32, groups: &[u32]) -> User {
        User {
            uid,
            gid,
            groups: Groups::Listed(groups.to_vec()),
        }
    }

    #[test]
    fn permissions_follow_owner_group_other() {
        let alice = user(1000, 1000, &[50]);
        let file = posix(1000, 1000, S_IFREG | 0o640);
        assert!(alice.permits(&file, R | W));
        assert!(!alice.permits(&file, X));
        let shared = posix(2000, 50, S_IFREG | 0o640);
        assert!(alice.permits(&shared, R), "supplementary group");
        assert!(!alice.permits(&shared, W));
        let other = posix(2000, 2000, S_IFDIR | 0o755);
        assert!(alice.permits(&other, R | X));
        assert!(!alice.permits(&other, W));
        // The owner's bits count even when they grant less than the group's.
        let owner_less = posix(1000, 1000, S_IFREG | 0o070);
        assert!(!alice.permits(&owner_less, R));
        let root = user(0, 0, &[]);
        assert!(root.permits(&posix(5, 5, S_IFREG), R | W));
        assert!(!root.permits(&posix(5, 5, S_IFREG | 0o644), X));
        assert!(root.permits(&posix(5, 5, S_IFDIR), X));
    }

    /// Who, on what, mode, uid, gid; and the mode bits after, or the errno.
    type Case<'a> = (
        &'a User,
        Posix,
        Option<u32>,
        Option<u32>,
        Option<u32>,
        Result<u32, i32>,
    );

    #[test]
    fn setattr_rules_for_mode_and_owner() {
        let owner = user(1000, 1000, &[]);
        let stranger = user(2000, 2000, &[]);
        let root = user(0, 0, &[]);
        let member = user(1000, 1000, &[50]);
        let file = posix(1000, 1000, S_IFREG | 0o644);
        let dropped = |p: &Posix| p.mode & 0o7777;
        // (who, on, mode, uid, gid, outcome: Ok(mode bits) or Err(errno))
        let cases: Vec<Case> = vec![
            (&owner, file, Some(0o600), None, None, Ok(0o600)),
            (&stranger, file, Some(0o600), None, None, Err(1)),
            (&root, file, Some(0o600), None, None, Ok(0o600)),
            // Set-group-ID on a file of a group the owner is not in is dropped.
            (
                &owner,
                posix(1000, 50, S_IFREG | 0o644),
                Some(0o2755),
                None,
                None,
                Ok(0o755),
            ),
            (&owner, file, Some(0o2755), None, None, Ok(0o2755)),
            (
                &root,
                posix(1000, 50, S_IFREG),
                Some(0o2755),
                None,
                None,
                Ok(0o2755),
            ),
            // The kernel dropping set-user-ID after a stranger's write.
            (
                &stranger,
                posix(1000, 1000, S_IFREG | 0o4777),
                Some(0o777),
                None,
                None,
                Ok(0o777),
            ),
            (
                &stranger,
                posix(1000, 1000, S_IFREG | 0o4777),
                Some(0o4777),
                None,
                None,
                Ok(0o4777),
            ),
            (
                &stranger,
                posix(1000, 1000, S_IFREG | 0o4777),
                Some(0o666),
                None,
                None,
                Err(1),
            ),
            // chown: only root changes the owner; the owner changes the group to its own.
            (&owner, file, None, Some(2000), None, Err(1)),
            (&owner, file, None, Some(1000), None, Ok(0o644)),
            (&root, file, None, Some(2000), None, Ok(0o644)),
            (&owner, file, None, None, Some(50), Err(1)),
            (&member, file, None, None, Some(50), Ok(0o644)),
            (&stranger, file, None, None, Some(2000), Err(1)),
            // A chown drops set-user-ID, and set-group-ID with group execute, even root's.
            (
                &root,
                posix(1000, 1000, S_IFREG | 0o6755),
                None,
                Some(5),
                None,
                Ok(0o755),
            ),
            (
                &root,
                posix(1000, 1000, S_IFREG | 0o6745),
                None,
                None,
                Some(5),
                Ok(0o2745),
            ),
            (
                &root,
                posix(1000, 1000, S_IFDIR | 0o6755),
                None,
                Some(5),
                None,
                Ok(0o6755),
            ),
        ];
        for (i, (who, on, mode, uid, gid, want)) in cases.into_iter().enumerate() {
            let got = who
                .change(&on, mode, uid, gid)
                .map(|p| dropped(&p))
                .map_err(|e| e.errno().code());
            assert_eq!(got, want, "case {i}: {who:?} on {on:?}");
        }
    }

    #[test]
    fn times_are_set_to_now_with_write_access_and_to_a_given_time_by_the_owner() {
        let owner = user(1000, 1000, &[]);
        let writer = user(2000, 1000, &[]);
        let stranger = user(3000, 3000, &[]);
        let file = posix(1000, 1000, S_IFREG | 0o664);
        let then = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let at = Some(Time::At(then));
        let now = Some(Time::Now);
        assert_eq!(owner.touch(&file, at, at).expect("owner").mtime, Some(then));
        assert_eq!(
            owner.touch(&file, None, at).expect("mtime only").atime,
            None
        );
        assert!(
            writer.touch(&file, now, now).is_ok(),
            "write permission: now"
        );
        assert_eq!(
            writer.touch(&file, at, None).map_err(|e| e.errno()).err(),
            Some(fuser::Errno::EPERM),
            "a given time needs ownership"
        );
        assert_eq!(
            stranger.touch(&file, now, now).map_err(|e| e.errno()).err(),
            Some(fuser::Errno::EACCES)
        );
    }

    #[test]
    fn new_files_take_the_group_of_a_set_group_id_directory() {
        let alice = user(1000, 1000, &[]);
        let plain = posix(0, 50, S_IFDIR | 0o777);
        let sgid = posix(0, 50, S_IFDIR | 0o2777);
        assert_eq!(alice.new_posix(&plain, S_IFREG | 0o644).gid, 1000);
        let file = alice.new_posix(&sgid, S_IFREG | 0o2644);
        assert_eq!(
            (file.gid, file.mode & 0o7777),
            (50, 0o644),
            "not in 50: bit dropped"
        );
        let dir = alice.new_posix(&sgid, S_IFDIR | 0o755);
        assert_eq!(
            (dir.gid, dir.mode & 0o7777),
            (50, 0o2755),
            "directories inherit the bit"
        );
    }

    #[test]
    fn a_sticky_directory_lets_only_owners_remove() {
        let alice = user(1000, 1000, &[]);
        let tmp = posix(0, 0, S_IFDIR | 0o1777);
        assert!(alice.may_unlink(&tmp, &posix(1000, 1000, S_IFREG)).is_ok());
        assert_eq!(
            alice
                .may_unlink(&tmp, &posix(2000, 2000, S_IFREG))
                .map_err(|e| e.errno())
                .err(),
            Some(fuser::Errno::EPERM)
        );
        let own_tmp = posix(1000, 0, S_IFDIR | 0o1777);
        assert!(
            alice
                .may_unlink(&own_tmp, &posix(2000, 2000, S_IFREG))
                .is_ok()
        );
        assert!(
            alice
                .may_unlink(&posix(0, 0, S_IFDIR | 0o755), &posix(1000, 1000, S_IFREG))
                .is_err()
        );
    }

    #[test]
    fn an_unprivileged_write_drops_set_ids_as_the_kernel_would() {
        let cases = [
            (S_IFREG | 0o4777, 0o777),
            // Set-group-ID goes only with group execute; without it, it marks locking.
            (S_IFREG | 0o6755, 0o755),
            (S_IFREG | 0o2745, 0o2745),
            (S_IFREG | 0o644, 0o644),
            // Only regular files.
            (S_IFDIR | 0o2775, 0o2775),
        ];
        for (mode, want) in cases {
            let after = after_unprivileged_write(&posix(1000, 1000, mode));
            assert_eq!(after.mode & 0o7777, want, "mode {mode:o}");
            assert_eq!(after.mode & S_IFMT, mode & S_IFMT);
        }
    }
}
