#!/usr/bin/env python3
"""The chart's own tests, on rendered manifests (run by .ci/check-deploy).

- Coexistence: on a node that also runs the EFS CSI driver (the usual start of S3 Files users)
  no host port and no host path of ours collides with that driver's chart defaults, written
  down below as data.
- efs-utils' settings: the ConfigMap parses with Python's configparser (what efs-utils reads
  with) and carries the values' settings; the local profile renders none.
- Memory: the node's memory limit holds the efs-proxy budget plus the plugin's own share, and a
  full-size mount fits the budget; a budget over the limit is refused at render time.
- Expansion: csi-resizer and its RBAC are deployed; allowVolumeExpansion: false stays false.
- The rest of the production defaults: the CSIDriver is kept on uninstall, the controller runs
  on Linux nodes, OnDelete updates render no rollingUpdate.

Usage: tests/chart/check.py [HELM]
"""

import configparser
import subprocess
import sys

import yaml

CHART = "charts/s3files-csi-driver"
HELM = sys.argv[1] if len(sys.argv) > 1 else "helm"

# The Kubernetes EFS CSI driver's chart (aws-efs-csi-driver, chart 4.x / driver 3.x) as it
# installs by default: its node DaemonSet runs in the host network, so its container ports are
# host ports; these are its host paths. kubelet's own directories are shared by every CSI
# driver by design (each writes only below its own plugins/<driver> directory).
EFS_CSI_NODE_HOST_PORTS = {9809}
EFS_CSI_NODE_HOST_PATHS = {
    "/var/lib/kubelet/plugins/efs.csi.aws.com",
    "/var/run/efs",
    "/var/amazon/efs",
    "/etc/amazon/efs",
    # efs-utils' own default log directory, used by any efs-utils on the host.
    "/var/log/amazon/efs",
}
SHARED_BY_DESIGN = {"/var/lib/kubelet", "/var/lib/kubelet/plugins_registry", "/dev"}
# Other node plugins commonly next to it on EKS: the EBS CSI driver's health port.
NEIGHBOUR_HOST_PORTS = {9808}

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok: {name}")
    else:
        failed += 1
        print(f"FAILED: {name}: {detail}")


def render(*args):
    out = subprocess.run(
        [HELM, "template", "s3files", CHART, "--namespace", "kube-system", *args],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return None, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d], out.stderr


