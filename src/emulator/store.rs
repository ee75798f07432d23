//! The emulator's state, the behaviour of every operation, and crash-safe persistence.
//!
//! Operations are pure functions of (state, request, now) that return the changes to make and
//! the response. Changes are appended to a journal (one JSON line, flushed to disk) *before*
//! they are applied and answered, so a crash between requests loses nothing; on start-up the
//! snapshot is loaded, the journal replayed, and both compacted into a new snapshot written
//! atomically (temp file, fsync, rename).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::model::*;
use super::validate::{self as v, Invalid};

/// The error types of the service model, with their HTTP status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Validation,
    NotFound,
    Conflict,
    QuotaExceeded,
    Throttling,
    Internal,
}

impl ErrorKind {
    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::Validation => "ValidationException",
            ErrorKind::NotFound => "ResourceNotFoundException",
            ErrorKind::Conflict => "ConflictException",
            ErrorKind::QuotaExceeded => "ServiceQuotaExceededException",
            ErrorKind::Throttling => "ThrottlingException",
            ErrorKind::Internal => "InternalServerException",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::Validation => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::QuotaExceeded => 402,
            ErrorKind::Throttling => 429,
            ErrorKind::Internal => 500,
        }
    }
}

/// An error answer of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// The `errorCode` body member: a short machine-readable reason.
    pub code: String,
    pub message: String,
    /// `resourceId` and `resourceType` of a `ConflictException`.
    pub resource: Option<(String, String)>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            code: code.to_owned(),
            message: message.into(),
            resource: None,
        }
    }

    fn conflict(code: &str, message: impl Into<String>, id: &str, kind: &str) -> Self {
        ApiError {
            resource: Some((id.to_owned(), kind.to_owned())),
            ..Self::new(ErrorKind::Conflict, code, message)
        }
    }

    fn not_found(what: &str, id: &str) -> Self {
        let code = format!("{}NotFound", what.replace(' ', ""));
        Self::new(
            ErrorKind::NotFound,
            &code,
            format!("{what} '{id}' does not exist"),
        )
    }

    pub fn body(&self) -> Value {
        let mut body = json!({ "errorCode": self.code, "message": self.message });
        if let Some((id, kind)) = &self.resource {
            body["resourceId"] = json!(id);
            body["resourceType"] = json!(kind);
        }
        body
    }
}

impl From<Invalid> for ApiError {
    fn from(i: Invalid) -> Self {
        ApiError::new(ErrorKind::Validation, "BadRequest", i.0)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// What the emulated account and region look like.
#[derive(Clone, Debug)]
pub struct Settings {
    pub region: String,
    pub account_id: String,
    pub vpc_id: String,
    /// Availability zone ids that subnets map into (e.g. `use1-az1`).
    pub zone_ids: Vec<String>,
    /// Explicit subnet -> zone id assignments; other subnets are hashed onto `zone_ids`.
    pub subnet_zones: BTreeMap<String, String>,
    /// Seconds a new resource stays `creating`, and a deleted mount target `deleting`.
    pub ready_after: f64,
    pub max_file_systems: usize,
    pub max_access_points_per_file_system: usize,
    pub max_security_groups_per_mount_target: usize,
    pub max_tags: usize,
}

impl Settings {
    pub fn for_region(region: &str) -> Self {
        let short = region_short(region);
        Settings {
            region: region.to_owned(),
            account_id: "123456789012".into(),
            vpc_id: "vpc-0e5f1ab2c3d4e5f60".into(),
            zone_ids: (1..=3).map(|i| format!("{short}-az{i}")).collect(),
            subnet_zones: BTreeMap::new(),
            ready_after: 0.5,
            max_file_systems: 1000,
            max_access_points_per_file_system: 10_000,
            max_security_groups_per_mount_target: 5,
            max_tags: 50,
        }
    }

    pub fn zone_of(&self, subnet: &str) -> String {
        if let Some(zone) = self.subnet_zones.get(subnet) {
            return zone.clone();
        }
        // FNV-1a: stable across runs and platforms, so a subnet always lands in one zone.
        let hash = subnet.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        self.zone_ids[(hash % self.zone_ids.len() as u64) as usize].clone()
    }
}

/// `us-east-1` -> `use1`, the prefix AWS uses in zone ids.
fn region_short(region: &str) -> String {
    let parts: Vec<&str> = region.split('-').collect();
    match parts.as_slice() {
        [geo, dir, num] => {
            let d: String = dir.chars().next().into_iter().collect();
            format!("{geo}{d}{num}")
        }
        _ => region.replace('-', ""),
    }
}

/// Everything the emulator knows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub file_systems: BTreeMap<String, FileSystem>,
    pub access_points: BTreeMap<String, AccessPoint>,
    pub mount_targets: BTreeMap<String, MountTarget>,
    pub policies: BTreeMap<String, String>,
    pub sync: BTreeMap<String, SyncConfig>,
}

/// One journaled change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Change {
    PutFileSystem(FileSystem),
    DeleteFileSystem(String),
    PutAccessPoint(AccessPoint),
    DeleteAccessPoint(String),
    PutMountTarget(MountTarget),
    DeleteMountTarget(String),
    PutPolicy(String, String),
    DeletePolicy(String),
    PutSync(String, SyncConfig),
}

