//! A pure parser of `/proc/self/mountinfo` (see proc(5)), so every mount-table question the
//! node asks is answered from one well-tested function.
//!
//! Line format: `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
//! Paths escape space, tab, newline and backslash as `\040`, `\011`, `\012`, `\134`.

use std::path::{Path, PathBuf};

/// One mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent_id: u32,
    pub major_minor: String,
    /// The directory of the source file system that is mounted here.
    pub root: String,
    pub mount_point: PathBuf,
    pub options: Vec<String>,
    /// Tagged fields such as `shared:1` or `master:2`.
    pub optional: Vec<String>,
    pub fs_type: String,
    pub source: String,
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Undoes the kernel's octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one line; `None` for a line that does not have the format.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let dash = fields.iter().position(|f| *f == "-")?;
    if dash < 6 || fields.len() < dash + 3 {
        return None;
    }
    Some(MountEntry {
        id: fields[0].parse().ok()?,
        parent_id: fields[1].parse().ok()?,
        major_minor: fields[2].to_owned(),
        root: unescape(fields[3]),
        mount_point: PathBuf::from(unescape(fields[4])),
        options: fields[5].split(',').map(str::to_owned).collect(),
        optional: fields[6..dash].iter().map(|s| (*s).to_owned()).collect(),
        fs_type: fields[dash + 1].to_owned(),
        source: unescape(fields[dash + 2]),
        super_options: fields
            .get(dash + 3)
            .map(|s| s.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    })
}

/// Parses a whole table, skipping malformed lines.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// The mount at exactly `path` that is on top (the last one listed), if any.
pub fn mount_at<'a>(table: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    table.iter().rev().find(|m| m.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = r"22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw,discard
612 25 0:55 / /var/lib/kubelet/pods/abc/volumes/kubernetes.io~csi/pvc-1/mount rw,relatime shared:300 - nfs4 127.0.0.1:/ rw,vers=4.2,rsize=1048576,wsize=1048576,hard,proto=tcp,port=20113,timeo=600,retrans=2,sec=sys,clientaddr=127.0.0.1
613 25 0:56 /vol\040one /mnt/with\040space\011tab ro,relatime - fuse.s3files s3files:fs-0123456789abcdef0 ro,user_id=0,group_id=0
614 25 0:57 / /mnt/back\134slash rw - tmpfs tmpfs rw
garbage line
615 25 0:58 / /mnt/no-optional rw - tmpfs none rw,size=1024k
616 613 0:59 / /mnt/with\040space\011tab ro master:7 propagate_from:1 - tmpfs over rw
";

    #[test]
    fn fixture_lines_parse_with_escapes_and_optional_fields() {
        let table = parse(FIXTURE);
        assert_eq!(table.len(), 7, "the garbage line is skipped");
        let nfs = &table[2];
        assert_eq!(nfs.fs_type, "nfs4");
        assert_eq!(nfs.source, "127.0.0.1:/");
        assert_eq!(nfs.optional, ["shared:300"]);
        assert!(nfs.super_options.contains(&"vers=4.2".to_owned()));
        let fuse = &table[3];
        assert_eq!(fuse.mount_point, PathBuf::from("/mnt/with space\ttab"));
        assert_eq!(fuse.root, "/vol one");
        assert!(fuse.read_only());
        assert!(fuse.optional.is_empty());
        assert_eq!(table[4].mount_point, PathBuf::from("/mnt/back\\slash"));
        assert_eq!(table[6].optional, ["master:7", "propagate_from:1"]);
    }

    #[test]
    fn the_top_mount_at_a_path_wins() {
        let table = parse(FIXTURE);
        let top = mount_at(&table, Path::new("/mnt/with space\ttab")).expect("mounted");
        assert_eq!(top.id, 616);
        assert!(mount_at(&table, Path::new("/mnt/with")).is_none());
    }

    #[test]
    fn truncated_lines_are_rejected() {
        assert!(parse_line("1 2 0:1 / /x rw -").is_none());
        assert!(parse_line("1 2 0:1 / /x rw tmpfs tmpfs rw").is_none());
        assert!(parse_line("x 2 0:1 / /x rw - tmpfs tmpfs rw").is_none());
    }
}
