//! The mount options the node passes to `mount -t s3files`, and the check of the options users
//! add through a StorageClass's `mountOptions` (or a PV's `spec.mountOptions`).
//!
//! Every option the node can pass is in one of three lists: what the node sets itself
//! ([`NODE_OPTIONS`]), options of amazon-efs-utils' `mount.s3files` a user may add
//! ([`HELPER_OPTIONS`]), and `mount(8)` / `nfs(5)` client options that efs-utils passes on to
//! `mount.nfs4` ([`NFS_OPTIONS`]). Anything else is refused before a mount is tried, with what
//! to do instead: an option the helper or the kernel would refuse fails in `CreateVolume`,
//! `ValidateVolumeCapabilities` and `NodePublishVolume` as `InvalidArgument`, not later as an
//! `Internal` error from the helper. docs/CONFIGURATION.md has the same table.

use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;

/// What an option's value must look like.
#[derive(Clone, Copy, Debug)]
pub enum Value {
    /// A flag: no `=`.
    None,
    /// A decimal number.
    Number,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// Checked by a rule of its own (ids, addresses, paths).
    Checked(fn(&str) -> Result<(), String>),
}

/// One option the node may pass.
#[derive(Clone, Copy, Debug)]
pub struct Known {
    pub name: &'static str,
    pub value: Value,
}

const fn flag(name: &'static str) -> Known {
    Known {
        name,
        value: Value::None,
    }
}

const fn with(name: &'static str, value: Value) -> Known {
    Known { name, value }
}

static ACCESS_POINT_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^fsap-[0-9a-f]{17}$").expect("pattern"));
static REGION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[a-z]{2}(-[a-z]+)+-[0-9]+$").expect("pattern"));
static ZONE_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[a-z]{2,}[0-9]+-az[0-9]+$").expect("pattern"));
static ROLE_ARN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new("^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$").expect("pattern")
});

/// `fsap-` and exactly 17 hex digits: what `mount.s3files` and its watchdog accept (the API
/// allows 17 to 40, but every access point S3 Files makes has 17).
pub fn check_access_point_id(v: &str) -> Result<(), String> {
    if ACCESS_POINT_ID.is_match(v) {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not an access point id mount.s3files accepts (fsap- and 17 hex digits)"
        ))
    }
}

/// An AWS region name such as `us-east-1`.
pub fn check_region(v: &str) -> Result<(), String> {
    if REGION.is_match(v) {
        Ok(())
    } else {
        Err(format!("{v:?} is not an AWS region such as us-east-1"))
    }
}

/// An availability zone id such as `use1-az1` (not a zone name such as `us-east-1a`).
pub fn check_zone_id(v: &str) -> Result<(), String> {
    if ZONE_ID.is_match(v) {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not an availability zone id such as use1-az1 (zone names such as us-east-1a are not ids)"
        ))
    }
}

/// An IPv4 or IPv6 address.
pub fn check_ip(v: &str) -> Result<(), String> {
    v.parse::<IpAddr>()
        .map(|_| ())
        .map_err(|_| format!("{v:?} is not an IP address"))
}

fn check_port(v: &str) -> Result<(), String> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{v:?} is not a TCP port (1 to 65535)")),
    }
}

fn check_verify(v: &str) -> Result<(), String> {
    match v {
        "0" | "1" | "2" | "3" | "4" => Ok(()),
        _ => Err(format!(
            "{v:?} is not a verify level (0 to 4; efs-utils uses 2)"
        )),
    }
}

fn check_role_arn(v: &str) -> Result<(), String> {
    if ROLE_ARN.is_match(v) {
        Ok(())
    } else {
        Err(format!("{v:?} is not an IAM role ARN"))
    }
}

fn check_absolute_path(v: &str) -> Result<(), String> {
    if v.starts_with('/') && !v.split('/').any(|c| c == "..") {
        Ok(())
    } else {
        Err(format!("{v:?} must be an absolute path without '..'"))
    }
}

