//! The kind e2e suite: the scenarios users run, against a cluster where the chart is installed
//! with the local profile (tests/e2e/run.sh sets it up). Built only with `--features e2e`; CI
//! compiles it on every change, and the e2e workflow runs it on kind. tests/scenarios.rs runs the
//! same scenarios without a cluster (processes started with the local profile's flags), in every
//! `cargo test`.
//!
//! The emulator and the object store are reached through the API server's service proxy, so the
//! suite needs nothing but a kubeconfig.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Container, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PersistentVolumeSpec, Pod,
    PodSpec, TypedLocalObjectReference, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::{Api, Client, ResourceExt};

const FILE_SYSTEM: &str = "fs-0000000000000000a";
const BUCKET: &str = "s3files-local";

fn system_namespace() -> String {
    std::env::var("E2E_NAMESPACE").unwrap_or_else(|_| "kube-system".into())
}

fn release() -> String {
    std::env::var("E2E_RELEASE").unwrap_or_else(|_| "s3files".into())
}

/// A namespace per test, deleted at the end.
struct Scope {
    client: Client,
    ns: String,
}

impl Scope {
    async fn new(name: &str) -> Scope {
        let client = Client::try_default().await.expect("kubeconfig");
        let ns = format!("e2e-{name}-{}", fastrand::u32(..) % 100_000);
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let body = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))
            .expect("namespace");
        api.create(&PostParams::default(), &body)
            .await
            .expect("create namespace");
        Scope { client, ns }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn claim(&self, name: &str, class: &str, mode: &str) -> PersistentVolumeClaim {
        self.claim_from(name, class, mode, None).await
    }

    /// A claim whose content comes from `source`: (kind, name) of a VolumeSnapshot or a claim.
    async fn claim_from(
        &self,
        name: &str,
        class: &str,
        mode: &str,
        source: Option<(&str, &str)>,
    ) -> PersistentVolumeClaim {
        let data_source = source.map(|(kind, name)| TypedLocalObjectReference {
            api_group: (kind == "VolumeSnapshot").then(|| "snapshot.storage.k8s.io".to_owned()),
            kind: kind.into(),
            name: name.into(),
        });
        let pvc = PersistentVolumeClaim {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec![mode.into()]),
                storage_class_name: Some(class.into()),
                data_source,
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.claims()
            .create(&PostParams::default(), &pvc)
            .await
            .expect("create claim")
    }

    /// Runs `script` in a pod with the claim at /data (read-only if asked), on `node` if given;
    /// returns its output once it succeeded.
    async fn run(
        &self,
        name: &str,
        claim: &str,
        read_only: bool,
        node: Option<&str>,
        script: &str,
    ) -> String {
        self.run_pod(name, Some(claim), read_only, node, script)
            .await
    }

    /// Like `run`; without a claim the pod sees the host's processes (to read its mount table).
    async fn run_pod(
        &self,
        name: &str,
        claim: Option<&str>,
        read_only: bool,
        node: Option<&str>,
        script: &str,
    ) -> String {
        let mounts = claim.map(|_| {
            vec![VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                read_only: Some(read_only),
                ..Default::default()
            }]
        });
        let volumes = claim.map(|claim| {
            vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.into(),
                    read_only: Some(read_only),
                }),
                ..Default::default()
            }]
        });
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                node_name: node.map(str::to_owned),
                host_pid: Some(claim.is_none()),
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("busybox:1.37".into()),
                    command: Some(vec!["sh".into(), "-c".into(), script.into()]),
                    volume_mounts: mounts,
                    ..Default::default()
                }],
                volumes,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
        let phase = self.wait_pod_done(name).await;
        let logs = self
            .pods()
            .logs(name, &LogParams::default())
            .await
            .unwrap_or_default();
        assert_eq!(phase, "Succeeded", "pod {name} ended {phase}: {logs}");
        logs
    }

    async fn wait_pod_done(&self, name: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let pod = self.pods().get(name).await.expect("get pod");
            let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                return phase;
            }
            assert!(Instant::now() < deadline, "pod {name} still {phase}");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Takes a VolumeSnapshot of `claim` with the chart's class and waits until it is ready.
    async fn snapshot(&self, name: &str, claim: &str) {
        use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
        let gvk = GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot");
        let resource = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &resource);
        let body: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": name},
            "spec": {
                "volumeSnapshotClassName": "s3files",
                "source": {"persistentVolumeClaimName": claim}
            }
        }))
        .expect("snapshot");
        api.create(&PostParams::default(), &body)
            .await
            .expect("create snapshot");
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let got = api.get(name).await.expect("get snapshot");
            if got.data["status"]["readyToUse"] == serde_json::json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "snapshot {name} not ready: {}",
                got.data["status"]
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    async fn delete_pod(&self, name: &str) {
        let _ = self.pods().delete(name, &DeleteParams::default()).await;
        wait_gone(&self.pods(), name).await;
    }

    /// The bound claim's volume handle.
    async fn handle(&self, claim: &str) -> String {
        let pvc = self.claims().get(claim).await.expect("claim");
        let pv_name = pvc.spec.and_then(|s| s.volume_name).expect("bound claim");
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        pvs.get(&pv_name)
            .await
            .expect("pv")
            .spec
            .and_then(|s| s.csi)
            .map(|c| c.volume_handle)
            .expect("csi volume")
    }

    /// GET through the API server's proxy to a service of the release.
    async fn proxy(&self, service: &str, port: u16, path: &str) -> String {
        let uri = format!(
            "/api/v1/namespaces/{}/services/{}-{service}:{port}/proxy{path}",
            system_namespace(),
            release()
        );
        let request = http::Request::get(uri).body(Vec::new()).expect("request");
        self.client.request_text(request).await.expect("proxy")
    }

    async fn access_points(&self) -> String {
        self.proxy(
            "emulator",
            9559,
            &format!("/access-points?fileSystemId={FILE_SYSTEM}"),
        )
        .await
    }

    async fn objects(&self, prefix: &str) -> String {
        self.proxy(
            "object-store",
            5000,
            &format!("/{BUCKET}?list-type=2&prefix={prefix}"),
        )
        .await
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let client = self.client.clone();
        let ns = self.ns.clone();
        // Best effort: the cluster is deleted after the run anyway.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
                let _ = api.delete(&ns, &DeleteParams::default()).await;
            });
        })
        .join()
        .ok();
    }
}

