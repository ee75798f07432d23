//! StorageClass parameters of dynamic provisioning, with the Go EFS driver's names so
//! StorageClasses move over unchanged (see `docs/CONFIGURATION.md`).
//!
//! Parsing is strict: an unknown key, a malformed value, a contradictory pair or a parameter
//! that S3 Files cannot honour is `InvalidArgument` with what to change, before any API call.

use std::collections::HashMap;

use crate::error::Error;

pub const PROVISIONING_MODE: &str = "provisioningMode";
pub const FILE_SYSTEM_ID: &str = "fileSystemId";
pub const DIRECTORY_PERMS: &str = "directoryPerms";
pub const UID: &str = "uid";
pub const GID: &str = "gid";
pub const GID_RANGE_START: &str = "gidRangeStart";
pub const GID_RANGE_END: &str = "gidRangeEnd";
pub const BASE_PATH: &str = "basePath";
pub const SUB_PATH_PATTERN: &str = "subPathPattern";
pub const ENSURE_UNIQUE_DIRECTORY: &str = "ensureUniqueDirectory";
pub const ON_DELETE: &str = "onDelete";
pub const TAGS: &str = "tags";
pub const ENABLE_TAGGING: &str = "enableTagging";
pub const ENFORCE_ZONE_AFFINITY: &str = "enforceZoneAffinity";

/// Added by csi-provisioner with `--extra-create-metadata`.
pub const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
pub const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
pub const PV_NAME: &str = "csi.storage.k8s.io/pv/name";

/// The only provisioning mode.
pub const MODE_ACCESS_POINT: &str = "s3files-ap";

pub const DEFAULT_DIRECTORY_PERMS: &str = "0700";
pub const DEFAULT_GID_RANGE: (u32, u32) = (50_000, 7_000_000);
pub const DEFAULT_SUB_PATH_PATTERN: &str = "${.PV.name}";

/// Parameters that work for EFS but not for S3 Files, with the reason given to the user.
const REJECTED: &[(&str, &str)] = &[
    (
        "reuseAccessPoint",
        "S3 Files access points cannot be looked up by client token; every PVC gets its own access point",
    ),
    (
        "az",
        "cross-account mount target selection does not exist for S3 Files; topology comes from the file system's mount targets",
    ),
    (
        "crossaccount",
        "S3 Files does not support cross-account mounts",
    ),
    (
        "encryptInTransit",
        "S3 Files always encrypts in transit; remove the parameter",
    ),
    (
        "fileSystemIdConfigRef",
        "not supported yet; set fileSystemId",
    ),
    (
        "fileSystemIdSecretRef",
        "not supported yet; set fileSystemId",
    ),
];

/// What to do with a volume's data when its PV is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDelete {
    /// Delete the access point, keep the files.
    Retain,
    /// Delete the files under the access point's root through the S3 API, then the access point.
    Delete,
}

/// Where the POSIX ids of a new access point come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdPolicy {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Inclusive range the allocator draws from when `uid` or `gid` is unset.
    pub range: (u32, u32),
}

impl IdPolicy {
    /// Whether a number must be allocated.
    pub fn needs_allocation(&self) -> bool {
        self.uid.is_none() || self.gid.is_none()
    }
}

/// Validated StorageClass parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionParams {
    pub file_system_id: String,
    pub directory_perms: String,
    pub ids: IdPolicy,
    /// The access point root directory, rendered and checked against the S3 Files rules.
    pub root_path: String,
    pub on_delete: OnDelete,
    pub tagging: bool,
    pub extra_tags: Vec<(String, String)>,
}

fn parse_u32(key: &str, v: &str) -> Result<u32, Error> {
    v.trim().parse::<u32>().map_err(|_| {
        Error::invalid_parameter(
            key,
            format!("{v:?} must be a whole number from 0 to 4294967295"),
        )
    })
}

fn parse_bool(key: &str, v: &str) -> Result<bool, Error> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::invalid_parameter(
            key,
            format!("{v:?} must be true or false"),
        )),
    }
}

