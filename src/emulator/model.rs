//! Wire shapes of the emulated S3 Files API (member names as in the service model) and the
//! records the emulator stores. Request members are all optional here so that a missing
//! required member becomes a `ValidationException` naming it, not a JSON parse error.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PosixUser {
    #[serde(default)]
    pub uid: Option<i64>,
    #[serde(default)]
    pub gid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_gids: Option<Vec<i64>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationPermissions {
    #[serde(default)]
    pub owner_uid: Option<i64>,
    #[serde(default)]
    pub owner_gid: Option<i64>,
    #[serde(default)]
    pub permissions: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootDirectory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_permissions: Option<CreationPermissions>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportDataRule {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub trigger: Option<String>,
    #[serde(default)]
    pub size_less_than: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpirationDataRule {
    #[serde(default)]
    pub days_after_last_access: Option<i64>,
}

// ------------------------------------------------------------------ requests

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateFileSystemRequest {
    pub accept_bucket_warning: Option<bool>,
    pub bucket: Option<String>,
    pub client_token: Option<String>,
    pub kms_key_id: Option<String>,
    pub prefix: Option<String>,
    pub role_arn: Option<String>,
    pub tags: Option<Vec<Tag>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateAccessPointRequest {
    pub client_token: Option<String>,
    pub file_system_id: Option<String>,
    pub posix_user: Option<PosixUser>,
    pub root_directory: Option<RootDirectory>,
    pub tags: Option<Vec<Tag>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMountTargetRequest {
    pub file_system_id: Option<String>,
    pub ip_address_type: Option<String>,
    pub ipv4_address: Option<String>,
    pub ipv6_address: Option<String>,
    pub security_groups: Option<Vec<String>>,
    pub subnet_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateMountTargetRequest {
    pub security_groups: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutFileSystemPolicyRequest {
    pub policy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutSynchronizationConfigurationRequest {
    pub latest_version_number: Option<i64>,
    pub import_data_rules: Option<Vec<ImportDataRule>>,
    pub expiration_data_rules: Option<Vec<ExpirationDataRule>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagResourceRequest {
    pub tags: Option<Vec<Tag>>,
}

// ------------------------------------------------------------------ stored records

/// Seconds since the Unix epoch, as the API's timestamps.
pub type Epoch = f64;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileSystem {
    pub id: String,
    pub arn: String,
    pub bucket: String,
    pub prefix: String,
    pub client_token: String,
    pub kms_key_id: Option<String>,
    pub role_arn: String,
    pub owner_id: String,
    pub tags: Vec<Tag>,
    pub creation_time: Epoch,
    pub available_at: Epoch,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessPoint {
    pub id: String,
    pub arn: String,
    pub file_system_id: String,
    pub client_token: String,
    pub posix_user: Option<PosixUser>,
    pub root_directory: Option<RootDirectory>,
    pub tags: Vec<Tag>,
    pub owner_id: String,
    pub available_at: Epoch,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MountTarget {
    pub id: String,
    pub file_system_id: String,
    pub subnet_id: String,
    pub availability_zone_id: String,
    pub ipv4_address: Option<String>,
    pub ipv6_address: Option<String>,
    pub security_groups: Vec<String>,
    pub vpc_id: String,
    pub network_interface_id: String,
    pub owner_id: String,
    pub available_at: Epoch,
    /// Set by DeleteMountTarget: the mount target is `deleting` until then, and gone after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Epoch>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncConfig {
    /// `None` until the first Put.
    pub version: Option<i64>,
    pub import_data_rules: Vec<ImportDataRule>,
    pub expiration_data_rules: Vec<ExpirationDataRule>,
}

impl Default for SyncConfig {
    /// The service's documented defaults: import data of files under 128 KiB on first
    /// directory access; expire data 30 days after last access.
    fn default() -> Self {
        SyncConfig {
            version: None,
            import_data_rules: vec![ImportDataRule {
                prefix: Some(String::new()),
                trigger: Some("ON_DIRECTORY_FIRST_ACCESS".into()),
                size_less_than: Some(131_072),
            }],
            expiration_data_rules: vec![ExpirationDataRule {
                days_after_last_access: Some(30),
            }],
        }
    }
}

// ------------------------------------------------------------------ responses

pub fn status(now: Epoch, available_at: Epoch) -> &'static str {
    if now >= available_at {
        "available"
    } else {
        "creating"
    }
}

fn name_of(tags: &[Tag]) -> Option<&str> {
    tags.iter()
        .find(|t| t.key.as_deref() == Some("Name"))
        .and_then(|t| t.value.as_deref())
}

/// Inserts `key: value` only when `value` is `Some`.
fn put_opt<T: Serialize>(obj: &mut Value, key: &str, value: Option<T>) {
    if let (Some(v), Some(map)) = (value, obj.as_object_mut()) {
        map.insert(key.to_owned(), json!(v));
    }
}

impl FileSystem {
    /// Get/Create shape.
    pub fn describe(&self, now: Epoch) -> Value {
        let mut v = self.list_entry(now);
        v["prefix"] = json!(self.prefix);
        v["clientToken"] = json!(self.client_token);
        put_opt(&mut v, "kmsKeyId", self.kms_key_id.as_ref());
        if !self.tags.is_empty() {
            v["tags"] = json!(self.tags);
        }
        v
    }

    /// ListFileSystems entry shape.
    pub fn list_entry(&self, now: Epoch) -> Value {
        let mut v = json!({
            "creationTime": self.creation_time,
            "fileSystemArn": self.arn,
            "fileSystemId": self.id,
            "bucket": self.bucket,
            "status": status(now, self.available_at),
            "roleArn": self.role_arn,
            "ownerId": self.owner_id,
        });
        put_opt(&mut v, "name", name_of(&self.tags));
        v
    }
}

impl AccessPoint {
    pub fn describe(&self, now: Epoch) -> Value {
        let mut v = self.list_entry(now);
        v["clientToken"] = json!(self.client_token);
        if !self.tags.is_empty() {
            v["tags"] = json!(self.tags);
        }
        v
    }

    pub fn list_entry(&self, now: Epoch) -> Value {
        let mut v = json!({
            "accessPointArn": self.arn,
            "accessPointId": self.id,
            "fileSystemId": self.file_system_id,
            "ownerId": self.owner_id,
            "status": status(now, self.available_at),
        });
        put_opt(&mut v, "posixUser", self.posix_user.as_ref());
        put_opt(&mut v, "rootDirectory", self.root_directory.as_ref());
        put_opt(&mut v, "name", name_of(&self.tags));
        v
    }
}

impl MountTarget {
    pub fn status(&self, now: Epoch) -> &'static str {
        match self.deleted_at {
            Some(_) => "deleting",
            None => status(now, self.available_at),
        }
    }

    /// Deleted and past its `deleting` time: no longer there.
    pub fn gone(&self, now: Epoch) -> bool {
        self.deleted_at.is_some_and(|at| now >= at)
    }

    pub fn describe(&self, now: Epoch) -> Value {
        let mut v = self.list_entry(now);
        v["securityGroups"] = json!(self.security_groups);
        v
    }

    pub fn list_entry(&self, now: Epoch) -> Value {
        let mut v = json!({
            "availabilityZoneId": self.availability_zone_id,
            "ownerId": self.owner_id,
            "mountTargetId": self.id,
            "fileSystemId": self.file_system_id,
            "subnetId": self.subnet_id,
            "networkInterfaceId": self.network_interface_id,
            "vpcId": self.vpc_id,
            "status": self.status(now),
        });
        put_opt(&mut v, "ipv4Address", self.ipv4_address.as_ref());
        put_opt(&mut v, "ipv6Address", self.ipv6_address.as_ref());
        v
    }
}

impl SyncConfig {
    pub fn describe(&self) -> Value {
        let mut v = json!({
            "importDataRules": self.import_data_rules,
            "expirationDataRules": self.expiration_data_rules,
        });
        put_opt(&mut v, "latestVersionNumber", self.version);
        v
    }
}