async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(180);
    while api.get_opt(name).await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "{name} was not deleted");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn workers(client: &Client) -> Vec<String> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    nodes
        .list(&ListParams::default().labels("topology.k8s.aws/zone-id"))
        .await
        .expect("nodes")
        .items
        .into_iter()
        .map(|n| n.name_any())
        .collect()
}

#[tokio::test]
async fn a_dynamic_claim_written_on_one_node_is_read_on_another() {
    let s = Scope::new("rwx").await;
    let nodes = workers(&s.client).await;
    assert!(nodes.len() >= 2, "the kind config has two zoned workers");
    s.claim("shared", "s3files", "ReadWriteMany").await;
    s.run(
        "writer",
        "shared",
        false,
        Some(&nodes[0]),
        "echo hello-from-a > /data/f && sync",
    )
    .await;
    let out = s
        .run("reader", "shared", false, Some(&nodes[1]), "cat /data/f")
        .await;
    assert!(out.contains("hello-from-a"), "{out}");
}

#[tokio::test]
async fn deleting_a_pod_unmounts_its_volume_from_the_node() {
    let s = Scope::new("unmount").await;
    let nodes = workers(&s.client).await;
    s.claim("data", "s3files", "ReadWriteMany").await;
    s.run("user", "data", false, Some(&nodes[0]), "echo x > /data/x")
        .await;
    let uid = s.pods().get("user").await.expect("pod").uid().expect("uid");
    s.delete_pod("user").await;
    let out = s
        .run_pod(
            "inspect",
            None,
            false,
            Some(&nodes[0]),
            &format!(
                "if grep -q {uid} /proc/1/mountinfo; then echo STILL-MOUNTED; else echo clean; fi"
            ),
        )
        .await;
    assert!(out.contains("clean"), "{out}");
}

#[tokio::test]
async fn read_only_mounts_refuse_writes() {
    let s = Scope::new("ro").await;
    s.claim("data", "s3files", "ReadWriteMany").await;
    s.run("seed", "data", false, None, "echo x > /data/x").await;
    let out = s
        .run(
            "ro",
            "data",
            true,
            None,
            "cat /data/x && if touch /data/y 2>/dev/null; then echo WROTE; else echo refused; fi",
        )
        .await;
    assert!(out.contains("refused") && !out.contains("WROTE"), "{out}");
}

#[tokio::test]
async fn a_read_write_once_pod_claim_mounts() {
    let s = Scope::new("rwop").await;
    s.claim("solo", "s3files", "ReadWriteOncePod").await;
    let out = s
        .run(
            "only",
            "solo",
            false,
            None,
            "echo ok > /data/o && cat /data/o",
        )
        .await;
    assert!(out.contains("ok"), "{out}");
}

