//! Volume handles: the `volume_id` the controller returns and the node parses.
//!
//! Grammar (the Go EFS driver's S3 Files form, so static PVs move over unchanged):
//! `s3files:<fs-id>[:<subpath>[:<fsap-id>]]`, e.g. `s3files:fs-0123456789abcdef0`,
//! `s3files:fs-...:/data`, `s3files:fs-...::fsap-...`, `s3files:fs-...:/data:fsap-...`.
//! Dynamically provisioned volumes are `s3files:<fs-id>::<fsap-id>`.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

/// The scheme every handle starts with.
pub const SCHEME: &str = "s3files";

static FS_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^fs-[0-9a-f]{17,40}$").expect("pattern"));

/// Whether `id` is a file system id (`fs-` and 17 to 40 lowercase hex digits).
pub fn is_file_system_id(id: &str) -> bool {
    FS_ID.is_match(id)
}

/// A parsed volume handle.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VolumeHandle {
    pub file_system_id: String,
    /// Directory below the file system root (or below the access point root), normalised:
    /// absolute, no `.`/`..`/empty components, no trailing `/`. `None` means the root.
    pub subpath: Option<String>,
    pub access_point_id: Option<String>,
}

impl VolumeHandle {
    /// The handle of a dynamically provisioned volume.
    pub fn for_access_point(file_system_id: &str, access_point_id: &str) -> Self {
        VolumeHandle {
            file_system_id: file_system_id.to_owned(),
            subpath: None,
            access_point_id: Some(access_point_id.to_owned()),
        }
    }

    /// Parses and validates a handle; the error says what is wrong and what the forms are.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let forms = "expected s3files:<fs-id>[:<path>[:<fsap-id>]], e.g. s3files:fs-0123456789abcdef0::fsap-0123456789abcdef0";
        if raw.is_empty() {
            return Err("volume id is empty".into());
        }
        let Some(rest) = raw.strip_prefix("s3files:") else {
            return Err(format!(
                "volume id {raw:?} does not start with {SCHEME}:; {forms}"
            ));
        };
        let parts: Vec<&str> = rest.split(':').collect();
        if parts.len() > 3 {
            return Err(format!(
                "volume id {raw:?} has too many ':' separated fields; {forms}"
            ));
        }
        let fs = parts[0];
        if !FS_ID.is_match(fs) {
            return Err(format!(
                "volume id {raw:?}: {fs:?} is not a file system id (fs- and 17 to 40 hex digits)"
            ));
        }
        let subpath = match parts.get(1).copied().unwrap_or("") {
            "" => None,
            path => normalise_subpath(path).map_err(|why| format!("volume id {raw:?}: {why}"))?,
        };
        let access_point_id = match parts.get(2).copied().unwrap_or("") {
            "" => None,
            // mount.s3files and its watchdog take exactly 17 hex digits, stricter than the API.
            ap => match crate::mount::options::check_access_point_id(ap) {
                Ok(()) => Some(ap.to_owned()),
                Err(why) => return Err(format!("volume id {raw:?}: {why}")),
            },
        };
        Ok(VolumeHandle {
            file_system_id: fs.to_owned(),
            subpath,
            access_point_id,
        })
    }
}

/// `/a/b` from `a/b`, `/a/b/`, `/a//b`; `None` for `/`; an error for `..` or control characters.
pub fn normalise_subpath(path: &str) -> Result<Option<String>, String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("path {path:?} must not contain '..'")),
            p if p.chars().any(char::is_control) => {
                return Err(format!("path {path:?} contains control characters"));
            }
            p if p.len() > 255 => {
                return Err(format!("path {path:?} has a component over 255 bytes"));
            }
            p => parts.push(p),
        }
    }
    Ok((!parts.is_empty()).then(|| format!("/{}", parts.join("/"))))
}

impl fmt::Display for VolumeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}:{}", self.file_system_id)?;
        match (&self.subpath, &self.access_point_id) {
            (None, None) => Ok(()),
            (Some(p), None) => write!(f, ":{p}"),
            (p, Some(ap)) => write!(f, ":{}:{ap}", p.as_deref().unwrap_or("")),
        }
    }
}

/// The outcome of checking requested volume capabilities.
#[derive(Debug, PartialEq, Eq)]
pub enum CapabilityCheck {
    Supported,
    /// Malformed request (missing fields): `InvalidArgument`.
    Invalid(String),
    /// Well-formed but not something S3 Files volumes can do.
    Unsupported(String),
}

