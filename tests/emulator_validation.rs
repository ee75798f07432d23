//! Bad input to the emulator through the real SDK: every case must come back as the model's
//! `ValidationException` (HTTP 400) with a message naming the offending field.

mod common;

use std::future::Future;
use std::pin::Pin;

use aws_sdk_s3files::Client;
use aws_sdk_s3files::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3files::types::{
    CreationPermissions, ExpirationDataRule, ImportDataRule, ImportTrigger, IpAddressType,
    PosixUser, RootDirectory, Tag,
};
use common::emulator::{ROLE, RunningEmulator, test_config};

type Outcome = Result<(), (String, String)>;
type Case = (
    &'static str,
    &'static str,
    Pin<Box<dyn Future<Output = Outcome> + Send>>,
);

fn meta<E: ProvideErrorMetadata, R>(e: SdkError<E, R>) -> (String, String) {
    match &e {
        SdkError::ServiceError(s) => (
            s.err().code().unwrap_or_default().to_owned(),
            s.err().message().unwrap_or_default().to_owned(),
        ),
        _ => (
            "client-side".into(),
            "the SDK refused to send the request".into(),
        ),
    }
}

macro_rules! case {
    ($name:expr, $field:expr, $call:expr) => {{
        let request = $call;
        (
            $name,
            $field,
            Box::pin(async move { request.send().await.map(|_| ()).map_err(meta) }) as Pin<Box<_>>,
        )
    }};
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build().expect("tag")
}

fn perms(uid: i64, gid: i64, mode: &str) -> CreationPermissions {
    CreationPermissions::builder()
        .owner_uid(uid)
        .owner_gid(gid)
        .permissions(mode)
        .build()
        .expect("perms")
}

fn user(uid: i64, gid: i64) -> PosixUser {
    PosixUser::builder()
        .uid(uid)
        .gid(gid)
        .build()
        .expect("user")
}

fn root(path: &str) -> RootDirectory {
    RootDirectory::builder().path(path).build()
}

fn rule(prefix: &str, trigger: ImportTrigger, size: i64) -> ImportDataRule {
    ImportDataRule::builder()
        .prefix(prefix)
        .trigger(trigger)
        .size_less_than(size)
        .build()
        .expect("rule")
}

fn expire(days: i32) -> ExpirationDataRule {
    ExpirationDataRule::builder()
        .days_after_last_access(days)
        .build()
        .expect("expiration")
}

