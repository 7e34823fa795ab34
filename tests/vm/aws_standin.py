"""What AWS answers an instance's discovery, for the test machine, which has no AWS: IMDSv2
(token, placement, instance id) and the two EFS API reads volagent makes
(DescribeFileSystems, DescribeMountTargets; the REST-JSON protocol boto3 speaks), for one
filesystem with one mount target in the instance's zone. The filesystem's DNS name and the
mount target's address are the machine's own NFS server; everything after discovery (the
mount program, the kernel's NFS client) is real.

Runs inside the machine with its system Python, standard library only:
    python3 aws_standin.py PORT
"""

from __future__ import annotations

import json
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

REGION = "us-east-1"
ZONE = "us-east-1a"
ZONE_ID = "use1-az6"
INSTANCE_ID = "i-0123456789abcdef0"
FILE_SYSTEM_ID = "fs-0123456789abcdef0"
MOUNT_TARGET_ID = "fsmt-0123456789abcdef0"
MOUNT_TARGET_IP = "127.0.0.1"
DNS_NAME = f"{FILE_SYSTEM_ID}.efs.{REGION}.amazonaws.com"

META = {
    "placement/availability-zone": ZONE,
    "placement/availability-zone-id": ZONE_ID,
    "placement/region": REGION,
    "instance-id": INSTANCE_ID,
}
FILE_SYSTEM = {
    "FileSystemId": FILE_SYSTEM_ID,
    "FileSystemArn": f"arn:aws:elasticfilesystem:{REGION}:123456789012:"
    f"file-system/{FILE_SYSTEM_ID}",
    "CreationToken": "vmrack",
    "LifeCycleState": "available",
    "NumberOfMountTargets": 1,
    "PerformanceMode": "generalPurpose",
    "ThroughputMode": "elastic",
    "Tags": [{"Key": "convox:rack", "Value": "vmrack"}],
}
MOUNT_TARGET = {
    "MountTargetId": MOUNT_TARGET_ID,
    "FileSystemId": FILE_SYSTEM_ID,
    "SubnetId": "subnet-0123456789abcdef0",
    "LifeCycleState": "available",
    "IpAddress": MOUNT_TARGET_IP,
    "AvailabilityZoneId": ZONE_ID,
    "AvailabilityZoneName": ZONE,
}


class Handler(BaseHTTPRequestHandler):
    tokens: ClassVar[set[str]] = set()

    def log_message(self, fmt: str, *args: Any) -> None:
        sys.stderr.write(f"{self.command} {self.path}\n")

    def _answer(self, status: int, body: str, kind: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, doc: dict[str, Any]) -> None:
        self._answer(status, json.dumps(doc), "application/json")

    def do_PUT(self) -> None:
        if self.path != "/latest/api/token":
            return self._answer(404, "")
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return self._answer(200, token)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path.startswith("/latest/meta-data/"):
            if self.headers.get("X-aws-ec2-metadata-token") not in self.tokens:
                return self._answer(401, "")
            value = META.get(url.path.removeprefix("/latest/meta-data/"))
            return self._answer(200, value) if value else self._answer(404, "")
        wanted = query.get("FileSystemId", FILE_SYSTEM_ID)
        if url.path == "/2015-02-01/file-systems":
            if wanted != FILE_SYSTEM_ID:
                return self._json(404, {"ErrorCode": "FileSystemNotFound", "Message": wanted})
            return self._json(200, {"FileSystems": [FILE_SYSTEM]})
        if url.path == "/2015-02-01/mount-targets":
            found = [MOUNT_TARGET] if wanted == FILE_SYSTEM_ID else []
            return self._json(200, {"MountTargets": found})
        return self._answer(404, "")


def main() -> None:
    port = int(sys.argv[1])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