/// File system types a mount capability may name.
const FS_TYPES: &[&str] = &["", "s3files", "nfs", "nfs4"];

/// Checks capabilities: mount access with any access mode is supported (S3 Files is a shared
/// file system, so single- and multi-node, reader and writer modes all hold); block is not.
/// Mount flags that mount.s3files or the NFS client would refuse make the request invalid.
pub fn check_capabilities(caps: &[crate::csi::VolumeCapability]) -> CapabilityCheck {
    use crate::csi::volume_capability::{AccessType, access_mode::Mode};
    if caps.is_empty() {
        return CapabilityCheck::Invalid("at least one volume capability is required".into());
    }
    for cap in caps {
        let mode = cap
            .access_mode
            .as_ref()
            .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown));
        match mode {
            None | Some(Mode::Unknown) => {
                return CapabilityCheck::Invalid(
                    "each volume capability needs a known access mode".into(),
                );
            }
            Some(_) => {}
        }
        match &cap.access_type {
            None => {
                return CapabilityCheck::Invalid(
                    "each volume capability must be mount or block".into(),
                );
            }
            Some(AccessType::Block(_)) => {
                return CapabilityCheck::Unsupported(
                    "block volumes are not supported: S3 Files is a file system; use volumeMode: Filesystem".into(),
                );
            }
            Some(AccessType::Mount(m)) if !FS_TYPES.contains(&m.fs_type.as_str()) => {
                return CapabilityCheck::Unsupported(format!(
                    "fsType {:?} is not supported; leave it empty or use s3files",
                    m.fs_type
                ));
            }
            Some(AccessType::Mount(m)) => {
                if let Err(why) = crate::mount::options::user_options(&m.mount_flags) {
                    return CapabilityCheck::Invalid(format!("mount flags: {why}"));
                }
            }
        }
    }
    CapabilityCheck::Supported
}

#[cfg(test)]
mod tests {
    use super::*;

    const FS: &str = "fs-0123456789abcdef0";
    const AP: &str = "fsap-0123456789abcdef1";

    #[test]
    fn every_documented_form_parses_and_prints_back() {
        let table = [
            (format!("s3files:{FS}"), None, None),
            (format!("s3files:{FS}:/data"), Some("/data"), None),
            (format!("s3files:{FS}::{AP}"), None, Some(AP)),
            (
                format!("s3files:{FS}:/data/x:{AP}"),
                Some("/data/x"),
                Some(AP),
            ),
        ];
        for (raw, sub, ap) in table {
            let h = VolumeHandle::parse(&raw).expect(&raw);
            assert_eq!(h.file_system_id, FS);
            assert_eq!(h.subpath.as_deref(), sub, "{raw}");
            assert_eq!(h.access_point_id.as_deref(), ap, "{raw}");
            assert_eq!(h.to_string(), raw);
        }
    }

    #[test]
    fn subpaths_are_normalised() {
        let h = VolumeHandle::parse(&format!("s3files:{FS}:data//x/./:")).expect("parses");
        assert_eq!(h.subpath.as_deref(), Some("/data/x"));
        let root = VolumeHandle::parse(&format!("s3files:{FS}:/:{AP}")).expect("parses");
        assert_eq!(root.subpath, None);
    }

    #[test]
    fn malformed_handles_say_what_is_wrong() {
        let cases = [
            ("", "empty"),
            ("fs-0123456789abcdef0", "does not start with"),
            ("efs:fs-0123456789abcdef0", "does not start with"),
            ("s3files:", "not a file system id"),
            ("s3files:fs-123", "not a file system id"),
            ("s3files:fs-0123456789ABCDEF0", "not a file system id"),
            (
                "s3files:fs-0123456789abcdef0::fsap-1",
                "not an access point id",
            ),
            (
                "s3files:fs-0123456789abcdef0::fsap-0123456789abcdef0123",
                "17 hex digits",
            ),
            ("s3files:fs-0123456789abcdef0:/a/../b", "'..'"),
            (
                "s3files:fs-0123456789abcdef0:/a:fsap-0123456789abcdef1:x",
                "too many",
            ),
        ];
        for (raw, expected) in cases {
            let err = VolumeHandle::parse(raw).expect_err(raw);
            assert!(err.contains(expected), "{raw}: {err}");
        }
    }
}