impl State {
    /// Applies one change; replaying a change twice gives the same state.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::PutFileSystem(fs) => {
                self.file_systems.insert(fs.id.clone(), fs);
            }
            Change::DeleteFileSystem(id) => {
                self.file_systems.remove(&id);
                self.policies.remove(&id);
                self.sync.remove(&id);
            }
            Change::PutAccessPoint(ap) => {
                self.access_points.insert(ap.id.clone(), ap);
            }
            Change::DeleteAccessPoint(id) => {
                self.access_points.remove(&id);
            }
            Change::PutMountTarget(mt) => {
                self.mount_targets.insert(mt.id.clone(), mt);
            }
            Change::DeleteMountTarget(id) => {
                self.mount_targets.remove(&id);
            }
            Change::PutPolicy(fs, policy) => {
                self.policies.insert(fs, policy);
            }
            Change::DeletePolicy(fs) => {
                self.policies.remove(&fs);
            }
            Change::PutSync(fs, config) => {
                self.sync.insert(fs, config);
            }
        }
    }
}

/// A successful answer: HTTP status and JSON body (`Null` for no body).
pub type Answer = (u16, Value);

/// The outcome of an operation: changes to persist, then the answer.
pub struct Outcome {
    pub changes: Vec<Change>,
    pub answer: Answer,
}

fn read_only(answer: Answer) -> ApiResult<Outcome> {
    Ok(Outcome {
        changes: Vec::new(),
        answer,
    })
}

/// Generates resource ids: a prefix and 17 lowercase hex digits, as the service does.
pub struct IdGen(fastrand::Rng);

impl IdGen {
    pub fn new(seed: Option<u64>) -> Self {
        IdGen(seed.map(fastrand::Rng::with_seed).unwrap_or_default())
    }
    fn next(&mut self, prefix: &str) -> String {
        format!("{prefix}-{:x}{:016x}", self.0.u8(0..16), self.0.u64(..))
    }
}

// ------------------------------------------------------------------ id helpers

/// The bare id of a file system given as id or ARN.
fn fs_id_of(raw: &str) -> String {
    match raw.rsplit_once("file-system/") {
        Some((_, id)) => id.split('/').next().unwrap_or(id).to_owned(),
        None => raw.to_owned(),
    }
}

/// The bare id of an access point given as id or ARN, and the file system its ARN names.
fn ap_id_of(raw: &str) -> (String, Option<String>) {
    match raw.rsplit_once("/access-point/") {
        Some((fs_part, id)) => (id.to_owned(), Some(fs_id_of(fs_part))),
        None => (raw.to_owned(), None),
    }
}

fn page<T, I>(
    items: I,
    after: Option<&str>,
    limit: usize,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>)
where
    I: Iterator<Item = T>,
{
    let mut out = Vec::new();
    let mut iter = items
        .skip_while(|item| after.is_some_and(|a| key(item).as_str() <= a))
        .peekable();
    while out.len() < limit {
        match iter.next() {
            Some(item) => out.push(item),
            None => break,
        }
    }
    let next = if iter.peek().is_some() {
        out.last().map(|last| format!("after:{}", key(last)))
    } else {
        None
    };
    (out, next)
}

/// `{key: [items], nextToken?}`, the shape of every list answer.
fn page_body(key: &str, items: impl Iterator<Item = Value>, next: Option<String>) -> Value {
    let mut body = json!({ key: items.collect::<Vec<_>>() });
    if let Some(n) = next {
        body["nextToken"] = json!(n);
    }
    body
}

fn parse_token(token: Option<&str>) -> ApiResult<Option<String>> {
    match token {
        None => Ok(None),
        Some(t) => match t.strip_prefix("after:") {
            Some(id) if !id.is_empty() => Ok(Some(id.to_owned())),
            _ => Err(ApiError::new(
                ErrorKind::Validation,
                "BadRequest",
                format!("nextToken {t:?} is not a token this API returned"),
            )),
        },
    }
}

/// Default page size when `maxResults` is not given.
const DEFAULT_PAGE: usize = 100;

// ------------------------------------------------------------------ operations

/// Query parameters of a request, in order, repeated keys kept.
pub type Query = Vec<(String, String)>;