impl ProvisionParams {
    /// Parses `parameters` for the volume called `volume_name` (the PV name).
    pub fn parse(volume_name: &str, parameters: &HashMap<String, String>) -> Result<Self, Error> {
        for key in parameters.keys() {
            if let Some((_, why)) = REJECTED.iter().find(|(k, _)| k == key) {
                return Err(Error::invalid_parameter(key, *why));
            }
            let known = [
                PROVISIONING_MODE,
                FILE_SYSTEM_ID,
                DIRECTORY_PERMS,
                UID,
                GID,
                GID_RANGE_START,
                GID_RANGE_END,
                BASE_PATH,
                SUB_PATH_PATTERN,
                ENSURE_UNIQUE_DIRECTORY,
                ON_DELETE,
                TAGS,
                ENABLE_TAGGING,
                ENFORCE_ZONE_AFFINITY,
            ];
            if !known.contains(&key.as_str()) && !key.starts_with("csi.storage.k8s.io/") {
                return Err(Error::invalid_parameter(
                    key,
                    format!("unknown parameter; valid ones are {}", known.join(", ")),
                ));
            }
        }
        let get = |k: &str| parameters.get(k).map(String::as_str);

        match get(PROVISIONING_MODE) {
            Some(MODE_ACCESS_POINT) => {}
            Some("efs-ap") => {
                return Err(Error::invalid_parameter(
                    PROVISIONING_MODE,
                    "efs-ap provisions EFS access points; this driver provisions S3 Files: use s3files-ap",
                ));
            }
            Some(other) => {
                return Err(Error::invalid_parameter(
                    PROVISIONING_MODE,
                    format!("{other:?} is not supported; use s3files-ap"),
                ));
            }
            None => {
                return Err(Error::invalid_parameter(
                    PROVISIONING_MODE,
                    "is required; set it to s3files-ap",
                ));
            }
        }

        let file_system_id = get(FILE_SYSTEM_ID)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Error::invalid_parameter(
                    FILE_SYSTEM_ID,
                    "is required (an S3 Files file system id, fs-...)",
                )
            })?;
        let fs_ok = file_system_id.len() >= 20
            && file_system_id.len() <= 43
            && file_system_id.starts_with("fs-")
            && file_system_id[3..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !fs_ok {
            return Err(Error::invalid_parameter(
                FILE_SYSTEM_ID,
                format!(
                    "{file_system_id:?} is not a file system id (fs- and 17 to 40 lowercase hex digits)"
                ),
            ));
        }

        let directory_perms = get(DIRECTORY_PERMS)
            .unwrap_or(DEFAULT_DIRECTORY_PERMS)
            .trim()
            .to_owned();
        if !(3..=4).contains(&directory_perms.len())
            || !directory_perms.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(Error::invalid_parameter(
                DIRECTORY_PERMS,
                format!("{directory_perms:?} must be 3 or 4 octal digits, e.g. 700 or 0750"),
            ));
        }

        let uid = get(UID).map(|v| parse_u32(UID, v)).transpose()?;
        let gid = get(GID).map(|v| parse_u32(GID, v)).transpose()?;
        let range = match (get(GID_RANGE_START), get(GID_RANGE_END)) {
            (None, None) => DEFAULT_GID_RANGE,
            (Some(s), Some(e)) => {
                let (s, e) = (parse_u32(GID_RANGE_START, s)?, parse_u32(GID_RANGE_END, e)?);
                // Inclusive: start == end is a range of one GID.
                if e < s {
                    return Err(Error::invalid_parameter(
                        GID_RANGE_END,
                        format!("{e} must not be below gidRangeStart {s}"),
                    ));
                }
                (s, e)
            }
            _ => {
                return Err(Error::invalid_parameter(
                    GID_RANGE_START,
                    "gidRangeStart and gidRangeEnd must be set together",
                ));
            }
        };
        if uid.is_some() && gid.is_some() && (get(GID_RANGE_START).is_some()) {
            return Err(Error::invalid_parameter(
                GID_RANGE_START,
                "uid and gid are both fixed, so the gid range would never be used; remove one of them",
            ));
        }

        let on_delete = match get(ON_DELETE).map(|v| v.trim().to_ascii_lowercase()) {
            None => OnDelete::Retain,
            Some(v) if v == "retain" => OnDelete::Retain,
            Some(v) if v == "delete" => OnDelete::Delete,
            Some(v) => {
                return Err(Error::invalid_parameter(
                    ON_DELETE,
                    format!("{v:?} must be retain or delete"),
                ));
            }
        };

        let tagging = get(ENABLE_TAGGING)
            .map(|v| parse_bool(ENABLE_TAGGING, v))
            .transpose()?
            .unwrap_or(true);
        let extra_tags = match get(TAGS) {
            None => Vec::new(),
            Some(raw) => parse_tags(raw)?,
        };
        if !tagging && !extra_tags.is_empty() {
            return Err(Error::invalid_parameter(
                TAGS,
                "tags are set but enableTagging is false; remove one of them",
            ));
        }
        if let Some(v) = get(ENFORCE_ZONE_AFFINITY) {
            // Accepted for StorageClasses moved from the EFS driver: topology is always reported.
            parse_bool(ENFORCE_ZONE_AFFINITY, v)?;
        }

        let unique = get(ENSURE_UNIQUE_DIRECTORY)
            .map(|v| parse_bool(ENSURE_UNIQUE_DIRECTORY, v))
            .transpose()?
            .unwrap_or(true);
        let root_path = root_path(
            volume_name,
            parameters,
            get(BASE_PATH),
            get(SUB_PATH_PATTERN),
            unique,
        )?;

        Ok(ProvisionParams {
            file_system_id: file_system_id.to_owned(),
            directory_perms: if directory_perms.len() == 3 {
                format!("0{directory_perms}")
            } else {
                directory_perms
            },
            ids: IdPolicy { uid, gid, range },
            root_path,
            on_delete,
            tagging,
            extra_tags,
        })
    }
}

