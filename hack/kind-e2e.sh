#!/usr/bin/env bash
# End to end on a kind cluster (needs Docker): a cluster whose containerd reads
# /etc/containerd/certs.d, the VolumeSnapshot CRDs and snapshot controller, the CSI hostpath
# driver, the imagecache image built and loaded, the chart installed with the node mirror; then
# an ImageCache of a small public image, waited on until Ready, and a pod that uses it, with its
# decision and events printed.
#
#   hack/kind-e2e.sh                 # creates kind cluster "imagecache-e2e", deletes it at the end
#   KEEP_CLUSTER=1 hack/kind-e2e.sh  # keep it to look around (kubectl --context kind-imagecache-e2e)
#
# Settings (environment): CLUSTER, KEEP_CLUSTER, KIND_NODE_IMAGE, IMAGE, TEST_IMAGE, TIMEOUT.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-imagecache-e2e}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}          # empty: kind's default node image
IMAGE=${IMAGE:-imagecache:e2e}                # built from ./Dockerfile and loaded into kind
TEST_IMAGE=${TEST_IMAGE:-docker.io/library/busybox:1.36}
TIMEOUT=${TIMEOUT:-600s}
NAMESPACE=imagecache-system
APP_NAMESPACE=imagecache-e2e-app
CACHE=e2e-busybox

# Pinned upstream releases, applied from their release manifests.
SNAPSHOTTER_VERSION=v8.2.0                    # kubernetes-csi/external-snapshotter
HOSTPATH_VERSION=v1.15.0                      # kubernetes-csi/csi-driver-host-path
SNAPSHOTTER_RAW=https://raw.githubusercontent.com/kubernetes-csi/external-snapshotter/${SNAPSHOTTER_VERSION}
HOSTPATH_GIT=https://github.com/kubernetes-csi/csi-driver-host-path.git

log() { printf '\n== %s\n' "$*"; }
die() { printf 'kind-e2e: %s\n' "$*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is not installed: $2"
}
need docker "https://docs.docker.com/engine/install/"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need git "apt-get install git"
if [ -x .tools/bin/kubectl ] && [ -x .tools/bin/helm ]; then PATH="$PWD/.tools/bin:$PATH"; fi
need kubectl "run hack/tools.sh (puts kubectl and helm into .tools/bin)"
need helm "run hack/tools.sh (puts kubectl and helm into .tools/bin)"
docker info >/dev/null 2>&1 || die "docker is installed but not usable by $(id -un): is the daemon running, are you in the docker group?"