fn check_profile(v: &str) -> Result<(), String> {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        Ok(())
    } else {
        Err(format!("{v:?} is not an AWS profile name"))
    }
}

fn check_nfs_version(v: &str) -> Result<(), String> {
    match v {
        "4.1" | "4.2" => Ok(()),
        _ => Err(format!(
            "NFS version {v:?} is not supported by S3 Files; efs-utils mounts 4.2 (4.1 also works), remove the option"
        )),
    }
}

/// Options the node sets itself, from the volume handle, the volume context and its own
/// configuration. A user may not set `accesspoint` to anything but the handle's.
pub const NODE_OPTIONS: &[Known] = &[
    with("accesspoint", Value::Checked(check_access_point_id)),
    with("region", Value::Checked(check_region)),
    with("azid", Value::Checked(check_zone_id)),
    with("mounttargetip", Value::Checked(check_ip)),
    flag("ro"),
    flag("nos3readcache"),
    flag("nodirects3read"),
];

/// Options of efs-utils' `mount.s3files` (man page mount.s3files(8)) a user may add.
pub const HELPER_OPTIONS: &[Known] = &[
    with("region", Value::Checked(check_region)),
    with("azid", Value::Checked(check_zone_id)),
    with("mounttargetip", Value::Checked(check_ip)),
    with("tlsport", Value::Checked(check_port)),
    with("verify", Value::Checked(check_verify)),
    flag("noocsp"),
    with("rolearn", Value::Checked(check_role_arn)),
    with("jwtpath", Value::Checked(check_absolute_path)),
    with("awsprofile", Value::Checked(check_profile)),
    with("cafile", Value::Checked(check_absolute_path)),
    with("netns", Value::Checked(check_absolute_path)),
    flag("nodirects3read"),
    flag("nos3readcache"),
    // Always on for S3 Files; naming them changes nothing.
    flag("tls"),
    flag("iam"),
];

/// `mount(8)` and `nfs(5)` client options that efs-utils passes on to `mount.nfs4`.
pub const NFS_OPTIONS: &[Known] = &[
    flag("ro"),
    flag("rw"),
    flag("noatime"),
    flag("atime"),
    flag("relatime"),
    flag("norelatime"),
    flag("strictatime"),
    flag("nostrictatime"),
    flag("nodiratime"),
    flag("diratime"),
    flag("lazytime"),
    flag("nolazytime"),
    flag("nosuid"),
    flag("suid"),
    flag("nodev"),
    flag("dev"),
    flag("noexec"),
    flag("exec"),
    flag("sync"),
    flag("async"),
    flag("dirsync"),
    flag("_netdev"),
    flag("hard"),
    flag("soft"),
    flag("softreval"),
    flag("nosoftreval"),
    with("timeo", Value::Number),
    with("retrans", Value::Number),
    with("rsize", Value::Number),
    with("wsize", Value::Number),
    flag("ac"),
    flag("noac"),
    with("acregmin", Value::Number),
    with("acregmax", Value::Number),
    with("acdirmin", Value::Number),
    with("acdirmax", Value::Number),
    with("actimeo", Value::Number),
    flag("cto"),
    flag("nocto"),
    with(
        "lookupcache",
        Value::OneOf(&["all", "none", "pos", "positive"]),
    ),
    flag("sharecache"),
    flag("nosharecache"),
    flag("rdirplus"),
    flag("nordirplus"),
    flag("fsc"),
    flag("nofsc"),
    with("nconnect", Value::Number),
    flag("noresvport"),
    with("nfsvers", Value::Checked(check_nfs_version)),
    with("vers", Value::Checked(check_nfs_version)),
];

