//! Input validation for the emulated S3 Files API, following the service model's lengths,
//! ranges and patterns. Patterns are applied as full matches. Every error names the field.

use std::sync::LazyLock;

use regex::Regex;

use super::model::{
    CreationPermissions, ExpirationDataRule, ImportDataRule, PosixUser, RootDirectory, Tag,
};

/// A validation failure: the message is returned in a `ValidationException`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

pub type Check = Result<(), Invalid>;

fn fail(field: &str, why: impl std::fmt::Display) -> Invalid {
    Invalid(format!(
        "1 validation error detected: value at '{field}' failed to satisfy constraint: {why}"
    ))
}

fn full(pattern: &str) -> Regex {
    Regex::new(&format!("^(?:{pattern})$")).expect("static pattern compiles")
}

macro_rules! patterns {
    ($($name:ident = $re:expr;)*) => {
        $(static $name: LazyLock<Regex> = LazyLock::new(|| full($re));)*
    };
}

patterns! {
    FS_ID = r"arn:aws[-a-z]*:s3files:[0-9a-z-:]+:file-system/fs-[0-9a-f]{17,40}|fs-[0-9a-f]{17,40}";
    AP_ID = r"arn:aws[-a-z]*:s3files:[0-9a-z-:]+:file-system/fs-[0-9a-f]{17,40}/access-point/fsap-[0-9a-f]{17,40}|fsap-[0-9a-f]{17,40}";
    MT_ID = r"fsmt-[0-9a-f]{17,40}";
    RESOURCE_ID = r"arn:aws[-a-z]*:s3files:[0-9a-z-:]+:file-system/fs-[0-9a-f]{17,40}(/access-point/fsap-[0-9a-f]{17,40})?|fs(ap)?-[0-9a-f]{17,40}";
    BUCKET_ARN = r"arn:aws[a-zA-Z0-9-]*:s3:::.+";
    ROLE_ARN = r"arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+";
    KMS_KEY_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}|alias/[a-zA-Z0-9/_-]+|(arn:aws[-a-z]*:kms:[a-z0-9-]+:\d{12}:((key/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})|(key/mrk-[0-9a-f]{32})|(alias/[a-zA-Z0-9/_-]+)))";
    SUBNET_ID = r"subnet-[0-9a-f]{8,40}";
    SECURITY_GROUP = r"sg-[0-9a-f]{8,40}";
    IPV4 = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}";
    PERMISSIONS = r"[0-7]{3,4}";
    TAG_KEY = r"[\p{L}\p{Z}\p{N}_.:/=+\-@]+";
    TAG_VALUE = r"[\p{L}\p{Z}\p{N}_.:/=+\-@]*";
}

fn length(field: &str, value: &str, min: usize, max: Option<usize>) -> Check {
    let n = value.chars().count();
    if n < min {
        return Err(fail(
            field,
            format_args!("member must have length greater than or equal to {min}"),
        ));
    }
    if let Some(max) = max
        && n > max
    {
        return Err(fail(
            field,
            format_args!("member must have length less than or equal to {max}"),
        ));
    }
    Ok(())
}

fn pattern(field: &str, value: &str, re: &Regex, what: &str) -> Check {
    if re.is_match(value) {
        Ok(())
    } else {
        Err(fail(
            field,
            format_args!("member must be {what} (got {value:?})"),
        ))
    }
}

/// Present, non-empty required member.
pub fn required<'a>(field: &str, value: Option<&'a str>) -> Result<&'a str, Invalid> {
    match value {
        Some(v) => Ok(v),
        None => Err(fail(field, "member must not be null")),
    }
}

pub fn file_system_id(field: &str, v: &str) -> Check {
    length(field, v, 0, Some(128))?;
    pattern(
        field,
        v,
        &FS_ID,
        "a file system id (fs- and 17 to 40 hex digits) or its ARN",
    )
}

pub fn access_point_id(field: &str, v: &str) -> Check {
    length(field, v, 0, Some(256))?;
    pattern(
        field,
        v,
        &AP_ID,
        "an access point id (fsap- and 17 to 40 hex digits) or its ARN",
    )
}

pub fn mount_target_id(field: &str, v: &str) -> Check {
    length(field, v, 22, Some(45))?;
    pattern(
        field,
        v,
        &MT_ID,
        "a mount target id (fsmt- and 17 to 40 hex digits)",
    )
}

