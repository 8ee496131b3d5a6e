"""What the snapshotter asks containerd (on containerd's socket): the pod a container belongs
to (its CRI label `io.kubernetes.pod.uid`), and, through CRI, to remove an image whose
disk-backed layers are gone. The CRI messages are imported here only, in the snapshotter's
process: they share the `runtime.v1` names with other CRI stubs a test process may load."""

from __future__ import annotations

import logging
from typing import Any

import grpc

log = logging.getLogger("imagecache.snapshotter")

POD_UID_LABEL = "io.kubernetes.pod.uid"
NAMESPACE_HEADER = "containerd-namespace"


class ContainerdClient:
    def __init__(self, socket: str, timeout: float = 10.0) -> None:
        from webhook.snapshotter.api import containerd_clients_pb2 as containers_pb
        from webhook.snapshotter.api import containerd_clients_pb2_grpc as containers_grpc
        from webhook.snapshotter.api import cri_images_pb2 as cri_pb
        from webhook.snapshotter.api import cri_images_pb2_grpc as cri_grpc

        self._containers_pb: Any = containers_pb
        self._cri_pb: Any = cri_pb
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self._containers = containers_grpc.ContainersStub(self.channel)  # type: ignore[no-untyped-call]
        self._images = cri_grpc.ImageServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def pod_uid(self, namespace: str, container_id: str) -> str | None:
        """The pod of a container, "" for a container outside Kubernetes, None when
        containerd does not know it (yet) or cannot be asked."""
        try:
            reply = self._containers.Get(
                self._containers_pb.GetContainerRequest(id=container_id),
                metadata=((NAMESPACE_HEADER, namespace),), timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                log.warning("cannot ask containerd for container %s: %s", container_id,
                            exc.details(), extra={"fields": {"container": container_id}})
            return None
        return str(reply.container.labels.get(POD_UID_LABEL, ""))

    def images(self) -> list[tuple[str, list[str]]]:
        """Every image CRI knows: its id and names (tags and digests)."""
        reply = self._images.ListImages(self._cri_pb.ListImagesRequest(), timeout=self.timeout)
        return [(i.id, [*i.repo_tags, *i.repo_digests]) for i in reply.images]

    def status_info(self, image_id: str) -> str:
        """containerd's verbose CRI ImageStatus info (JSON with the image config)."""
        reply = self._images.ImageStatus(self._cri_pb.ImageStatusRequest(
            image=self._cri_pb.ImageSpec(image=image_id), verbose=True), timeout=self.timeout)
        return str(reply.info.get("info", ""))

    def remove(self, image_id: str) -> None:
        """CRI RemoveImage (every name of the image); errors raise."""
        self._images.RemoveImage(self._cri_pb.RemoveImageRequest(
            image=self._cri_pb.ImageSpec(image=image_id)), timeout=self.timeout * 6)

    def remove_image(self, ref: str) -> bool:
        try:
            self._images.RemoveImage(self._cri_pb.RemoveImageRequest(
                image=self._cri_pb.ImageSpec(image=ref)), timeout=self.timeout * 6)
        except grpc.RpcError as exc:
            log.warning("cannot remove image %s: %s", ref, exc.details(),
                        extra={"fields": {"image": ref}})
            return False
        return True