fn q<'a>(query: &'a Query, key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl State {
    fn fs(&self, raw: &str) -> ApiResult<&FileSystem> {
        let id = fs_id_of(raw);
        self.file_systems
            .get(&id)
            .ok_or_else(|| ApiError::not_found("File system", raw))
    }

    fn ap(&self, raw: &str) -> ApiResult<&AccessPoint> {
        let (id, fs) = ap_id_of(raw);
        match self.access_points.get(&id) {
            Some(ap) if fs.as_deref().is_none_or(|fs| fs == ap.file_system_id) => Ok(ap),
            _ => Err(ApiError::not_found("Access point", raw)),
        }
    }

    fn mt(&self, id: &str, now: Epoch) -> ApiResult<&MountTarget> {
        self.mount_targets
            .get(id)
            .filter(|m| !m.gone(now))
            .ok_or_else(|| ApiError::not_found("Mount target", id))
    }

    /// Mount targets that exist (`deleting` ones included) at `now`.
    pub fn live_mount_targets(&self, now: Epoch) -> impl Iterator<Item = &MountTarget> {
        self.mount_targets.values().filter(move |m| !m.gone(now))
    }

    /// Removes the mount targets whose deletion has finished.
    fn purge_mount_targets(&self, now: Epoch) -> Vec<Change> {
        self.mount_targets
            .values()
            .filter(|m| m.gone(now))
            .map(|m| Change::DeleteMountTarget(m.id.clone()))
            .collect()
    }

    fn require_available(&self, fs: &FileSystem, now: Epoch) -> ApiResult<()> {
        if status(now, fs.available_at) == "available" {
            Ok(())
        } else {
            Err(ApiError::conflict(
                "IncorrectFileSystemLifeCycleState",
                format!(
                    "file system '{}' is still creating; retry when its status is available",
                    fs.id
                ),
                &fs.id,
                "FileSystem",
            ))
        }
    }

    pub fn create_file_system(
        &self,
        s: &Settings,
        ids: &mut IdGen,
        req: CreateFileSystemRequest,
        now: Epoch,
    ) -> ApiResult<Outcome> {
        let bucket = v::required("bucket", req.bucket.as_deref())?;
        v::bucket_arn("bucket", bucket)?;
        let role = v::required("roleArn", req.role_arn.as_deref())?;
        v::role_arn("roleArn", role)?;
        let prefix = req.prefix.clone().unwrap_or_default();
        v::prefix("prefix", &prefix)?;
        if let Some(k) = &req.kms_key_id {
            v::kms_key_id("kmsKeyId", k)?;
        }
        if let Some(t) = &req.client_token {
            v::token("clientToken", t)?;
        }
        if let Some(tags) = &req.tags {
            v::tags("tags", tags)?;
        }
        let tags = req.tags.clone().unwrap_or_default();
        if let Some(token) = &req.client_token
            && let Some(existing) = self
                .file_systems
                .values()
                .find(|f| &f.client_token == token)
        {
            let same = existing.bucket == bucket
                && existing.prefix == prefix
                && existing.role_arn == role
                && existing.kms_key_id == req.kms_key_id
                && existing.tags == tags;
            if same {
                return read_only((201, existing.describe(now)));
            }
            return Err(ApiError::conflict(
                "IdempotentParameterMismatch",
                format!(
                    "client token {token:?} was already used for file system '{}' with different parameters",
                    existing.id
                ),
                &existing.id,
                "FileSystem",
            ));
        }
        if let Some(other) = self
            .file_systems
            .values()
            .find(|f| f.bucket == bucket && f.prefix == prefix)
        {
            return Err(ApiError::conflict(
                "FileSystemAlreadyExists",
                format!(
                    "file system '{}' already serves {bucket} with prefix {prefix:?}",
                    other.id
                ),
                &other.id,
                "FileSystem",
            ));
        }
        if self.file_systems.len() >= s.max_file_systems {
            return Err(ApiError::new(
                ErrorKind::QuotaExceeded,
                "FileSystemLimitExceeded",
                format!(
                    "the account already has {} file systems, the quota",
                    s.max_file_systems
                ),
            ));
        }
        let id = ids.next("fs");
        let fs = FileSystem {
            arn: format!(
                "arn:aws:s3files:{}:{}:file-system/{id}",
                s.region, s.account_id
            ),
            id,
            bucket: bucket.to_owned(),
            prefix,
            client_token: req
                .client_token
                .clone()
                .unwrap_or_else(|| ids.next("token")),
            kms_key_id: req.kms_key_id.clone(),
            role_arn: role.to_owned(),
            owner_id: s.account_id.clone(),
            tags,
            creation_time: now,
            available_at: now + s.ready_after,
        };
        let answer = (201, fs.describe(now));
        Ok(Outcome {
            changes: vec![Change::PutFileSystem(fs)],
            answer,
        })
    }

    pub fn get_file_system(&self, raw: &str, now: Epoch) -> ApiResult<Outcome> {
        v::file_system_id("fileSystemId", raw)?;
        read_only((200, self.fs(raw)?.describe(now)))
    }

    pub fn list_file_systems(&self, query: &Query, now: Epoch) -> ApiResult<Outcome> {
        let limit =
            v::max_results("maxResults", q(query, "maxResults"), 100)?.unwrap_or(DEFAULT_PAGE);
        let bucket = q(query, "bucket");
        if let Some(b) = bucket {
            v::bucket_arn("bucket", b)?;
        }
        let after = parse_token(q(query, "nextToken"))?;
        let items = self
            .file_systems
            .values()
            .filter(|f| bucket.is_none_or(|b| f.bucket == b));
        let (items, next) = page(items, after.as_deref(), limit, |f| f.id.clone());
        read_only((
            200,
            page_body("fileSystems", items.iter().map(|f| f.list_entry(now)), next),
        ))
    }

    pub fn delete_file_system(&self, raw: &str, query: &Query, now: Epoch) -> ApiResult<Outcome> {
        v::file_system_id("fileSystemId", raw)?;
        if let Some(force) = q(query, "forceDelete")
            && force != "true"
            && force != "false"
        {
            return Err(
                Invalid(format!("forceDelete must be true or false (got {force:?})")).into(),
            );
        }
        let fs = self.fs(raw)?;
        let aps = self
            .access_points
            .values()
            .filter(|a| a.file_system_id == fs.id)
            .count();
        let mts = self
            .live_mount_targets(now)
            .filter(|m| m.file_system_id == fs.id)
            .count();
        if aps > 0 || mts > 0 {
            return Err(ApiError::conflict(
                "FileSystemInUse",
                format!(
                    "file system '{}' still has {aps} access points and {mts} mount targets; delete them first",
                    fs.id
                ),
                &fs.id,
                "FileSystem",
            ));
        }
        Ok(Outcome {
            changes: vec![Change::DeleteFileSystem(fs.id.clone())],
            answer: (204, Value::Null),
        })
    }

    pub fn create_access_point(
        &self,
        s: &Settings,
        ids: &mut IdGen,
        req: CreateAccessPointRequest,
        now: Epoch,
    ) -> ApiResult<Outcome> {
        let raw_fs = v::required("fileSystemId", req.file_system_id.as_deref())?;
        v::file_system_id("fileSystemId", raw_fs)?;
        if let Some(t) = &req.client_token {
            v::token("clientToken", t)?;
        }
        if let Some(u) = &req.posix_user {
            v::posix_user("posixUser", u)?;
        }
        if let Some(r) = &req.root_directory {
            v::root_directory("rootDirectory", r)?;
        }
        if let Some(tags) = &req.tags {
            v::tags("tags", tags)?;
        }
        let fs = self.fs(raw_fs)?;
        let tags = req.tags.clone().unwrap_or_default();
        // An access point without a root directory is rooted at "/"; compare that way so a
        // retry of the same request is recognised.
        let root_directory = Some(req.root_directory.clone().unwrap_or(RootDirectory {
            path: Some("/".into()),
            creation_permissions: None,
        }));
        if let Some(token) = &req.client_token
            && let Some(existing) = self
                .access_points
                .values()
                .find(|a| &a.client_token == token)
        {
            let same = existing.file_system_id == fs.id
                && existing.posix_user == req.posix_user
                && existing.root_directory == root_directory
                && existing.tags == tags;
            if same {
                return read_only((200, existing.describe(now)));
            }
            return Err(ApiError::conflict(
                "AccessPointAlreadyExists",
                format!(
                    "client token {token:?} was already used for access point '{}' with different parameters",
                    existing.id
                ),
                &existing.id,
                "AccessPoint",
            ));
        }
        self.require_available(fs, now)?;
        let count = self
            .access_points
            .values()
            .filter(|a| a.file_system_id == fs.id)
            .count();
        if count >= s.max_access_points_per_file_system {
            return Err(ApiError::new(
                ErrorKind::QuotaExceeded,
                "AccessPointLimitExceeded",
                format!(
                    "file system '{}' already has {count} access points, the quota",
                    fs.id
                ),
            ));
        }
        let id = ids.next("fsap");
        let ap = AccessPoint {
            arn: format!("{}/access-point/{id}", fs.arn),
            id,
            file_system_id: fs.id.clone(),
            client_token: req
                .client_token
                .clone()
                .unwrap_or_else(|| ids.next("token")),
            posix_user: req.posix_user.clone(),
            root_directory,
            tags,
            owner_id: s.account_id.clone(),
            available_at: now + s.ready_after,
        };
        let answer = (200, ap.describe(now));
        Ok(Outcome {
            changes: vec![Change::PutAccessPoint(ap)],
            answer,
        })
    }

    pub fn get_access_point(&self, raw: &str, now: Epoch) -> ApiResult<Outcome> {
        v::access_point_id("accessPointId", raw)?;
        read_only((200, self.ap(raw)?.describe(now)))
    }

    pub fn list_access_points(&self, query: &Query, now: Epoch) -> ApiResult<Outcome> {
        let raw_fs = v::required("fileSystemId", q(query, "fileSystemId"))?;
        v::file_system_id("fileSystemId", raw_fs)?;
        let limit =
            v::max_results("maxResults", q(query, "maxResults"), 1000)?.unwrap_or(DEFAULT_PAGE);
        let after = parse_token(q(query, "nextToken"))?;
        let fs = self.fs(raw_fs)?;
        let items = self
            .access_points
            .values()
            .filter(|a| a.file_system_id == fs.id);
        let (items, next) = page(items, after.as_deref(), limit, |a| a.id.clone());
        read_only((
            200,
            page_body(
                "accessPoints",
                items.iter().map(|a| a.list_entry(now)),
                next,
            ),
        ))
    }

    pub fn delete_access_point(&self, raw: &str) -> ApiResult<Outcome> {
        v::access_point_id("accessPointId", raw)?;
        let ap = self.ap(raw)?;
        Ok(Outcome {
            changes: vec![Change::DeleteAccessPoint(ap.id.clone())],
            answer: (204, Value::Null),
        })
    }

    pub fn create_mount_target(
        &self,
        s: &Settings,
        ids: &mut IdGen,
        req: CreateMountTargetRequest,
        now: Epoch,
    ) -> ApiResult<Outcome> {
        let raw_fs = v::required("fileSystemId", req.file_system_id.as_deref())?;
        v::file_system_id("fileSystemId", raw_fs)?;
        let subnet = v::required("subnetId", req.subnet_id.as_deref())?;
        v::subnet_id("subnetId", subnet)?;
        let ip_type = req.ip_address_type.as_deref().unwrap_or("IPV4_ONLY");
        v::ip_address_type("ipAddressType", ip_type)?;
        if let Some(ip) = &req.ipv4_address {
            v::ipv4("ipv4Address", ip)?;
        }
        if let Some(ip) = &req.ipv6_address {
            v::ipv6("ipv6Address", ip)?;
        }
        let groups = req.security_groups.clone().unwrap_or_default();
        v::security_groups("securityGroups", &groups)?;
        if ip_type == "IPV6_ONLY" && req.ipv4_address.is_some() {
            return Err(Invalid(
                "ipv4Address cannot be set when ipAddressType is IPV6_ONLY".into(),
            )
            .into());
        }
        if ip_type == "IPV4_ONLY" && req.ipv6_address.is_some() {
            return Err(Invalid(
                "ipv6Address cannot be set when ipAddressType is IPV4_ONLY".into(),
            )
            .into());
        }
        if groups.len() > s.max_security_groups_per_mount_target {
            return Err(ApiError::new(
                ErrorKind::QuotaExceeded,
                "SecurityGroupLimitExceeded",
                format!(
                    "a mount target takes at most {} security groups",
                    s.max_security_groups_per_mount_target
                ),
            ));
        }
        let fs = self.fs(raw_fs)?;
        self.require_available(fs, now)?;
        let zone = s.zone_of(subnet);
        // A mount target still being deleted holds its zone until it is gone.
        if let Some(other) = self
            .live_mount_targets(now)
            .find(|m| m.file_system_id == fs.id && m.availability_zone_id == zone)
        {
            return Err(ApiError::conflict(
                "MountTargetConflict",
                format!(
                    "file system '{}' already has mount target '{}' in availability zone {zone}",
                    fs.id, other.id
                ),
                &other.id,
                "MountTarget",
            ));
        }
        let ipv4 = match (&req.ipv4_address, ip_type) {
            (Some(ip), _) => {
                if self
                    .live_mount_targets(now)
                    .any(|m| m.ipv4_address.as_deref() == Some(ip))
                {
                    return Err(ApiError::conflict(
                        "IpAddressInUse",
                        format!("ip address {ip} is already in use"),
                        ip,
                        "MountTarget",
                    ));
                }
                Some(ip.clone())
            }
            (None, "IPV6_ONLY") => None,
            (None, _) => {
                let zone_index = s.zone_ids.iter().position(|z| *z == zone).unwrap_or(0);
                let used = self.mount_targets.len();
                Some(format!("10.0.{}.{}", zone_index + 1, 10 + used % 240))
            }
        };
        let mt = MountTarget {
            id: ids.next("fsmt"),
            file_system_id: fs.id.clone(),
            subnet_id: subnet.to_owned(),
            availability_zone_id: zone,
            ipv4_address: ipv4,
            ipv6_address: req.ipv6_address.clone(),
            security_groups: groups,
            vpc_id: s.vpc_id.clone(),
            network_interface_id: ids.next("eni"),
            owner_id: s.account_id.clone(),
            available_at: now + s.ready_after,
            deleted_at: None,
        };
        let answer = (200, mt.describe(now));
        let mut changes = self.purge_mount_targets(now);
        changes.push(Change::PutMountTarget(mt));
        Ok(Outcome { changes, answer })
    }

    pub fn get_mount_target(&self, id: &str, now: Epoch) -> ApiResult<Outcome> {
        v::mount_target_id("mountTargetId", id)?;
        read_only((200, self.mt(id, now)?.describe(now)))
    }

    pub fn list_mount_targets(&self, query: &Query, now: Epoch) -> ApiResult<Outcome> {
        let limit =
            v::max_results("maxResults", q(query, "maxResults"), 100)?.unwrap_or(DEFAULT_PAGE);
        let after = parse_token(q(query, "nextToken"))?;
        let fs_id = match (q(query, "fileSystemId"), q(query, "accessPointId")) {
            (Some(raw), _) => {
                v::file_system_id("fileSystemId", raw)?;
                self.fs(raw)?.id.clone()
            }
            (None, Some(raw)) => {
                v::access_point_id("accessPointId", raw)?;
                self.ap(raw)?.file_system_id.clone()
            }
            (None, None) => {
                return Err(
                    Invalid("one of fileSystemId or accessPointId is required".into()).into(),
                );
            }
        };
        let items = self
            .live_mount_targets(now)
            .filter(|m| m.file_system_id == fs_id);
        let (items, next) = page(items, after.as_deref(), limit, |m| m.id.clone());
        read_only((
            200,
            page_body(
                "mountTargets",
                items.iter().map(|m| m.list_entry(now)),
                next,
            ),
        ))
    }

    pub fn update_mount_target(
        &self,
        s: &Settings,
        id: &str,
        req: UpdateMountTargetRequest,
        now: Epoch,
    ) -> ApiResult<Outcome> {
        v::mount_target_id("mountTargetId", id)?;
        let groups = req
            .security_groups
            .ok_or_else(|| Invalid("securityGroups is required".into()))?;
        v::security_groups("securityGroups", &groups)?;
        if groups.len() > s.max_security_groups_per_mount_target {
            return Err(ApiError::new(
                ErrorKind::QuotaExceeded,
                "SecurityGroupLimitExceeded",
                format!(
                    "a mount target takes at most {} security groups",
                    s.max_security_groups_per_mount_target
                ),
            ));
        }
        let mut mt = self.mt(id, now)?.clone();
        if mt.deleted_at.is_some() {
            return Err(ApiError::conflict(
                "IncorrectMountTargetState",
                format!("mount target '{id}' is being deleted"),
                id,
                "MountTarget",
            ));
        }
        mt.security_groups = groups;
        let answer = (200, mt.describe(now));
        Ok(Outcome {
            changes: vec![Change::PutMountTarget(mt)],
            answer,
        })
    }

    /// The mount target turns `deleting` for `ready_after` seconds, as the service takes
    /// minutes; deleting it again meanwhile is accepted and changes nothing.
    pub fn delete_mount_target(&self, s: &Settings, id: &str, now: Epoch) -> ApiResult<Outcome> {
        v::mount_target_id("mountTargetId", id)?;
        let mt = self.mt(id, now)?;
        let mut changes = self.purge_mount_targets(now);
        if mt.deleted_at.is_none() {
            if s.ready_after > 0.0 {
                let mut deleting = mt.clone();
                deleting.deleted_at = Some(now + s.ready_after);
                changes.push(Change::PutMountTarget(deleting));
            } else {
                changes.push(Change::DeleteMountTarget(mt.id.clone()));
            }
        }
        Ok(Outcome {
            changes,
            answer: (204, Value::Null),
        })
    }

    pub fn put_policy(&self, raw: &str, req: PutFileSystemPolicyRequest) -> ApiResult<Outcome> {
        v::file_system_id("fileSystemId", raw)?;
        let policy = v::required("policy", req.policy.as_deref())?;
        if policy.chars().count() > 20_000 {
            return Err(Invalid("policy must be at most 20000 characters".into()).into());
        }
        match serde_json::from_str::<Value>(policy) {
            Ok(Value::Object(_)) => {}
            _ => {
                return Err(Invalid(
                    "policy must be a JSON IAM policy document (an object)".into(),
                )
                .into());
            }
        }
        let fs = self.fs(raw)?;
        Ok(Outcome {
            changes: vec![Change::PutPolicy(fs.id.clone(), policy.to_owned())],
            answer: (200, json!({})),
        })
    }

    pub fn get_policy(&self, raw: &str) -> ApiResult<Outcome> {
        v::file_system_id("fileSystemId", raw)?;
        let fs = self.fs(raw)?;
        match self.policies.get(&fs.id) {
            Some(policy) => read_only((200, json!({ "fileSystemId": fs.id, "policy": policy }))),
            None => Err(ApiError::new(
                ErrorKind::NotFound,
                "PolicyNotFound",
                format!("file system '{}' has no policy", fs.id),
            )),
        }
    }

    pub fn delete_policy(&self, raw: &str) -> ApiResult<Outcome> {
        v::file_system_id("fileSystemId", raw)?;
        let fs = self.fs(raw)?;
        Ok(Outcome {
            changes: vec![Change::DeletePolicy(fs.id.clone())],
            answer: (204, Value::Null),
        })
    }

    pub fn get_sync(&self, raw: &str) -> ApiResult<Outcome> {
        v::file_system_id("fileSystemId", raw)?;
        let fs = self.fs(raw)?;
        read_only((
            200,
            self.sync
                .get(&fs.id)
                .cloned()
                .unwrap_or_default()
                .describe(),
        ))
    }

    pub fn put_sync(
        &self,
        raw: &str,
        req: PutSynchronizationConfigurationRequest,
    ) -> ApiResult<Outcome> {
        v::file_system_id("fileSystemId", raw)?;
        let import = req
            .import_data_rules
            .ok_or_else(|| Invalid("importDataRules is required".into()))?;
        v::import_rules("importDataRules", &import)?;
        let expiration = req
            .expiration_data_rules
            .ok_or_else(|| Invalid("expirationDataRules is required".into()))?;
        v::expiration_rules("expirationDataRules", &expiration)?;
        let fs = self.fs(raw)?;
        let current = self.sync.get(&fs.id).and_then(|c| c.version);
        if req.latest_version_number != current {
            let expected = match current {
                Some(n) => format!("latestVersionNumber {n}"),
                None => "no latestVersionNumber (no configuration was put yet)".to_owned(),
            };
            return Err(ApiError::conflict(
                "VersionMismatch",
                format!("the configuration of '{}' changed; send {expected}", fs.id),
                &fs.id,
                "SynchronizationConfiguration",
            ));
        }
        let config = SyncConfig {
            version: Some(current.unwrap_or(0) + 1),
            import_data_rules: import,
            expiration_data_rules: expiration,
        };
        Ok(Outcome {
            changes: vec![Change::PutSync(fs.id.clone(), config)],
            answer: (200, json!({})),
        })
    }

    /// The taggable resource a tag API names.
    fn tagged(&self, raw: &str) -> ApiResult<Tagged<'_>> {
        v::resource_id("resourceId", raw)?;
        if raw.contains("access-point/") || raw.starts_with("fsap-") {
            Ok(Tagged::AccessPoint(self.ap(raw)?))
        } else {
            Ok(Tagged::FileSystem(self.fs(raw)?))
        }
    }

    pub fn list_tags(&self, raw: &str, query: &Query) -> ApiResult<Outcome> {
        let limit = v::max_results("MaxResults", q(query, "MaxResults"), 50)?.unwrap_or(50);
        let tags = self.tagged(raw)?.tags();
        let start = match q(query, "NextToken") {
            None => 0,
            Some(t) => t
                .strip_prefix("tag:")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n <= tags.len())
                .ok_or_else(|| {
                    Invalid(format!("NextToken {t:?} is not a token this API returned"))
                })?,
        };
        let end = (start + limit).min(tags.len());
        let mut body = json!({ "tags": tags[start..end] });
        if end < tags.len() {
            body["nextToken"] = json!(format!("tag:{end}"));
        }
        read_only((200, body))
    }

    pub fn tag_resource(
        &self,
        s: &Settings,
        raw: &str,
        req: TagResourceRequest,
    ) -> ApiResult<Outcome> {
        let new = req.tags.ok_or_else(|| Invalid("tags is required".into()))?;
        v::tags("tags", &new)?;
        let resource = self.tagged(raw)?;
        let mut tags = resource.tags();
        for tag in new {
            match tags.iter_mut().find(|t| t.key == tag.key) {
                Some(existing) => existing.value = tag.value,
                None => tags.push(tag),
            }
        }
        if tags.len() > s.max_tags {
            return Err(Invalid(format!("a resource can have at most {} tags", s.max_tags)).into());
        }
        Ok(Outcome {
            changes: vec![resource.with_tags(tags)],
            answer: (200, Value::Null),
        })
    }

    pub fn untag_resource(&self, raw: &str, query: &Query) -> ApiResult<Outcome> {
        let keys: Vec<String> = query
            .iter()
            .filter(|(k, _)| k == "tagKeys")
            .map(|(_, v)| v.clone())
            .collect();
        if keys.is_empty() {
            return Err(Invalid("tagKeys is required".into()).into());
        }
        v::tag_keys("tagKeys", &keys)?;
        let resource = self.tagged(raw)?;
        let mut tags = resource.tags();
        tags.retain(|t| !t.key.as_ref().is_some_and(|k| keys.contains(k)));
        Ok(Outcome {
            changes: vec![resource.with_tags(tags)],
            answer: (200, Value::Null),
        })
    }
}

