#!/usr/bin/env bash
# Runs the e2e suite on a kind cluster: creates the cluster, builds and loads the local image,
# installs the chart with the local profile, runs `cargo test --features e2e --test e2e`,
# collects logs when something fails, and deletes the cluster.
#
#   tests/e2e/run.sh [--kube-version v1.35.0] [--keep]
#
# Needs docker, kind, kubectl and helm on PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."

kube_version=""
keep=false
while [ $# -gt 0 ]; do
  case "$1" in
    --kube-version) kube_version=$2; shift 2 ;;
    --keep) keep=true; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

cluster=${KIND_CLUSTER:-s3files-e2e}
namespace=kube-system
release=s3files
image=s3files-csi-driver-local:e2e
logs=${E2E_LOGS:-target/e2e-logs}

cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "e2e failed ($status); collecting logs into $logs" >&2
    mkdir -p "$logs"
    kubectl get all,pvc,pv,storageclass,csinode -A -o wide >"$logs/objects.txt" 2>&1 || true
    kubectl get events -A --sort-by=.lastTimestamp >"$logs/events.txt" 2>&1 || true
    for pod in $(kubectl -n "$namespace" get pods -l app.kubernetes.io/instance="$release" -o name 2>/dev/null); do
      name=${pod#pod/}
      kubectl -n "$namespace" logs "$pod" --all-containers --prefix >"$logs/$name.log" 2>&1 || true
    done
    kind export logs "$logs/kind" --name "$cluster" >/dev/null 2>&1 || true
  fi
  if [ "$keep" = false ]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap cleanup EXIT

node_image=()
if [ -n "$kube_version" ]; then
  node_image=(--image "kindest/node:$kube_version")
fi
kind create cluster --name "$cluster" --config tests/e2e/kind.yaml "${node_image[@]}" --wait 120s

# VolumeSnapshots: the CRDs and snapshot-controller, as a cluster administrator installs them
# (the chart's local profile runs csi-snapshotter and makes the `s3files` VolumeSnapshotClass).
snapshotter=v8.5.0
snapshot_base=https://raw.githubusercontent.com/kubernetes-csi/external-snapshotter/$snapshotter
for kind in volumesnapshotclasses volumesnapshotcontents volumesnapshots; do
  kubectl apply -f "$snapshot_base/client/config/crd/snapshot.storage.k8s.io_$kind.yaml"
done
kubectl apply -f "$snapshot_base/deploy/kubernetes/snapshot-controller/rbac-snapshot-controller.yaml"
kubectl apply -f "$snapshot_base/deploy/kubernetes/snapshot-controller/setup-snapshot-controller.yaml"
kubectl -n kube-system rollout status deployment/snapshot-controller --timeout=180s

docker build --target local -t "$image" .
kind load docker-image "$image" --name "$cluster"

helm install "$release" charts/s3files-csi-driver --namespace "$namespace" \
  -f charts/s3files-csi-driver/values-local.yaml \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
  --wait --timeout 5m

helm test "$release" --namespace "$namespace" --timeout 5m

E2E_NAMESPACE=$namespace E2E_RELEASE=$release \
  cargo test --locked --features e2e --test e2e -- --test-threads=1