/// Options refused outright, with what to do instead.
pub const REFUSED: &[(&str, &str)] = &[
    (
        "stunnel",
        "S3 Files mounts always use efs-proxy; remove stunnel",
    ),
    (
        "notls",
        "S3 Files mounts are always encrypted; remove notls",
    ),
    (
        "noiam",
        "S3 Files mounts always authorize with IAM; remove noiam",
    ),
    ("az", "use azid (the zone id, e.g. use1-az1) instead of az"),
    (
        "crossaccount",
        "S3 Files does not support cross-account mounts; remove crossaccount",
    ),
    (
        "awscredsuri",
        "awscredsuri is for ECS tasks; the node's own credentials (IRSA or EKS Pod Identity) are used",
    ),
    (
        "capath",
        "efs-proxy does not support capath; use cafile with a bundle file",
    ),
    (
        "ocsp",
        "efs-proxy does not support OCSP checks (efs-utils fails with an assertion); remove ocsp",
    ),
    (
        "port",
        "efs-utils points the NFS client at its local efs-proxy port; use tlsport to choose that port",
    ),
    (
        "resvport",
        "S3 Files mounts need noresvport (efs-utils sets it); remove resvport",
    ),
    (
        "proto",
        "the NFS client speaks TCP to the local efs-proxy; remove proto",
    ),
];

fn find(list: &[Known], name: &str) -> Option<Known> {
    list.iter().copied().find(|k| k.name == name)
}

/// The rule for `name` when a user names it.
fn user_rule(name: &str) -> Option<Known> {
    find(HELPER_OPTIONS, name).or_else(|| find(NFS_OPTIONS, name))
}

fn check_value(known: Known, value: Option<&str>) -> Result<(), String> {
    let name = known.name;
    match (known.value, value) {
        (Value::None, None) => Ok(()),
        (Value::None, Some(_)) => Err(format!("{name} takes no value")),
        (_, None) | (_, Some("")) => Err(format!("{name} needs a value ({name}=...)")),
        (Value::Number, Some(v)) => v
            .parse::<u32>()
            .map(|_| ())
            .map_err(|_| format!("{name}={v}: {v:?} is not a number")),
        (Value::OneOf(words), Some(v)) => {
            if words.contains(&v) {
                Ok(())
            } else {
                Err(format!("{name}={v}: expected one of {}", words.join(", ")))
            }
        }
        (Value::Checked(rule), Some(v)) => rule(v).map_err(|why| format!("{name}: {why}")),
    }
}

/// Checks one option a user gave; the error names the option and what to do.
pub fn check_user_option(option: &str) -> Result<(), String> {
    if option.contains(char::is_whitespace) || option.contains('\0') {
        return Err(format!("{option:?} contains whitespace"));
    }
    let (name, value) = match option.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (option, None),
    };
    if let Some((_, why)) = REFUSED.iter().find(|(o, _)| *o == name) {
        return Err(format!("{option}: {why}"));
    }
    if name == "accesspoint" {
        // Compared with the handle by the node; the form is checked here.
        return match value {
            Some(v) => check_access_point_id(v).map_err(|why| format!("accesspoint: {why}")),
            None => Err("accesspoint needs a value".into()),
        };
    }
    match user_rule(name) {
        Some(known) => check_value(known, value),
        None => Err(format!(
            "{option}: not an option of mount.s3files or of the NFS client; see the mount options table in docs/CONFIGURATION.md"
        )),
    }
}

/// Splits `mount_flags` (each may hold several comma-separated options), checks every option
/// and returns them in order without duplicates.
pub fn user_options(mount_flags: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for option in mount_flags
        .iter()
        .flat_map(|f| f.split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        check_user_option(option)?;
        if !out.iter().any(|o| o == option) {
            out.push(option.to_owned());
        }
    }
    Ok(out)
}