/// `key=value,key2=value2`.
fn parse_tags(raw: &str) -> Result<Vec<(String, String)>, Error> {
    let mut tags = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(Error::invalid_parameter(
                TAGS,
                format!("{item:?} is not key=value"),
            ));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty()
            || k.len() > 128
            || v.len() > 256
            || k.to_ascii_lowercase().starts_with("aws:")
        {
            return Err(Error::invalid_parameter(
                TAGS,
                format!(
                    "tag {k:?}: keys are 1-128 characters and may not start with aws:, values at most 256"
                ),
            ));
        }
        tags.push((k.to_owned(), v.to_owned()));
    }
    if tags.len() > 45 {
        return Err(Error::invalid_parameter(
            TAGS,
            "at most 45 tags (the driver adds its own, S3 Files allows 50)",
        ));
    }
    Ok(tags)
}

/// Characters S3 Files forbids in a root directory component.
const FORBIDDEN: &str = "$#<>;`|&?{}^*";
/// S3 Files' limits on an access point's root directory.
const MAX_ROOT_CHARS: usize = 100;
const MAX_ROOT_DIRECTORIES: usize = 4;
/// Joins the readable part of a hashed directory name to its hash. It is not among the
/// characters a volume name used as it is may have, so a hashed name never equals a plain one.
const HASH_SEPARATOR: char = '~';

/// Makes a variable's value (a PVC name or namespace, the PV name) one path component:
/// forbidden characters, control characters and `/` become `-`, leading dots are dropped.
fn sanitise(value: &str) -> String {
    let replaced: String = value
        .chars()
        .map(|c| {
            if FORBIDDEN.contains(c) || c.is_control() || c == '/' {
                '-'
            } else {
                c
            }
        })
        .collect();
    replaced.trim_start_matches('.').to_owned()
}

/// Why `literal` (text the StorageClass wrote itself) cannot be part of a root directory.
fn literal_problem(literal: &str) -> Option<String> {
    if let Some(c) = literal
        .chars()
        .find(|c| FORBIDDEN.contains(*c) || c.is_control())
    {
        return Some(format!(
            "contains {c:?}; S3 Files refuses any of {FORBIDDEN} in a root directory"
        ));
    }
    None
}

/// A short stable suffix for `ensureUniqueDirectory`: the same volume always gets the same
/// directory, so a retried CreateVolume sends identical parameters.
fn unique_suffix(volume_name: &str) -> String {
    let hash = volume_name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{:08x}", hash >> 32)
}

