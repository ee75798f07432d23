//! The CSI v1 protocol types and gRPC stubs, generated from `proto/csi.proto`.
//!
//! Every message that carries a `secrets` map has a hand-written `Debug` here (the build script
//! turns off the derived one) that prints every other field and only the number of secret keys,
//! so requests can be logged whole without ever leaking a credential.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("csi.v1");

/// Stands in for a secrets map in `Debug` output.
struct Redacted(usize);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} redacted>", self.0)
    }
}

/// Implements `Debug` for messages with a `secrets` field. The exhaustive destructuring makes a
/// field added to the proto a compile error here until someone decides how to print it.
macro_rules! redacted_debug {
    ($($ty:ident { $($field:ident),* $(,)? }),* $(,)?) => {
        $(
            impl std::fmt::Debug for $ty {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    let $ty { $($field,)* secrets } = self;
                    f.debug_struct(stringify!($ty))
                        $(.field(stringify!($field), $field))*
                        .field("secrets", &Redacted(secrets.len()))
                        .finish()
                }
            }
        )*
        /// The messages whose `Debug` output redacts secrets.
        pub const REDACTED_MESSAGES: &[&str] = &[$(stringify!($ty)),*];
    };
}

redacted_debug! {
    CreateVolumeRequest { name, capacity_range, volume_capabilities, parameters,
        volume_content_source, accessibility_requirements, mutable_parameters },
    DeleteVolumeRequest { volume_id },
    ControllerPublishVolumeRequest { volume_id, node_id, volume_capability, readonly,
        volume_context },
    ControllerUnpublishVolumeRequest { volume_id, node_id },
    ValidateVolumeCapabilitiesRequest { volume_id, volume_context, volume_capabilities,
        parameters, mutable_parameters },
    ControllerModifyVolumeRequest { volume_id, mutable_parameters },
    CreateSnapshotRequest { source_volume_id, name, parameters },
    DeleteSnapshotRequest { snapshot_id },
    ListSnapshotsRequest { max_entries, starting_token, source_volume_id, snapshot_id },
    GetSnapshotRequest { snapshot_id },
    ControllerExpandVolumeRequest { volume_id, capacity_range, volume_capability },
    NodeStageVolumeRequest { volume_id, publish_context, staging_target_path,
        volume_capability, volume_context },
    NodePublishVolumeRequest { volume_id, publish_context, staging_target_path, target_path,
        volume_capability, readonly, volume_context },
    NodeExpandVolumeRequest { volume_id, volume_path, capacity_range, staging_target_path,
        volume_capability },
    CreateVolumeGroupSnapshotRequest { name, source_volume_ids, parameters },
    DeleteVolumeGroupSnapshotRequest { group_snapshot_id, snapshot_ids },
    GetVolumeGroupSnapshotRequest { group_snapshot_id, snapshot_ids },
    GetMetadataAllocatedRequest { snapshot_id, starting_offset, max_results },
    GetMetadataDeltaRequest { base_snapshot_id, target_snapshot_id, starting_offset,
        max_results },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn secrets() -> HashMap<String, String> {
        HashMap::from([(
            "awsSecretAccessKey".to_owned(),
            "hunter2-do-not-log".to_owned(),
        )])
    }

    #[test]
    fn every_message_with_secrets_has_a_redacting_debug() {
        let generated = include_str!(concat!(env!("OUT_DIR"), "/secret_messages.txt"));
        let mut from_proto: Vec<&str> = generated
            .lines()
            .map(|l| l.trim_start_matches(".csi.v1."))
            .collect();
        let mut redacted = REDACTED_MESSAGES.to_vec();
        from_proto.sort_unstable();
        redacted.sort_unstable();
        assert_eq!(from_proto, redacted);
        assert!(
            redacted.len() >= 19,
            "the proto lost its csi_secret markers"
        );
    }

    #[test]
    fn debug_output_never_contains_secret_values() {
        let create = CreateVolumeRequest {
            name: "pvc-1".into(),
            secrets: secrets(),
            ..Default::default()
        };
        let publish = NodePublishVolumeRequest {
            volume_id: "s3files:fs-0123456789abcdef0".into(),
            target_path: "/var/lib/kubelet/pods/x/volumes/y/mount".into(),
            secrets: secrets(),
            ..Default::default()
        };
        for text in [format!("{create:?}"), format!("{publish:?}")] {
            assert!(!text.contains("hunter2"), "leaked: {text}");
            assert!(
                !text.contains("awsSecretAccessKey"),
                "leaked key name: {text}"
            );
            assert!(text.contains("<1 redacted>"), "{text}");
        }
        assert!(format!("{create:?}").contains("pvc-1"));
        assert!(format!("{publish:?}").contains("/var/lib/kubelet/pods/x"));
    }
}