#[tokio::test]
async fn a_static_volume_by_handle_shows_the_same_files() {
    let s = Scope::new("static").await;
    s.claim("source", "s3files", "ReadWriteMany").await;
    s.run("seed", "source", false, None, "echo static > /data/s")
        .await;
    let handle = s.handle("source").await;
    let pv_name = format!("{}-static", s.ns);
    let pvs: Api<PersistentVolume> = Api::all(s.client.clone());
    let pv = PersistentVolume {
        metadata: kube::api::ObjectMeta {
            name: Some(pv_name.clone()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            capacity: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            storage_class_name: Some(String::new()),
            csi: Some(CSIPersistentVolumeSource {
                driver: "s3files.csi.dev".into(),
                volume_handle: handle,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    pvs.create(&PostParams::default(), &pv).await.expect("pv");
    let claim = PersistentVolumeClaim {
        metadata: kube::api::ObjectMeta {
            name: Some("static".into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            storage_class_name: Some(String::new()),
            volume_name: Some(pv_name.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    s.claims()
        .create(&PostParams::default(), &claim)
        .await
        .expect("claim");
    let out = s.run("read", "static", false, None, "cat /data/s").await;
    assert!(out.contains("static"), "{out}");
    let _ = pvs.delete(&pv_name, &DeleteParams::default()).await;
}

#[tokio::test]
async fn deleting_the_claim_deletes_its_access_point_and_with_on_delete_its_data() {
    let s = Scope::new("delete").await;
    s.claim("doomed", "s3files-delete-data", "ReadWriteMany")
        .await;
    s.run("write", "doomed", false, None, "echo bye > /data/bye")
        .await;
    let handle = s.handle("doomed").await;
    let ap = handle.rsplit(':').next().expect("access point").to_owned();
    assert!(s.access_points().await.contains(&ap));
    let pvc = s.claims().get("doomed").await.expect("claim");
    let pv = pvc.spec.and_then(|x| x.volume_name).expect("pv");
    s.delete_pod("write").await;
    s.claims()
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete claim");
    let pvs: Api<PersistentVolume> = Api::all(s.client.clone());
    wait_gone(&pvs, &pv).await;
    assert!(
        !s.access_points().await.contains(&ap),
        "access point {ap} remains"
    );
    assert!(
        !s.objects(&pv).await.contains("bye"),
        "the volume's files remain in the bucket"
    );
}

#[tokio::test]
async fn a_restarted_node_plugin_serves_new_mounts() {
    let s = Scope::new("restart").await;
    let ds: Api<DaemonSet> = Api::namespaced(s.client.clone(), &system_namespace());
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &system_namespace());
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component=node",
        release()
    );
    for pod in pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("node pods")
    {
        let _ = pods.delete(&pod.name_any(), &DeleteParams::default()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let d = ds
            .get(&format!("{}-node", release()))
            .await
            .expect("daemonset");
        let status = d.status.expect("status");
        if status.number_ready == status.desired_number_scheduled
            && status.updated_number_scheduled.unwrap_or(0) == status.desired_number_scheduled
        {
            break;
        }
        assert!(Instant::now() < deadline, "node plugins did not come back");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    s.claim("after", "s3files", "ReadWriteMany").await;
    let out = s
        .run(
            "mount",
            "after",
            false,
            None,
            "echo fine > /data/f && cat /data/f",
        )
        .await;
    assert!(out.contains("fine"), "{out}");
}

#[tokio::test]
async fn a_claim_restored_from_a_snapshot_holds_the_files_as_they_were() {
    let s = Scope::new("snap").await;
    s.claim("source", "s3files", "ReadWriteMany").await;
    // S3 times versions to the second: the pauses keep the snapshot's second apart.
    s.run(
        "before",
        "source",
        false,
        None,
        "mkdir -p /data/d && echo v1 > /data/d/f && echo gone > /data/g && sync && sleep 2",
    )
    .await;
    s.snapshot("snap", "source").await;
    s.run(
        "after",
        "source",
        false,
        None,
        "sleep 2 && echo v2 > /data/d/f && rm /data/g && echo new > /data/h && sync",
    )
    .await;
    s.claim_from(
        "restored",
        "s3files",
        "ReadWriteMany",
        Some(("VolumeSnapshot", "snap")),
    )
    .await;
    let out = s
        .run(
            "check",
            "restored",
            false,
            None,
            "cat /data/d/f /data/g; ls /data",
        )
        .await;
    assert!(out.contains("v1") && out.contains("gone"), "{out}");
    assert!(
        !out.lines().any(|l| l.trim() == "h"),
        "added after the snapshot: {out}"
    );
    assert!(!out.contains("v2"), "{out}");
}

#[tokio::test]
async fn a_cloned_claim_holds_the_source_claims_files() {
    let s = Scope::new("clone").await;
    s.claim("original", "s3files", "ReadWriteMany").await;
    s.run(
        "fill",
        "original",
        false,
        None,
        "echo cloned-bytes > /data/f && sync && sleep 2",
    )
    .await;
    s.claim_from(
        "copy",
        "s3files",
        "ReadWriteMany",
        Some(("PersistentVolumeClaim", "original")),
    )
    .await;
    let out = s.run("read", "copy", false, None, "cat /data/f").await;
    assert!(out.contains("cloned-bytes"), "{out}");
    s.run("write", "copy", false, None, "echo mine > /data/f")
        .await;
    let original = s.run("still", "original", false, None, "cat /data/f").await;
    assert!(
        original.contains("cloned-bytes"),
        "the source is untouched: {original}"
    );
}