/// Whether a volume name can be its own directory: letters, digits, `-`, `_` and `.`, not
/// starting with a dot (csi-provisioner's `pvc-<uuid>` names are).
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The default directory of volume `name` under `base` (which ends without `/`): the name
/// itself when it is plain and fits, else a readable prefix of it, `~` and 16 hex digits of the
/// SHA-256 of the whole name. Deterministic (a retry lands on the same directory), and distinct
/// names never share one.
fn default_directory(name: &str, base: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    let room = MAX_ROOT_CHARS.checked_sub(base.chars().count() + 1)?;
    if plain_name(name) && name.chars().count() <= room {
        return Some(name.to_owned());
    }
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let readable_room = room.checked_sub(hash.len() + 1)?;
    let readable: String = sanitise(name)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(readable_room)
        .collect();
    let readable = readable.trim_start_matches('.');
    Some(format!("{readable}{HASH_SEPARATOR}{hash}"))
}

fn root_path(
    volume_name: &str,
    parameters: &HashMap<String, String>,
    base_path: Option<&str>,
    pattern: Option<&str>,
    unique: bool,
) -> Result<String, Error> {
    // basePath is written by the StorageClass: refused, never rewritten, when S3 Files could
    // not take it.
    let mut components: Vec<String> = Vec::new();
    if let Some(b) = base_path {
        for part in b.split('/').filter(|c| !c.is_empty()) {
            if part.starts_with('.') {
                return Err(Error::invalid_parameter(
                    BASE_PATH,
                    format!(
                        "{b:?}: {part:?} starts with '.'; S3 Files refuses root directories with a component starting with '.' (and '..' is never allowed)"
                    ),
                ));
            }
            if let Some(why) = literal_problem(part) {
                return Err(Error::invalid_parameter(BASE_PATH, format!("{b:?} {why}")));
            }
            components.push(part.to_owned());
        }
    }
    let Some(pattern) = pattern else {
        let base = components
            .iter()
            .map(|c| format!("/{c}"))
            .collect::<String>();
        if components.len() >= MAX_ROOT_DIRECTORIES {
            return Err(Error::invalid_parameter(
                BASE_PATH,
                format!(
                    "{base:?} leaves no room for the volume's directory; S3 Files allows at most {MAX_ROOT_DIRECTORIES} directories"
                ),
            ));
        }
        return match default_directory(volume_name, &base) {
            Some(dir) => Ok(format!("{base}/{dir}")),
            None => Err(Error::invalid_parameter(
                BASE_PATH,
                format!(
                    "the access point root under {base:?} would be over {MAX_ROOT_CHARS} characters; S3 Files allows at most {MAX_ROOT_CHARS}: shorten basePath"
                ),
            )),
        };
    };

    for template in pattern.split('/').filter(|c| !c.is_empty()) {
        let mut rendered = String::new();
        let mut rest = template;
        let mut first = true;
        loop {
            let (literal, var) = match rest.find("${") {
                Some(start) => (&rest[..start], Some(start)),
                None => (rest, None),
            };
            if first && (literal == "." || literal == ".." || literal.starts_with('.')) {
                return Err(Error::invalid_parameter(
                    SUB_PATH_PATTERN,
                    format!(
                        "{pattern:?}: the component {template:?} starts with '.'; '.' and '..' are not allowed and S3 Files refuses hidden root directories"
                    ),
                ));
            }
            if let Some(why) = literal_problem(literal) {
                return Err(Error::invalid_parameter(
                    SUB_PATH_PATTERN,
                    format!("{pattern:?} {why}"),
                ));
            }
            rendered.push_str(literal);
            first = false;
            let Some(start) = var else { break };
            let after = &rest[start..];
            let Some(end) = after.find('}') else {
                return Err(Error::invalid_parameter(
                    SUB_PATH_PATTERN,
                    format!("{pattern:?} has an unclosed ${{"),
                ));
            };
            let name = &after[2..end];
            let value = match name {
                ".PV.name" => parameters
                    .get(PV_NAME)
                    .map(String::as_str)
                    .unwrap_or(volume_name),
                ".PVC.name" => parameters
                    .get(PVC_NAME)
                    .map(String::as_str)
                    .ok_or_else(|| missing_metadata(name))?,
                ".PVC.namespace" => parameters
                    .get(PVC_NAMESPACE)
                    .map(String::as_str)
                    .ok_or_else(|| missing_metadata(name))?,
                other => {
                    return Err(Error::invalid_parameter(
                        SUB_PATH_PATTERN,
                        format!(
                            "${{{other}}} is not a known variable; use ${{.PVC.name}}, ${{.PVC.namespace}} or ${{.PV.name}}"
                        ),
                    ));
                }
            };
            let value = sanitise(value);
            // A value never starts a component with a dot (sanitise drops them).
            rendered.push_str(if rendered.is_empty() {
                value.trim_start_matches('.')
            } else {
                &value
            });
            rest = &after[end + 1..];
        }
        if rendered.is_empty() {
            return Err(Error::invalid_parameter(
                SUB_PATH_PATTERN,
                format!("{pattern:?}: the component {template:?} renders empty for this volume"),
            ));
        }
        components.push(rendered);
    }
    if unique {
        match components.last_mut() {
            Some(last) => {
                last.push('-');
                last.push_str(&unique_suffix(volume_name));
            }
            None => components.push(unique_suffix(volume_name)),
        }
    }
    if components.is_empty() {
        return Err(Error::invalid_parameter(
            SUB_PATH_PATTERN,
            "renders to the file system root; each volume needs its own directory",
        ));
    }
    let path = format!("/{}", components.join("/"));
    if components.len() > MAX_ROOT_DIRECTORIES {
        return Err(Error::invalid_parameter(
            SUB_PATH_PATTERN,
            format!(
                "the access point root {path:?} has {} directories; S3 Files allows at most {MAX_ROOT_DIRECTORIES} (basePath plus subPathPattern)",
                components.len()
            ),
        ));
    }
    if path.chars().count() > MAX_ROOT_CHARS {
        return Err(Error::invalid_parameter(
            SUB_PATH_PATTERN,
            format!(
                "the access point root {path:?} is {} characters; S3 Files allows at most {MAX_ROOT_CHARS}: shorten basePath or subPathPattern",
                path.chars().count()
            ),
        ));
    }
    Ok(path)
}