/// Whether `option` is one the node may pass: named in one of the three lists, with a value
/// of the right form.
pub fn is_passable(option: &str) -> bool {
    let (name, value) = match option.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (option, None),
    };
    [NODE_OPTIONS, HELPER_OPTIONS, NFS_OPTIONS]
        .iter()
        .filter_map(|list| find(list, name))
        .any(|known| check_value(known, value).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_the_helper_refuses_are_refused_with_the_fix() {
        let table = [
            ("capath=/etc/ssl/certs", "cafile"),
            ("ocsp", "OCSP"),
            ("nfsvers=4.0", "not supported"),
            ("vers=4.0", "not supported"),
            ("nfsvers=3", "not supported"),
            ("stunnel", "efs-proxy"),
            ("notls", "encrypted"),
            ("az=us-east-1a", "azid"),
            ("crossaccount", "cross-account"),
            ("awscredsuri=/v2/creds", "ECS"),
            ("port=2049", "tlsport"),
            ("accesspoint=fsap-0123456789abcdef0123", "17 hex"),
            ("accesspoint=fsap-0123456789ABCDEF0", "17 hex"),
            ("noatme", "not an option"),
            ("timeo=soon", "not a number"),
            ("lookupcache=maybe", "one of"),
            ("noac=1", "takes no value"),
            ("tlsport", "needs a value"),
            ("tlsport=0", "TCP port"),
            ("region=US-EAST-1", "region"),
            ("azid=us-east-1a", "zone id"),
            ("mounttargetip=10.0.0", "IP address"),
            ("rolearn=role/x", "role ARN"),
            ("jwtpath=token", "absolute"),
            ("verify=9", "verify level"),
        ];
        for (option, expected) in table {
            let err = check_user_option(option).expect_err(option);
            assert!(err.contains(expected), "{option}: {err}");
        }
    }

    #[test]
    fn documented_options_are_accepted() {
        for option in [
            "tls",
            "iam",
            "noocsp",
            "tlsport=20100",
            "verify=2",
            "region=eu-west-1",
            "region=us-gov-west-1",
            "azid=use1-az1",
            "azid=apne1-az4",
            "mounttargetip=10.0.0.5",
            "mounttargetip=fd00::5",
            "rolearn=arn:aws:iam::123456789012:role/s3files-node",
            "jwtpath=/var/run/secrets/token",
            "awsprofile=default",
            "cafile=/etc/ssl/certs/ca.pem",
            "netns=/proc/1/ns/net",
            "nodirects3read",
            "nos3readcache",
            "noatime",
            "actimeo=30",
            "lookupcache=positive",
            "nfsvers=4.1",
            "vers=4.2",
            "accesspoint=fsap-0123456789abcdef1",
        ] {
            check_user_option(option).expect(option);
            assert!(is_passable(option), "{option}");
        }
    }

    #[test]
    fn flags_are_split_checked_and_deduplicated() {
        let flags = vec!["noatime, actimeo=30".to_owned(), "noatime".to_owned()];
        assert_eq!(
            user_options(&flags).expect("valid"),
            vec!["noatime", "actimeo=30"]
        );
        let bad = vec!["noatime,ocsp".to_owned()];
        assert!(user_options(&bad).expect_err("ocsp").contains("ocsp"));
    }

    #[test]
    fn refused_options_are_not_passable() {
        for (name, _) in REFUSED {
            assert!(!is_passable(name), "{name}");
            assert!(
                user_rule(name).is_none(),
                "{name} is both refused and known"
            );
        }
    }

    /// The backticked names in the first column of the table rows between two markers.
    fn documented(doc: &str, from: &str, to: &str) -> std::collections::BTreeSet<String> {
        let start = doc.find(from).expect("section") + from.len();
        let end = start + doc[start..].find(to).expect("end of section");
        doc[start..end]
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| l.split('|').nth(1))
            .flat_map(|cell| {
                cell.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_configuration_docs_list_exactly_these_options() {
        let doc = include_str!("../../docs/CONFIGURATION.md");
        let passable = documented(doc, "### Mount options", "Refused, with the reason");
        let code: std::collections::BTreeSet<String> = [NODE_OPTIONS, HELPER_OPTIONS, NFS_OPTIONS]
            .iter()
            .flat_map(|l| l.iter().map(|k| k.name.to_owned()))
            .collect();
        assert_eq!(
            passable, code,
            "docs/CONFIGURATION.md's mount options table"
        );
        let refused = documented(doc, "Refused, with the reason", "Also refused");
        for (name, _) in REFUSED {
            assert!(
                refused.contains(*name),
                "{name} is refused but not documented"
            );
        }
    }
}