def find(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def pod_spec(doc):
    return doc["spec"]["template"]["spec"]


def norm(path):
    return "/" + "/".join(p for p in path.split("/") if p)


def overlaps(a, b):
    a, b = norm(a), norm(b)
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def mib(quantity):
    q = str(quantity)
    for suffix, factor in (("Gi", 1024), ("Mi", 1)):
        if q.endswith(suffix):
            return int(q[: -len(suffix)]) * factor
    raise ValueError(f"unexpected memory quantity {q}")


def container(spec, name):
    return next(c for c in spec["containers"] if c["name"] == name)


def flag(args, name):
    prefix = f"--{name}="
    return next((a[len(prefix):] for a in args if a.startswith(prefix)), None)


def coexistence(docs, label):
    ports, paths = set(), []
    for doc in docs:
        if doc["kind"] not in ("DaemonSet", "Deployment"):
            continue
        spec = pod_spec(doc)
        host_network = spec.get("hostNetwork", False)
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for p in c.get("ports", []):
                if "hostPort" in p:
                    ports.add(p["hostPort"])
                if host_network:
                    ports.add(p["containerPort"])
            if host_network:
                for a in c.get("args", []):
                    for key in ("--health-port=", "--metrics-address="):
                        if a.startswith(key):
                            ports.add(int(a.split(":")[-1].split("=")[-1]))
        for v in spec.get("volumes", []):
            if "hostPath" in v:
                paths.append(v["hostPath"]["path"])
    clash = ports & (EFS_CSI_NODE_HOST_PORTS | NEIGHBOUR_HOST_PORTS)
    check(f"{label}: no host port of the EFS or EBS CSI node plugins", not clash, f"{sorted(clash)}")
    bad = [
        (p, q)
        for p in paths
        if norm(p) not in SHARED_BY_DESIGN
        for q in EFS_CSI_NODE_HOST_PATHS
        if overlaps(p, q)
    ]
    check(f"{label}: no host path shared with the EFS CSI driver", not bad, f"{bad}")
    check(
        f"{label}: host paths found",
        any(norm(p).startswith("/var/lib/s3files-csi") for p in paths),
        f"{paths}",
    )


def efs_utils_config(docs, expect):
    cms = find(docs, "ConfigMap", "s3files-efs-utils")
    check("efs-utils ConfigMap rendered", len(cms) == 1)
    if not cms:
        return
    parser = configparser.ConfigParser()
    parser.read_string(cms[0]["data"]["s3files-utils.conf"])
    for (section, key), value in expect.items():
        got = parser.get(section, key, fallback=None)
        check(f"s3files-utils.conf [{section}] {key} = {value}", got == value, f"got {got!r}")
    efs = configparser.ConfigParser()
    efs.read_string(cms[0]["data"]["efs-utils.conf"])
    node = find(docs, "DaemonSet")[0]
    spec = pod_spec(node)
    mounts = {m["mountPath"] for m in container(spec, "driver")["volumeMounts"]}
    check("the node mounts the settings", "/etc/s3files-csi/efs-utils" in mounts)
    check(
        "the node restarts when the settings change",
        "checksum/efs-utils" in node["spec"]["template"]["metadata"].get("annotations", {}),
    )


def memory(docs):
    node = find(docs, "DaemonSet")[0]
    driver = container(pod_spec(node), "driver")
    limit = mib(driver["resources"]["limits"]["memory"])
    budget = int(flag(driver["args"], "proxy-memory-budget"))
    check("the budget leaves 384 MiB of the limit to the plugin", budget + 384 <= limit, f"{budget}/{limit}")
    conf = configparser.ConfigParser()
    conf.read_string(find(docs, "ConfigMap", "s3files-efs-utils")[0]["data"]["s3files-utils.conf"])
    cache = conf.getint("proxy", "readahead_cache_max_memory_size_mb", fallback=1024)
    in_flight = conf.getint("proxy", "read_bypass_max_in_flight_s3_bytes", fallback=256 << 20) >> 20
    per_mount = 16 + cache + in_flight
    check(
        f"{budget // per_mount} full-size mounts ({per_mount} MiB each) fit the budget",
        budget // per_mount >= 8,
        f"per mount {per_mount} MiB, budget {budget} MiB",
    )


def snapshots(docs):
    """The local profile's snapshots: the sidecar, its RBAC, the class, and the data store."""
    spec = pod_spec(find(docs, "Deployment")[0])
    names = [c["name"] for c in spec["containers"]]
    check("csi-snapshotter runs next to the controller", "csi-snapshotter" in names, f"{names}")
    if "csi-snapshotter" not in names:
        return
    args = container(spec, "csi-snapshotter")["args"]
    check("csi-snapshotter elects a leader", "--leader-election" in args, f"{args}")
    check(
        "the controller has a data store for snapshots",
        flag(container(spec, "driver")["args"], "data-store") is not None,
    )
    roles = {r["metadata"]["name"]: r for r in find(docs, "ClusterRole")}
    rules = roles.get("s3files-snapshotter", {}).get("rules", [])
    check(
        "csi-snapshotter may update snapshot contents' status",
        any("volumesnapshotcontents/status" in r["resources"] and "update" in r["verbs"] for r in rules),
        f"{rules}",
    )
    bound = {b["roleRef"]["name"] for b in find(docs, "ClusterRoleBinding")}
    check("csi-snapshotter's role is bound", "s3files-snapshotter" in bound, f"{bound}")
    provisioner = roles.get("s3files-provisioner", {}).get("rules", [])
    check(
        "csi-provisioner may read the VolumeSnapshots claims restore from",
        any("volumesnapshots" in r["resources"] and "get" in r["verbs"] for r in provisioner),
    )
    classes = find(docs, "VolumeSnapshotClass")
    check(
        "the VolumeSnapshotClass names this driver",
        len(classes) == 1 and classes[0]["driver"] == "s3files.csi.dev" and classes[0]["deletionPolicy"] == "Delete",
        f"{classes}",
    )


def main():
    docs, err = render()
    if docs is None:
        print(err)
        sys.exit(1)
    coexistence(docs, "defaults")
    node = pod_spec(find(docs, "DaemonSet")[0])
    args = container(node, "driver")["args"]
    check("the watchdog is supervised by default", flag(args, "efs-watchdog") == "auto", f"{args}")
    efs_utils_config(
        docs,
        {
            ("proxy", "readahead_cache_max_memory_size_mb"): "64",
            ("proxy", "read_bypass_max_in_flight_s3_bytes"): "33554432",
            ("cloudwatch-log", "enabled"): "true",
        },
    )
    memory(docs)

    controller = find(docs, "Deployment")[0]
    spec = pod_spec(controller)
    names = [c["name"] for c in spec["containers"]]
    check("csi-resizer runs next to the controller", "csi-resizer" in names, f"{names}")
    roles = {r["metadata"]["name"]: r for r in find(docs, "ClusterRole")}
    resizer_rules = roles.get("s3files-resizer", {}).get("rules", [])
    check(
        "csi-resizer may patch claim status",
        any("persistentvolumeclaims/status" in r["resources"] and "patch" in r["verbs"] for r in resizer_rules),
    )
    check("the controller runs on Linux nodes", spec.get("nodeSelector", {}).get("kubernetes.io/os") == "linux")
    env = {e["name"] for e in container(spec, "driver")["env"]}
    check("the controller knows its Pod for Events", {"POD_NAME", "POD_NAMESPACE"} <= env)
    lease_ns = flag(container(spec, "driver")["args"], "leader-lease")
    elected_ns = flag(container(spec, "csi-provisioner")["args"], "leader-election-namespace")
    check(
        "the driver reads the Lease csi-provisioner elects its leader with",
        lease_ns is not None and lease_ns == elected_ns,
        f"{lease_ns} vs {elected_ns}",
    )
    sa = spec["serviceAccountName"]
    bound = [
        b["roleRef"]["name"]
        for b in find(docs, "RoleBinding")
        if b["metadata"].get("namespace") == lease_ns
        and any(s["name"] == sa for s in b.get("subjects", []))
    ]
    lease_rules = [
        r
        for role in find(docs, "Role")
        if role["metadata"]["name"] in bound
        for r in role.get("rules", [])
        if "coordination.k8s.io" in r.get("apiGroups", [])
    ]
    check(
        "the controller's service account may read Leases there",
        any("leases" in r["resources"] and "get" in r["verbs"] for r in lease_rules),
        f"{bound}",
    )
    driver = find(docs, "CSIDriver")[0]
    check(
        "the CSIDriver is kept on uninstall",
        driver["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep",
    )

    sc = [
        "--set", "storageClasses[0].name=expand-off",
        "--set", "storageClasses[0].parameters.provisioningMode=s3files-ap",
        "--set", "storageClasses[0].parameters.fileSystemId=fs-0123456789abcdef0",
        "--set", "storageClasses[0].allowVolumeExpansion=false",
        "--set", "storageClasses[1].name=expand-default",
        "--set", "storageClasses[1].parameters.provisioningMode=s3files-ap",
        "--set", "storageClasses[1].parameters.fileSystemId=fs-0123456789abcdef0",
    ]
    docs, _ = render(*sc)
    classes = {d["metadata"]["name"]: d for d in find(docs, "StorageClass")}
    check("allowVolumeExpansion: false renders false", classes["expand-off"]["allowVolumeExpansion"] is False)
    check("allowVolumeExpansion defaults to true", classes["expand-default"]["allowVolumeExpansion"] is True)
    docs, _ = render(*sc, "--set", "sidecars.resizer.enabled=false")
    classes = {d["metadata"]["name"]: d for d in find(docs, "StorageClass")}
    names = [c["name"] for c in pod_spec(find(docs, "Deployment")[0])["containers"]]
    check("without csi-resizer no class allows expansion", classes["expand-default"]["allowVolumeExpansion"] is False)
    check("without csi-resizer none runs", "csi-resizer" not in names)

    docs, _ = render("-f", f"{CHART}/ci/full-values.yaml")
    efs_utils_config(
        docs,
        {
            ("proxy", "readahead_cache_max_memory_size_mb"): "256",
            ("cloudwatch-log", "enabled"): "false",
        },
    )
    memory(docs)
    node = find(docs, "DaemonSet")[0]
    check(
        "OnDelete renders no rollingUpdate",
        node["spec"]["updateStrategy"] == {"type": "OnDelete"},
        f"{node['spec']['updateStrategy']}",
    )
    coexistence(docs, "full values")

    docs, _ = render("-f", f"{CHART}/values-local.yaml")
    check("the local profile renders no efs-utils settings", not find(docs, "ConfigMap", "s3files-efs-utils"))
    args = container(pod_spec(find(docs, "DaemonSet")[0]), "driver")["args"]
    check("the local profile runs no watchdog", flag(args, "efs-watchdog") == "off", f"{args}")
    check("the local profile has no proxy budget", flag(args, "proxy-memory-budget") is None, f"{args}")

    snapshots(docs)
    docs, err = render()
    names = [c["name"] for c in pod_spec(find(docs, "Deployment")[0])["containers"]]
    check("by default no csi-snapshotter runs", "csi-snapshotter" not in names, f"{names}")
    check("by default no VolumeSnapshotClass", not find(docs, "VolumeSnapshotClass"))
    docs, err = render("--set", "sidecars.snapshotter.enabled=true", "--set", "controller.dataStore=")
    check(
        "csi-snapshotter without a data store is refused at render time",
        docs is None and "dataStore" in err,
        err,
    )

    docs, err = render("--set", "node.efsUtils.memoryBudgetMiB=1900")
    check(
        "a budget too close to the memory limit is refused at render time",
        docs is None and "memoryBudgetMiB" in err,
        err,
    )

    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