/// A resource the tag APIs accept.
enum Tagged<'a> {
    FileSystem(&'a FileSystem),
    AccessPoint(&'a AccessPoint),
}

impl Tagged<'_> {
    fn tags(&self) -> Vec<Tag> {
        match self {
            Tagged::FileSystem(fs) => fs.tags.clone(),
            Tagged::AccessPoint(ap) => ap.tags.clone(),
        }
    }

    /// The change that stores the resource with `tags`.
    fn with_tags(&self, tags: Vec<Tag>) -> Change {
        match self {
            Tagged::FileSystem(fs) => Change::PutFileSystem(FileSystem {
                tags,
                ..(*fs).clone()
            }),
            Tagged::AccessPoint(ap) => Change::PutAccessPoint(AccessPoint {
                tags,
                ..(*ap).clone()
            }),
        }
    }
}

// ------------------------------------------------------------------ persistence

/// Compact once the journal holds this many changes.
const COMPACT_AFTER: usize = 20_000;

/// The on-disk snapshot + journal of a state directory.
pub struct Journal {
    dir: PathBuf,
    file: File,
    entries: usize,
}

impl Journal {
    /// Loads the state stored in `dir` (creating the directory if needed) and compacts it.
    pub fn open(dir: &Path) -> anyhow::Result<(State, Journal)> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state dir {}", dir.display()))?;
        let snapshot = dir.join("state.json");
        let mut state: State = match std::fs::read(&snapshot) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", snapshot.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", snapshot.display())),
        };
        let journal = dir.join("journal.jsonl");
        if let Ok(file) = File::open(&journal) {
            for line in BufReader::new(file).lines() {
                let line = line?;
                // A crash mid-append can leave a torn last line; it was never acknowledged.
                match serde_json::from_str::<Change>(&line) {
                    Ok(change) => state.apply(change),
                    Err(_) => break,
                }
            }
        }
        write_atomically(&snapshot, &serde_json::to_vec(&state)?)?;
        // Append mode: after compaction truncates the file, writes still land at its end.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)?;
        file.set_len(0)?;
        file.sync_all()?;
        Ok((
            state,
            Journal {
                dir: dir.to_owned(),
                file,
                entries: 0,
            },
        ))
    }

    /// Durably records changes; returns only once they are on disk.
    pub fn append(&mut self, changes: &[Change]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for change in changes {
            serde_json::to_writer(&mut buf, change)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.entries += changes.len();
        Ok(())
    }

    /// Folds the journal into a new snapshot once it is long; `state` must include every
    /// appended change. A crash in between is harmless: replaying puts and deletes over the
    /// new snapshot gives the same state.
    pub fn compact_if_due(&mut self, state: &State) -> std::io::Result<()> {
        if self.entries < COMPACT_AFTER {
            return Ok(());
        }
        write_atomically(&self.dir.join("state.json"), &serde_json::to_vec(state)?)?;
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.entries = 0;
        Ok(())
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_prefixes_match_aws_zone_ids() {
        assert_eq!(region_short("us-east-1"), "use1");
        assert_eq!(region_short("eu-west-3"), "euw3");
        assert_eq!(region_short("ap-southeast-2"), "aps2");
    }

    #[test]
    fn subnets_map_to_zones_stably() {
        let s = Settings::for_region("us-east-1");
        let z = s.zone_of("subnet-0123abcd");
        assert_eq!(z, s.zone_of("subnet-0123abcd"));
        assert!(s.zone_ids.contains(&z));
    }

    #[test]
    fn arns_and_ids_resolve_to_the_same_resource() {
        assert_eq!(
            fs_id_of("arn:aws:s3files:us-east-1:123456789012:file-system/fs-0123456789abcdef0"),
            "fs-0123456789abcdef0"
        );
        let (ap, fs) = ap_id_of(
            "arn:aws:s3files:us-east-1:1:file-system/fs-0123456789abcdef0/access-point/fsap-0123456789abcdef1",
        );
        assert_eq!(ap, "fsap-0123456789abcdef1");
        assert_eq!(fs.as_deref(), Some("fs-0123456789abcdef0"));
    }

    #[test]
    fn pages_resume_after_the_token() {
        let items: Vec<String> = (0..5).map(|i| format!("id{i}")).collect();
        let (p1, next) = page(items.iter().cloned(), None, 2, |s| s.clone());
        assert_eq!(p1, ["id0", "id1"]);
        let after = parse_token(next.as_deref()).expect("token").expect("some");
        let (p2, _) = page(items.iter().cloned(), Some(&after), 2, |s| s.clone());
        assert_eq!(p2, ["id2", "id3"]);
        let (p3, last) = page(items.iter().cloned(), Some("id3"), 2, |s| s.clone());
        assert_eq!(p3, ["id4"]);
        assert_eq!(last, None);
    }

    #[test]
    fn the_journal_survives_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut state, mut journal) = Journal::open(dir.path()).expect("open");
        let change = Change::PutPolicy("fs-0123456789abcdef0".into(), "{}".into());
        journal
            .append(std::slice::from_ref(&change))
            .expect("append");
        state.apply(change);
        drop(journal);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal.jsonl"))
            .expect("open");
        f.write_all(b"{\"PutPolicy\":[\"fs-").expect("torn write");
        let (reloaded, _) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(reloaded.policies, state.policies);
    }
}