fn cases(c: &Client, fs: &str) -> Vec<Case> {
    let fs = fs.to_owned();
    let bucket = "arn:aws:s3:::valid-bucket";
    let long = |n: usize| "a".repeat(n);
    let root_rule = rule("", ImportTrigger::OnDirectoryFirstAccess, 131_072);
    vec![
        case!(
            "create fs without bucket",
            "bucket",
            c.create_file_system().role_arn(ROLE)
        ),
        case!(
            "create fs with a bucket name, not an ARN",
            "bucket",
            c.create_file_system().bucket("my-bucket").role_arn(ROLE)
        ),
        case!(
            "create fs without role",
            "roleArn",
            c.create_file_system().bucket(bucket)
        ),
        case!(
            "create fs with a short account in the role",
            "roleArn",
            c.create_file_system()
                .bucket(bucket)
                .role_arn("arn:aws:iam::123:role/x")
        ),
        case!(
            "create fs with a prefix lacking '/'",
            "prefix",
            c.create_file_system()
                .bucket(bucket)
                .role_arn(ROLE)
                .prefix("data")
        ),
        case!(
            "create fs with a 1025-character prefix",
            "prefix",
            c.create_file_system()
                .bucket(bucket)
                .role_arn(ROLE)
                .prefix(format!("{}/", long(1024)))
        ),
        case!(
            "create fs with a bad KMS key",
            "kmsKeyId",
            c.create_file_system()
                .bucket(bucket)
                .role_arn(ROLE)
                .kms_key_id("not-a-key")
        ),
        case!(
            "create fs with a 65-character token",
            "clientToken",
            c.create_file_system()
                .bucket(bucket)
                .role_arn(ROLE)
                .client_token(long(65))
        ),
        case!(
            "create fs with an empty tag list",
            "tags",
            c.create_file_system()
                .bucket(bucket)
                .role_arn(ROLE)
                .set_tags(Some(vec![]))
        ),
        case!(
            "create fs with a reserved tag key",
            "tags",
            c.create_file_system()
                .bucket(bucket)
                .role_arn(ROLE)
                .tags(tag("aws:owner", "x"))
        ),
        case!(
            "create fs with a 129-character tag key",
            "tags",
            c.create_file_system()
                .bucket(bucket)
                .role_arn(ROLE)
                .tags(tag(&long(129), "x"))
        ),
        case!(
            "create fs with a 257-character tag value",
            "tags",
            c.create_file_system()
                .bucket(bucket)
                .role_arn(ROLE)
                .tags(tag("k", &long(257)))
        ),
        case!(
            "create fs with 51 tags",
            "tags",
            c.create_file_system()
                .bucket(bucket)
                .role_arn(ROLE)
                .set_tags(Some((0..51).map(|i| tag(&format!("k{i}"), "v")).collect()))
        ),
        case!(
            "create fs with '!' in a tag key",
            "tags",
            c.create_file_system()
                .bucket(bucket)
                .role_arn(ROLE)
                .tags(tag("bad!", "v"))
        ),
        case!(
            "create ap on a short fs id",
            "fileSystemId",
            c.create_access_point().file_system_id("fs-123")
        ),
        case!(
            "create ap on an upper-case fs id",
            "fileSystemId",
            c.create_access_point()
                .file_system_id("fs-0123456789ABCDEF0")
        ),
        case!(
            "create ap on a 41-digit fs id",
            "fileSystemId",
            c.create_access_point()
                .file_system_id(format!("fs-{}", "0".repeat(41)))
        ),
        case!(
            "create ap with uid -1",
            "posixUser.uid",
            c.create_access_point()
                .file_system_id(&fs)
                .posix_user(user(-1, 0))
        ),
        case!(
            "create ap with gid 2^32",
            "posixUser.gid",
            c.create_access_point()
                .file_system_id(&fs)
                .posix_user(user(0, 4_294_967_296))
        ),
        case!(
            "create ap with a negative secondary gid",
            "secondaryGids",
            c.create_access_point().file_system_id(&fs).posix_user(
                PosixUser::builder()
                    .uid(1)
                    .gid(1)
                    .secondary_gids(-5)
                    .build()
                    .expect("user")
            )
        ),
        case!(
            "create ap with a relative root",
            "rootDirectory.path",
            c.create_access_point()
                .file_system_id(&fs)
                .root_directory(root("relative"))
        ),
        case!(
            "create ap with five components",
            "rootDirectory.path",
            c.create_access_point()
                .file_system_id(&fs)
                .root_directory(root("/a/b/c/d/e"))
        ),
        case!(
            "create ap with a hidden component",
            "rootDirectory.path",
            c.create_access_point()
                .file_system_id(&fs)
                .root_directory(root("/.hidden"))
        ),
        case!(
            "create ap with '$' in the root",
            "rootDirectory.path",
            c.create_access_point()
                .file_system_id(&fs)
                .root_directory(root("/a$b"))
        ),
        case!(
            "create ap with a trailing slash",
            "rootDirectory.path",
            c.create_access_point()
                .file_system_id(&fs)
                .root_directory(root("/a/"))
        ),
        case!(
            "create ap with a 101-character root",
            "rootDirectory.path",
            c.create_access_point()
                .file_system_id(&fs)
                .root_directory(root(&format!("/{}", long(100))))
        ),
        case!(
            "create ap with mode 0999",
            "permissions",
            c.create_access_point().file_system_id(&fs).root_directory(
                RootDirectory::builder()
                    .path("/x")
                    .creation_permissions(perms(1, 1, "0999"))
                    .build()
            )
        ),
        case!(
            "create ap with mode 75",
            "permissions",
            c.create_access_point().file_system_id(&fs).root_directory(
                RootDirectory::builder()
                    .path("/x")
                    .creation_permissions(perms(1, 1, "75"))
                    .build()
            )
        ),
        case!(
            "create ap with owner uid -1",
            "ownerUid",
            c.create_access_point().file_system_id(&fs).root_directory(
                RootDirectory::builder()
                    .path("/x")
                    .creation_permissions(perms(-1, 1, "0755"))
                    .build()
            )
        ),
        case!(
            "create ap with an empty token",
            "clientToken",
            c.create_access_point().file_system_id(&fs).client_token("")
        ),
        case!(
            "get ap with a malformed id",
            "accessPointId",
            c.get_access_point().access_point_id("fsap-xyz")
        ),
        case!(
            "get ap with a file system id",
            "accessPointId",
            c.get_access_point().access_point_id("fs-0123456789abcdef0")
        ),
        case!(
            "list aps with maxResults 0",
            "maxResults",
            c.list_access_points().file_system_id(&fs).max_results(0)
        ),
        case!(
            "list aps with maxResults 1001",
            "maxResults",
            c.list_access_points().file_system_id(&fs).max_results(1001)
        ),
        case!(
            "list aps with a forged token",
            "nextToken",
            c.list_access_points()
                .file_system_id(&fs)
                .next_token("garbage")
        ),
        case!(
            "list fs with maxResults 101",
            "maxResults",
            c.list_file_systems().max_results(101)
        ),
        case!(
            "list fs by a bucket that is not an ARN",
            "bucket",
            c.list_file_systems().bucket("nope")
        ),
        case!(
            "create mt in a malformed subnet",
            "subnetId",
            c.create_mount_target()
                .file_system_id(&fs)
                .subnet_id("subnet-xyz")
        ),
        case!(
            "create mt with ip 300.1.1.1",
            "ipv4Address",
            c.create_mount_target()
                .file_system_id(&fs)
                .subnet_id("subnet-0123456789abcdef0")
                .ipv4_address("300.1.1.1")
        ),
        case!(
            "create mt with a short security group",
            "securityGroups",
            c.create_mount_target()
                .file_system_id(&fs)
                .subnet_id("subnet-0123456789abcdef0")
                .security_groups("sg-1")
        ),
        case!(
            "create mt with an unknown address type",
            "ipAddressType",
            c.create_mount_target()
                .file_system_id(&fs)
                .subnet_id("subnet-0123456789abcdef0")
                .ip_address_type(IpAddressType::from("IPV5"))
        ),
        case!(
            "get mt with a short id",
            "mountTargetId",
            c.get_mount_target().mount_target_id("fsmt-1")
        ),
        case!(
            "list tags with MaxResults 51",
            "MaxResults",
            c.list_tags_for_resource().resource_id(&fs).max_results(51)
        ),
        case!(
            "list tags of a mount target",
            "resourceId",
            c.list_tags_for_resource()
                .resource_id("fsmt-0123456789abcdef0")
        ),
        case!(
            "untag 51 keys",
            "tagKeys",
            c.untag_resource()
                .resource_id(&fs)
                .set_tag_keys(Some((0..51).map(|i| format!("k{i}")).collect()))
        ),
        case!(
            "sync without a root rule",
            "importDataRules",
            c.put_synchronization_configuration()
                .file_system_id(&fs)
                .import_data_rules(rule("logs/", ImportTrigger::OnFileAccess, 1))
                .expiration_data_rules(expire(30))
        ),
        case!(
            "sync with an unknown trigger",
            "trigger",
            c.put_synchronization_configuration()
                .file_system_id(&fs)
                .import_data_rules(rule("", ImportTrigger::from("SOMETIMES"), 1))
                .expiration_data_rules(expire(30))
        ),
        case!(
            "sync expiring after 0 days",
            "daysAfterLastAccess",
            c.put_synchronization_configuration()
                .file_system_id(&fs)
                .import_data_rules(root_rule.clone())
                .expiration_data_rules(expire(0))
        ),
        case!(
            "sync with two expiration rules",
            "expirationDataRules",
            c.put_synchronization_configuration()
                .file_system_id(&fs)
                .import_data_rules(root_rule.clone())
                .expiration_data_rules(expire(1))
                .expiration_data_rules(expire(2))
        ),
        case!(
            "sync with a negative size",
            "sizeLessThan",
            c.put_synchronization_configuration()
                .file_system_id(&fs)
                .import_data_rules(rule("", ImportTrigger::OnFileAccess, -1))
                .expiration_data_rules(expire(30))
        ),
        case!(
            "policy that is not JSON",
            "policy",
            c.put_file_system_policy()
                .file_system_id(&fs)
                .policy("not json")
        ),
        case!(
            "delete fs with a malformed id",
            "fileSystemId",
            c.delete_file_system().file_system_id("fs-zz")
        ),
    ]
}

#[tokio::test]
async fn every_bad_input_is_a_validation_exception_naming_the_field() {
    let emu = RunningEmulator::start(test_config()).await;
    let client = emu.sdk();
    let fs = client
        .create_file_system()
        .bucket("arn:aws:s3:::valid-bucket")
        .role_arn(ROLE)
        .send()
        .await
        .expect("valid file system")
        .file_system_id()
        .unwrap_or_default()
        .to_owned();
    let table = cases(&client, &fs);
    assert!(table.len() >= 40, "the table must cover at least 40 rules");
    let mut failures = Vec::new();
    for (name, field, call) in table {
        match call.await {
            Ok(()) => failures.push(format!("{name}: accepted")),
            Err((code, message)) => {
                if code != "ValidationException" {
                    failures.push(format!("{name}: {code}: {message}"));
                } else if !message.contains(field) {
                    failures.push(format!("{name}: message does not name {field}: {message}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        emu.emulator.access_point_count(),
        0,
        "no bad request created anything"
    );
    emu.stop().await;
}