work=$(mktemp -d)
created_cluster=0
cleanup() {
  local code=$?
  if [ "$code" -ne 0 ] && [ "$created_cluster" = 1 ]; then
    printf '\n== failed (exit %s); state of the cluster:\n' "$code" >&2
    kubectl get pods -A -o wide >&2 || true
    kubectl get imagecaches -o wide >&2 || true
    kubectl describe imagecache "$CACHE" >&2 || true
    kubectl -n "$NAMESPACE" logs deploy/imagecache-controller --tail=50 >&2 || true
  fi
  rm -rf "$work"
  if [ "$created_cluster" = 1 ] && [ "$KEEP_CLUSTER" != 1 ]; then
    log "deleting kind cluster $CLUSTER (KEEP_CLUSTER=1 keeps it)"
    kind delete cluster --name "$CLUSTER" || true
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if grep -qx -- "$CLUSTER" <<<"$(kind get clusters 2>/dev/null)"; then  # no pipe: pipefail + grep -q
  die "a kind cluster named $CLUSTER exists already: delete it (kind delete cluster --name $CLUSTER) or set CLUSTER"
fi

log "creating kind cluster $CLUSTER"
# containerd must read per-registry hosts.toml files for the node mirror (containerd 1.x and
# 2.x spell the plugin differently; kind's node image may already set it).
cat >"$work/kind.yaml" <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
  - |-
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
nodes:
  - role: control-plane
YAML
node_image=()
if [ -n "$KIND_NODE_IMAGE" ]; then node_image=(--image "$KIND_NODE_IMAGE"); fi
created_cluster=1
kind create cluster --name "$CLUSTER" --config "$work/kind.yaml" "${node_image[@]}" --wait 120s
kubectl config use-context "kind-$CLUSTER" >/dev/null

log "VolumeSnapshot CRDs and snapshot controller (external-snapshotter $SNAPSHOTTER_VERSION)"
for crd in volumesnapshotclasses volumesnapshotcontents volumesnapshots; do
  kubectl apply -f "$SNAPSHOTTER_RAW/client/config/crd/snapshot.storage.k8s.io_${crd}.yaml"
done
kubectl apply -f "$SNAPSHOTTER_RAW/deploy/kubernetes/snapshot-controller/rbac-snapshot-controller.yaml"
kubectl apply -f "$SNAPSHOTTER_RAW/deploy/kubernetes/snapshot-controller/setup-snapshot-controller.yaml"
kubectl -n kube-system rollout status deploy/snapshot-controller --timeout="$TIMEOUT"

log "CSI hostpath driver $HOSTPATH_VERSION"
git clone --quiet --depth 1 --branch "$HOSTPATH_VERSION" "$HOSTPATH_GIT" "$work/csi-driver-host-path"
(cd "$work/csi-driver-host-path" && ./deploy/kubernetes-latest/deploy.sh)
kubectl apply -f "$work/csi-driver-host-path/examples/csi-storageclass.yaml"
kubectl get volumesnapshotclass csi-hostpath-snapclass >/dev/null \
  || die "the hostpath driver's VolumeSnapshotClass csi-hostpath-snapclass is missing"

log "building $IMAGE and loading it into the cluster"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "installing the chart (node mirror enabled)"
helm install imagecache charts/imagecache \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set builder.storageClassName=csi-hostpath-sc \
  --set builder.volumeSnapshotClassName=csi-hostpath-snapclass \
  --set builder.cpu=200m --set builder.memory=512Mi \
  --set mirror.enabled=true \
  --set test.namespace="$APP_NAMESPACE" \
  --wait --timeout "$TIMEOUT"
kubectl -n "$NAMESPACE" get pods -o wide

log "creating ImageCache $CACHE of $TEST_IMAGE and waiting until it is Ready"
kubectl apply -f - <<YAML
apiVersion: imagecache.dev/v1alpha1
kind: ImageCache
metadata:
  name: $CACHE
spec:
  images: ["$TEST_IMAGE"]
  imageCacheSize: 1
YAML
kubectl wait --for=jsonpath='{.status.phase}'=Ready "imagecache/$CACHE" --timeout="$TIMEOUT"
kubectl get imagecache "$CACHE" -o wide

log "helm test (a dry-run pod gets a decision)"
kubectl create namespace "$APP_NAMESPACE"
helm test imagecache --namespace "$NAMESPACE" --logs

log "a pod that uses the cache"
kubectl -n "$APP_NAMESPACE" apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: uses-cache
  annotations:
    imagecache.dev/use-image-cache: auto
spec:
  containers:
    - name: app
      image: $TEST_IMAGE
      command: [sleep, "3600"]
YAML
kubectl -n "$APP_NAMESPACE" wait --for=condition=Ready pod/uses-cache --timeout="$TIMEOUT"

decision=$(kubectl -n "$APP_NAMESPACE" get pod uses-cache -o jsonpath='{.metadata.annotations.imagecache\.dev/decision}')
cache=$(kubectl -n "$APP_NAMESPACE" get pod uses-cache -o jsonpath='{.metadata.annotations.imagecache\.dev/cache}')
log "decision: ${decision:-none}, cache: ${cache:-none}"
kubectl -n "$APP_NAMESPACE" get events --field-selector involvedObject.name=uses-cache \
  --sort-by=.lastTimestamp
kubectl -n "$APP_NAMESPACE" exec uses-cache -- ls /var/lib/imagecache
log "node mirror log (hits are the images served from the cache disk)"
kubectl -n "$NAMESPACE" logs ds/imagecache-mirror --tail=20 || true

[ "$decision" = hit ] || die "expected decision hit, got '${decision:-none}'"
[ "$cache" = "$CACHE" ] || die "expected cache $CACHE, got '${cache:-none}'"
log "ok: the pod started from ImageCache $CACHE"