pub fn resource_id(field: &str, v: &str) -> Check {
    length(field, v, 0, Some(256))?;
    pattern(
        field,
        v,
        &RESOURCE_ID,
        "a file system or access point id or ARN",
    )
}

pub fn bucket_arn(field: &str, v: &str) -> Check {
    pattern(
        field,
        v,
        &BUCKET_ARN,
        "an S3 bucket ARN such as arn:aws:s3:::my-bucket",
    )
}

pub fn role_arn(field: &str, v: &str) -> Check {
    length(field, v, 0, Some(2048))?;
    pattern(
        field,
        v,
        &ROLE_ARN,
        "an IAM role ARN such as arn:aws:iam::123456789012:role/name",
    )
}

pub fn kms_key_id(field: &str, v: &str) -> Check {
    length(field, v, 0, Some(2048))?;
    pattern(
        field,
        v,
        &KMS_KEY_ID,
        "a KMS key id, key ARN, alias or alias ARN",
    )
}

pub fn prefix(field: &str, v: &str) -> Check {
    length(field, v, 0, Some(1024))?;
    if v.is_empty() || v.ends_with('/') {
        Ok(())
    } else {
        Err(fail(field, "member must be empty or end with '/'"))
    }
}

pub fn token(field: &str, v: &str) -> Check {
    length(field, v, 1, Some(64))?;
    if v.contains('\n') {
        return Err(fail(field, "member must not contain a line break"));
    }
    Ok(())
}

pub fn subnet_id(field: &str, v: &str) -> Check {
    length(field, v, 15, Some(47))?;
    pattern(
        field,
        v,
        &SUBNET_ID,
        "a subnet id (subnet- and 8 to 40 hex digits)",
    )
}

pub fn security_groups(field: &str, groups: &[String]) -> Check {
    if groups.len() > 100 {
        return Err(fail(
            field,
            "member must have length less than or equal to 100",
        ));
    }
    for (i, g) in groups.iter().enumerate() {
        let f = format!("{field}.{}", i + 1);
        length(&f, g, 11, Some(43))?;
        pattern(
            &f,
            g,
            &SECURITY_GROUP,
            "a security group id (sg- and 8 to 40 hex digits)",
        )?;
    }
    Ok(())
}

pub fn ipv4(field: &str, v: &str) -> Check {
    length(field, v, 7, Some(15))?;
    pattern(field, v, &IPV4, "an IPv4 address")?;
    if v.parse::<std::net::Ipv4Addr>().is_err() {
        return Err(fail(
            field,
            format_args!("member must be an IPv4 address (got {v:?})"),
        ));
    }
    Ok(())
}

pub fn ipv6(field: &str, v: &str) -> Check {
    length(field, v, 3, Some(39))
}

pub fn ip_address_type(field: &str, v: &str) -> Check {
    match v {
        "IPV4_ONLY" | "IPV6_ONLY" | "DUAL_STACK" => Ok(()),
        _ => Err(fail(
            field,
            "member must satisfy enum value set: [IPV4_ONLY, IPV6_ONLY, DUAL_STACK]",
        )),
    }
}

const ID_MAX: i64 = 4_294_967_295;

fn id_range(field: &str, v: i64) -> Check {
    if (0..=ID_MAX).contains(&v) {
        Ok(())
    } else {
        Err(fail(
            field,
            format_args!("member must be between 0 and {ID_MAX} (got {v})"),
        ))
    }
}

pub fn posix_user(field: &str, user: &PosixUser) -> Check {
    id_range(
        &format!("{field}.uid"),
        required_num(&format!("{field}.uid"), user.uid)?,
    )?;
    id_range(
        &format!("{field}.gid"),
        required_num(&format!("{field}.gid"), user.gid)?,
    )?;
    for (i, gid) in user.secondary_gids.iter().flatten().enumerate() {
        id_range(&format!("{field}.secondaryGids.{}", i + 1), *gid)?;
    }
    Ok(())
}

fn required_num(field: &str, v: Option<i64>) -> Result<i64, Invalid> {
    v.ok_or_else(|| fail(field, "member must not be null"))
}

