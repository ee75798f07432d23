//! The inode table: which path each inode number stands for and what is known of it.
//!
//! Inodes are handed out per path and kept while the mount lives; a rename moves the inodes at
//! and below the old path to the new one, so open files and the kernel's cached entries follow
//! the move. One lock guards the table, held only for map operations.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::objects::{Posix, S_IFDIR, S_IFLNK};

/// The root directory's inode.
pub const ROOT: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

impl Kind {
    pub fn of(posix: &Posix) -> Kind {
        match posix.file_type() {
            S_IFDIR => Kind::Dir,
            S_IFLNK => Kind::Symlink,
            _ => Kind::File,
        }
    }
}

/// What is known of a file, directory or link.
#[derive(Clone, Debug)]
pub struct Node {
    /// Relative to the root: "" for the root, "a/b.txt".
    pub path: String,
    pub size: u64,
    /// The object's last-modified time (the change time).
    pub mtime: SystemTime,
    pub posix: Posix,
    /// When this was read from the store (or written here).
    pub seen: Instant,
    /// The object's ETag when it was read (or written here): a writer's upload checks that
    /// the object has not changed since (see `writer`).
    pub etag: Option<String>,
}

impl Node {
    pub fn kind(&self) -> Kind {
        Kind::of(&self.posix)
    }

    /// Whether what is known is older than `ttl`.
    pub fn stale(&self, ttl: Duration) -> bool {
        self.seen.elapsed() >= ttl
    }
}

struct Table {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next: u64,
}

pub struct Inodes {
    table: Mutex<Table>,
}

/// Whether `path` is `base` or below it.
fn under(path: &str, base: &str) -> bool {
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/') || base.is_empty())
}

impl Inodes {
    pub fn new(root: Node) -> Self {
        let mut table = Table {
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT + 1,
        };
        table.by_path.insert(root.path.clone(), ROOT);
        table.nodes.insert(ROOT, root);
        Inodes {
            table: Mutex::new(table),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        self.table().nodes.get(&ino).cloned()
    }

    pub fn ino_of(&self, path: &str) -> Option<u64> {
        self.table().by_path.get(path).copied()
    }

    /// Stores `node` under its path's inode (a new one if the path has none) and returns it.
    pub fn remember(&self, node: Node) -> u64 {
        let mut t = self.table();
        let ino = match t.by_path.get(&node.path) {
            Some(ino) => *ino,
            None => {
                let ino = t.next;
                t.next += 1;
                t.by_path.insert(node.path.clone(), ino);
                ino
            }
        };
        t.nodes.insert(ino, node);
        ino
    }

    /// The inode of `path`, given one (with `placeholder`'s attributes) if it has none.
    pub fn ino_or_placeholder(&self, placeholder: impl FnOnce() -> Node) -> u64 {
        let node = placeholder();
        let mut t = self.table();
        if let Some(ino) = t.by_path.get(&node.path) {
            return *ino;
        }
        let ino = t.next;
        t.next += 1;
        t.by_path.insert(node.path.clone(), ino);
        t.nodes.insert(ino, node);
        ino
    }

    pub fn update(&self, ino: u64, f: impl FnOnce(&mut Node)) {
        if let Some(n) = self.table().nodes.get_mut(&ino) {
            f(n);
        }
    }

    /// Forgets what was at `path` (removed): its inode no longer answers.
    pub fn forget_path(&self, path: &str) {
        let mut t = self.table();
        if let Some(ino) = t.by_path.remove(path) {
            t.nodes.remove(&ino);
        }
    }

    /// Moves the inodes at and below `from` to `to`; inodes at and below `to` that the move
    /// replaced are forgotten.
    pub fn renamed(&self, from: &str, to: &str) {
        let mut t = self.table();
        let affected: Vec<String> = t
            .by_path
            .keys()
            .filter(|p| under(p, from) || under(p, to))
            .cloned()
            .collect();
        // Take every affected entry out first, then put the moved ones back: an entry that the
        // move replaced must not remove the moved one's new name.
        let taken: Vec<(String, u64)> = affected
            .into_iter()
            .filter_map(|p| t.by_path.remove(&p).map(|ino| (p, ino)))
            .collect();
        for (path, ino) in taken {
            let moved = if path == from {
                Some(to.to_owned())
            } else {
                path.strip_prefix(&format!("{from}/"))
                    .map(|rest| format!("{to}/{rest}"))
            };
            match moved {
                Some(new_path) => {
                    if let Some(n) = t.nodes.get_mut(&ino) {
                        n.path = new_path.clone();
                    }
                    t.by_path.insert(new_path, ino);
                }
                None => {
                    t.nodes.remove(&ino);
                }
            }
        }
    }

    /// Inodes known (for tests and memory figures).
    pub fn len(&self) -> usize {
        self.table().nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::objects::S_IFREG;

    fn node(path: &str) -> Node {
        Node {
            path: path.into(),
            size: 0,
            mtime: SystemTime::now(),
            posix: Posix {
                uid: 0,
                gid: 0,
                mode: S_IFREG | 0o644,
                ..Posix::default()
            },
            seen: Instant::now(),
            etag: None,
        }
    }

    #[test]
    fn a_path_keeps_its_inode_and_a_rename_moves_a_tree() {
        let inodes = Inodes::new(node(""));
        let a = inodes.remember(node("a"));
        assert_eq!(inodes.remember(node("a")), a, "same path, same inode");
        let ab = inodes.remember(node("a/b"));
        let other = inodes.remember(node("ab"));
        let target = inodes.remember(node("c"));
        inodes.renamed("a", "c");
        assert_eq!(inodes.ino_of("c"), Some(a), "moved, same inode");
        assert_eq!(inodes.ino_of("c/b"), Some(ab));
        assert_eq!(inodes.get(ab).map(|n| n.path), Some("c/b".into()));
        assert_eq!(inodes.ino_of("a"), None);
        assert_eq!(
            inodes.ino_of("ab"),
            Some(other),
            "a sibling with the prefix stays"
        );
        assert!(
            inodes.get(target).is_none(),
            "the replaced target is forgotten"
        );
        inodes.forget_path("c/b");
        assert!(inodes.get(ab).is_none());
    }

    #[test]
    fn a_placeholder_never_replaces_what_is_known() {
        let inodes = Inodes::new(node(""));
        let mut known = node("x");
        known.size = 42;
        let ino = inodes.remember(known);
        assert_eq!(inodes.ino_or_placeholder(|| node("x")), ino);
        assert_eq!(inodes.get(ino).map(|n| n.size), Some(42));
    }
}