fn missing_metadata(var: &str) -> Error {
    Error::invalid_parameter(
        SUB_PATH_PATTERN,
        format!(
            "${{{var}}} needs the PVC's name and namespace: run csi-provisioner with --extra-create-metadata"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FS: &str = "fs-0123456789abcdef0";
    const PV: &str = "pvc-4f1c2d3e-5a6b-7c8d-9e0f-112233445566";

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut p: HashMap<String, String> =
            [(PROVISIONING_MODE, MODE_ACCESS_POINT), (FILE_SYSTEM_ID, FS)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        for (k, v) in pairs {
            p.insert((*k).to_owned(), (*v).to_owned());
        }
        p
    }

    #[test]
    fn defaults_give_one_directory_per_pv() {
        let p = ProvisionParams::parse(PV, &params(&[])).expect("valid");
        assert_eq!(p.root_path, format!("/{PV}"));
        assert_eq!(p.directory_perms, "0700");
        assert_eq!(
            p.ids,
            IdPolicy {
                uid: None,
                gid: None,
                range: DEFAULT_GID_RANGE
            }
        );
        assert_eq!(p.on_delete, OnDelete::Retain);
        assert!(p.tagging);
    }

    #[test]
    fn patterns_render_pvc_metadata_with_a_stable_unique_suffix() {
        let meta = [
            (PVC_NAMESPACE, "team-a"),
            (PVC_NAME, "data"),
            (BASE_PATH, "/k8s"),
            (SUB_PATH_PATTERN, "${.PVC.namespace}/${.PVC.name}"),
        ];
        let p = ProvisionParams::parse(PV, &params(&meta)).expect("valid");
        let again = ProvisionParams::parse(PV, &params(&meta)).expect("valid");
        assert_eq!(p.root_path, again.root_path, "retries render the same path");
        assert!(
            p.root_path.starts_with("/k8s/team-a/data-"),
            "{}",
            p.root_path
        );
        let other = ProvisionParams::parse("pvc-other", &params(&meta)).expect("valid");
        assert_ne!(p.root_path, other.root_path);
        let plain = ProvisionParams::parse(
            PV,
            &params(&[
                (SUB_PATH_PATTERN, "${.PV.name}"),
                (ENSURE_UNIQUE_DIRECTORY, "false"),
            ]),
        )
        .expect("valid");
        assert_eq!(plain.root_path, format!("/{PV}"));
    }

    #[test]
    fn every_volume_name_gets_its_own_directory_within_the_limits() {
        let long = "v".repeat(128);
        let names = [
            "pvc-0c6d6c4e-7a1b-4a2e-9d5e-1f2a3b4c5d6e".to_owned(),
            "x".to_owned(),
            ".x".to_owned(),
            "../x".to_owned(),
            "x/y".to_owned(),
            "x y".to_owned(),
            "x$".to_owned(),
            "\u{e9}t\u{e9}".to_owned(),
            long.clone(),
            format!("{}b", "v".repeat(127)),
        ];
        let mut seen = std::collections::HashSet::new();
        for name in &names {
            for base in [None, Some("/k8s/volumes")] {
                let mut p = params(&[]);
                if let Some(b) = base {
                    p.insert(BASE_PATH.to_owned(), b.to_owned());
                }
                let root = ProvisionParams::parse(name, &p).expect(name).root_path;
                assert!(root.chars().count() <= 100, "{name}: {root}");
                assert!(
                    root.split('/')
                        .skip(1)
                        .all(|c| !c.is_empty() && !c.starts_with('.')),
                    "{root}"
                );
                assert!(!root.contains(|c| FORBIDDEN.contains(c)), "{root}");
                assert!(seen.insert(root.clone()), "{name} shares {root}");
                // A retry renders the same directory.
                assert_eq!(
                    ProvisionParams::parse(name, &p).expect(name).root_path,
                    root
                );
            }
        }
        // Plain names stay readable as they were.
        let pvc = ProvisionParams::parse(PV, &params(&[])).expect("valid");
        assert_eq!(pvc.root_path, format!("/{PV}"));
        let x = ProvisionParams::parse("x", &params(&[])).expect("valid");
        assert_eq!(x.root_path, "/x");
        let dotted = ProvisionParams::parse(".x", &params(&[])).expect("valid");
        assert!(dotted.root_path.starts_with("/x~"), "{}", dotted.root_path);
    }

    #[test]
    fn base_paths_and_patterns_s3_files_would_refuse_are_refused_not_rewritten() {
        let long = "x".repeat(90);
        // (parameters, the key named, what the message says)
        type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (vec![(BASE_PATH, "/.hidden")], "basePath", "starts with '.'"),
            (vec![(BASE_PATH, "/my dir/$x")], "basePath", "'$'"),
            (vec![(BASE_PATH, "/a/../b")], "basePath", "'.'"),
            (
                vec![(SUB_PATH_PATTERN, "../${.PV.name}")],
                "subPathPattern",
                "'..'",
            ),
            (
                vec![(SUB_PATH_PATTERN, "./${.PV.name}")],
                "subPathPattern",
                "'.'",
            ),
            (
                vec![(SUB_PATH_PATTERN, ".cache/${.PV.name}")],
                "subPathPattern",
                "starts with '.'",
            ),
            (
                vec![(SUB_PATH_PATTERN, "vol#${.PV.name}")],
                "subPathPattern",
                "'#'",
            ),
            (vec![(BASE_PATH, "/a/b/c/d")], "basePath", "no room"),
            (vec![(BASE_PATH, &long)], "basePath", "at most 100"),
        ];
        for (pairs, key, expected) in cases {
            let err = ProvisionParams::parse(PV, &params(&pairs)).expect_err(key);
            let text = err.to_string();
            assert!(
                text.contains(key) && text.contains(expected),
                "{pairs:?}: {text}"
            );
        }
        // A space is a character S3 Files takes.
        let spaced = ProvisionParams::parse(PV, &params(&[(BASE_PATH, "/my dir")])).expect("valid");
        assert_eq!(spaced.root_path, format!("/my dir/{PV}"));
    }

    #[test]
    fn a_range_of_one_gid_is_a_range() {
        let p = ProvisionParams::parse(
            PV,
            &params(&[(GID_RANGE_START, "4242"), (GID_RANGE_END, "4242")]),
        )
        .expect("inclusive");
        assert_eq!(p.ids.range, (4242, 4242));
    }

    #[test]
    fn forbidden_characters_are_replaced_not_truncated() {
        let p = ProvisionParams::parse(
            PV,
            &params(&[
                (PVC_NAME, "a$b*c"),
                (PVC_NAMESPACE, ".hidden"),
                (SUB_PATH_PATTERN, "${.PVC.namespace}/${.PVC.name}"),
                (ENSURE_UNIQUE_DIRECTORY, "false"),
            ]),
        )
        .expect("valid");
        assert_eq!(p.root_path, "/hidden/a-b-c");
    }

    #[test]
    fn bad_parameters_are_invalid_argument_naming_the_key() {
        let cases: Vec<(HashMap<String, String>, &str)> = vec![
            (params(&[(PROVISIONING_MODE, "efs-ap")]), "provisioningMode"),
            (params(&[(PROVISIONING_MODE, "fs")]), "provisioningMode"),
            (params(&[(FILE_SYSTEM_ID, "fs-123")]), "fileSystemId"),
            (params(&[(FILE_SYSTEM_ID, "")]), "fileSystemId"),
            (params(&[(DIRECTORY_PERMS, "799")]), "directoryPerms"),
            (params(&[(DIRECTORY_PERMS, "07777")]), "directoryPerms"),
            (params(&[(UID, "-1")]), "uid"),
            (params(&[(GID, "x")]), "gid"),
            (params(&[(GID_RANGE_START, "100")]), "gidRangeStart"),
            (
                params(&[(GID_RANGE_START, "100"), (GID_RANGE_END, "99")]),
                "gidRangeEnd",
            ),
            (
                params(&[
                    (UID, "1"),
                    (GID, "2"),
                    (GID_RANGE_START, "1"),
                    (GID_RANGE_END, "9"),
                ]),
                "gidRangeStart",
            ),
            (params(&[(ON_DELETE, "shred")]), "onDelete"),
            (params(&[(ENABLE_TAGGING, "yes")]), "enableTagging"),
            (params(&[(ENABLE_TAGGING, "false"), (TAGS, "a=b")]), "tags"),
            (params(&[(TAGS, "novalue")]), "tags"),
            (params(&[(TAGS, "aws:x=y")]), "tags"),
            (
                params(&[(SUB_PATH_PATTERN, "${.PVC.uid}")]),
                "subPathPattern",
            ),
            (
                params(&[(SUB_PATH_PATTERN, "${.PVC.name")]),
                "subPathPattern",
            ),
            (
                params(&[(SUB_PATH_PATTERN, "${.PVC.name}")]),
                "--extra-create-metadata",
            ),
            (params(&[(SUB_PATH_PATTERN, "a/b/c/d/e")]), "at most 4"),
            (params(&[(BASE_PATH, &"x".repeat(99))]), "at most 100"),
            (params(&[(BASE_PATH, "/a/../b")]), "basePath"),
            (params(&[("reuseAccessPoint", "true")]), "reuseAccessPoint"),
            (params(&[("az", "us-east-1a")]), "az"),
            (params(&[("encryptInTransit", "false")]), "encryptInTransit"),
            (
                params(&[("fileSystemIdConfigRef", "ns/cm/key")]),
                "fileSystemIdConfigRef",
            ),
            (
                params(&[("throughputMode", "elastic")]),
                "unknown parameter",
            ),
        ];
        for (p, expected) in cases {
            let err = ProvisionParams::parse(PV, &p).expect_err(&format!("{p:?}"));
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
        let mut no_mode = params(&[]);
        no_mode.remove(PROVISIONING_MODE);
        assert!(
            ProvisionParams::parse(PV, &no_mode)
                .expect_err("mode")
                .to_string()
                .contains("required")
        );
    }
}