/// The access point root directory rule: `/`, or 1 to 4 components, each not starting with
/// `.` and free of `$ # < > ; \` | & ? { } ^ *`, newlines and `/`; at most 100 characters.
pub fn path(field: &str, v: &str) -> Check {
    length(field, v, 1, Some(100))?;
    if v == "/" {
        return Ok(());
    }
    let Some(rest) = v.strip_prefix('/') else {
        return Err(fail(
            field,
            "member must be an absolute path starting with '/'",
        ));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() > 4 {
        return Err(fail(field, "member must have at most 4 path components"));
    }
    for part in parts {
        if part.is_empty() {
            return Err(fail(
                field,
                "member must not contain empty components or end with '/'",
            ));
        }
        if part.starts_with('.') {
            return Err(fail(
                field,
                format_args!("component {part:?} must not start with '.'"),
            ));
        }
        if let Some(c) = part.chars().find(|c| "$#<>;`|&?{}^*\n".contains(*c)) {
            return Err(fail(field, format_args!("member must not contain {c:?}")));
        }
    }
    Ok(())
}

pub fn creation_permissions(field: &str, p: &CreationPermissions) -> Check {
    id_range(
        &format!("{field}.ownerUid"),
        required_num(&format!("{field}.ownerUid"), p.owner_uid)?,
    )?;
    id_range(
        &format!("{field}.ownerGid"),
        required_num(&format!("{field}.ownerGid"), p.owner_gid)?,
    )?;
    let perms = required(&format!("{field}.permissions"), p.permissions.as_deref())?;
    length(&format!("{field}.permissions"), perms, 3, Some(4))?;
    pattern(
        &format!("{field}.permissions"),
        perms,
        &PERMISSIONS,
        "3 or 4 octal digits such as 0755",
    )
}

pub fn root_directory(field: &str, r: &RootDirectory) -> Check {
    if let Some(p) = &r.path {
        path(&format!("{field}.path"), p)?;
    }
    if let Some(c) = &r.creation_permissions {
        creation_permissions(&format!("{field}.creationPermissions"), c)?;
    }
    Ok(())
}

pub fn tag_key(field: &str, k: &str) -> Check {
    length(field, k, 1, Some(128))?;
    pattern(field, k, &TAG_KEY, "letters, digits, spaces and _.:/=+-@")?;
    if k.to_ascii_lowercase().starts_with("aws:") {
        return Err(fail(field, "tag keys starting with 'aws:' are reserved"));
    }
    Ok(())
}

pub fn tags(field: &str, tags: &[Tag]) -> Check {
    if tags.is_empty() {
        return Err(fail(
            field,
            "member must have length greater than or equal to 1",
        ));
    }
    if tags.len() > 50 {
        return Err(fail(
            field,
            "member must have length less than or equal to 50",
        ));
    }
    for (i, tag) in tags.iter().enumerate() {
        let key = required(&format!("{field}.{}.member.key", i + 1), tag.key.as_deref())?;
        tag_key(&format!("{field}.{}.member.key", i + 1), key)?;
        let value = required(
            &format!("{field}.{}.member.value", i + 1),
            tag.value.as_deref(),
        )?;
        let f = format!("{field}.{}.member.value", i + 1);
        length(&f, value, 0, Some(256))?;
        pattern(
            &f,
            value,
            &TAG_VALUE,
            "letters, digits, spaces and _.:/=+-@",
        )?;
    }
    Ok(())
}

pub fn tag_keys(field: &str, keys: &[String]) -> Check {
    if keys.is_empty() {
        return Err(fail(
            field,
            "member must have length greater than or equal to 1",
        ));
    }
    if keys.len() > 50 {
        return Err(fail(
            field,
            "member must have length less than or equal to 50",
        ));
    }
    for (i, k) in keys.iter().enumerate() {
        let f = format!("{field}.{}", i + 1);
        length(&f, k, 1, Some(128))?;
        pattern(&f, k, &TAG_KEY, "letters, digits, spaces and _.:/=+-@")?;
    }
    Ok(())
}

pub fn max_results(field: &str, raw: Option<&str>, max: i64) -> Result<Option<usize>, Invalid> {
    let Some(raw) = raw else { return Ok(None) };
    let n: i64 = raw.parse().map_err(|_| {
        fail(
            field,
            format_args!("member must be an integer (got {raw:?})"),
        )
    })?;
    if !(1..=max).contains(&n) {
        return Err(fail(
            field,
            format_args!("member must be between 1 and {max} (got {n})"),
        ));
    }
    Ok(Some(n as usize))
}

pub fn import_rules(field: &str, rules: &[ImportDataRule]) -> Check {
    if rules.is_empty() || rules.len() > 10 {
        return Err(fail(field, "member must have between 1 and 10 rules"));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let f = format!("{field}.{}", i + 1);
        let p = required(&format!("{f}.prefix"), rule.prefix.as_deref())?;
        prefix(&format!("{f}.prefix"), p)?;
        if !seen.insert(p.to_owned()) {
            return Err(fail(
                &format!("{f}.prefix"),
                format_args!("prefix {p:?} appears twice"),
            ));
        }
        match required(&format!("{f}.trigger"), rule.trigger.as_deref())? {
            "ON_DIRECTORY_FIRST_ACCESS" | "ON_FILE_ACCESS" => {}
            _ => {
                return Err(fail(
                    &format!("{f}.trigger"),
                    "member must satisfy enum value set: [ON_DIRECTORY_FIRST_ACCESS, ON_FILE_ACCESS]",
                ));
            }
        }
        let size = required_num(&format!("{f}.sizeLessThan"), rule.size_less_than)?;
        if !(0..=52_673_613_135_872).contains(&size) {
            return Err(fail(
                &format!("{f}.sizeLessThan"),
                "member must be between 0 and 52673613135872",
            ));
        }
    }
    if !seen.contains("") {
        return Err(fail(
            field,
            "one rule must have the empty prefix \"\" (the root of the file system)",
        ));
    }
    Ok(())
}

pub fn expiration_rules(field: &str, rules: &[ExpirationDataRule]) -> Check {
    if rules.len() != 1 {
        return Err(fail(field, "member must have exactly 1 rule"));
    }
    let days = required_num(
        &format!("{field}.1.daysAfterLastAccess"),
        rules[0].days_after_last_access,
    )?;
    if !(1..=365).contains(&days) {
        return Err(fail(
            &format!("{field}.1.daysAfterLastAccess"),
            "member must be between 1 and 365",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_directory_paths_follow_the_service_rules() {
        for good in [
            "/",
            "/a",
            "/a/b/c/d",
            "/team-a/pvc_1",
            &format!("/{}", "x".repeat(99)),
        ] {
            assert!(path("p", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a",
            "/a/",
            "//a",
            "/a//b",
            "/.hidden",
            "/a/.b",
            "/a/b/c/d/e",
            "/a$b",
            "/a#b",
            "/a;b",
            "/a`b",
            "/a|b",
            "/a&b",
            "/a?b",
            "/a{b",
            "/a}b",
            "/a^b",
            "/a*b",
            "/a\nb",
            "/a<b",
            "/a>b",
            &format!("/{}", "x".repeat(100)),
        ] {
            assert!(path("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_are_full_matches() {
        assert!(file_system_id("f", "fs-0123456789abcdef0").is_ok());
        assert!(
            file_system_id(
                "f",
                "arn:aws:s3files:us-east-1:123456789012:file-system/fs-0123456789abcdef0"
            )
            .is_ok()
        );
        assert!(file_system_id("f", "xfs-0123456789abcdef0").is_err());
        assert!(file_system_id("f", "fs-0123456789abcdef0 ").is_err());
        assert!(file_system_id("f", "fs-0123456789ABCDEF0").is_err());
        assert!(file_system_id("f", "fs-0123").is_err());
        assert!(access_point_id("a", "fsap-0123456789abcdef0").is_ok());
        assert!(mount_target_id("m", "fsmt-0123456789abcdef0").is_ok());
        assert!(mount_target_id("m", "fsmt-0123").is_err());
        assert!(resource_id("r", "fsap-0123456789abcdef0").is_ok());
        assert!(resource_id("r", "fsmt-0123456789abcdef0").is_err());
    }

    #[test]
    fn tags_reject_reserved_and_oversized_keys() {
        let tag = |k: &str, v: &str| Tag {
            key: Some(k.into()),
            value: Some(v.into()),
        };
        assert!(tags("tags", &[tag("team", "a b")]).is_ok());
        assert!(tags("tags", &[]).is_err());
        assert!(tags("tags", &[tag("aws:x", "v")]).is_err());
        assert!(tags("tags", &[tag(&"k".repeat(129), "v")]).is_err());
        assert!(tags("tags", &[tag("k", &"v".repeat(257))]).is_err());
        assert!(tags("tags", &[tag("k!", "v")]).is_err());
        let many: Vec<Tag> = (0..51).map(|i| tag(&format!("k{i}"), "v")).collect();
        assert!(tags("tags", &many).is_err());
    }
}
