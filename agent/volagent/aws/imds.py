"""Instance metadata (IMDSv2): this instance's region, availability zone (name and ID) and id.

A session token is PUT first with a TTL, then every read carries it. Each request has a short
timeout and a few quick retries, because IMDS is often not ready yet early in boot; the
caller's backoff does the long waiting. Blocking: call it from a thread.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import tenacity

from volagent.errors import DiscoveryError

TOKEN_TTL_S = 21600
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name, not a secret
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
FIX = (
    "make sure instance metadata is enabled with IMDSv2 tokens (http-endpoint=enabled, "
    "http-put-response-hop-limit >= 1), or set [aws] imds_endpoint"
)


@dataclass(frozen=True)
class Identity:
    """Where this instance runs, as instance metadata tells it."""

    region: str
    availability_zone: str
    availability_zone_id: str  # "" where IMDS does not offer it; map the name through EC2
    instance_id: str


class Imds:
    """A small IMDSv2 client for one endpoint."""

    def __init__(
        self, endpoint: str, timeout: float = 1.0, attempts: int = 3, pause: float = 0.2
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise DiscoveryError(f"instance metadata endpoint {endpoint!r} is not http(s)", FIX)
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.attempts = attempts
        self.pause = pause
        self._token = ""
        self._token_expires = 0.0

    def _request(self, req: urllib.request.Request) -> str:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_incrementing(start=self.pause, increment=self.pause),
            # a 404 is an answer (no such key), not a metadata service that is not ready
            retry=tenacity.retry_if_exception(
                lambda exc: (
                    isinstance(exc, OSError | TimeoutError)
                    and not (isinstance(exc, urllib.error.HTTPError) and exc.code == 404)
                )
            ),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt, _open(req, self.timeout) as resp:
                    body: bytes = resp.read(65536)
                    return body.decode("utf-8", "replace").strip()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise
            last: Exception = exc
        except (OSError, TimeoutError) as exc:
            last = exc
        raise DiscoveryError(
            f"instance metadata at {self.endpoint} is unreachable ({_reason(last)})", FIX
        )

    def token(self) -> str:
        if self._token and time.monotonic() < self._token_expires:
            return self._token
        req = urllib.request.Request(  # noqa: S310 - the endpoint is checked to be http(s)
            f"{self.endpoint}/latest/api/token",
            method="PUT",
            headers={TTL_HEADER: str(TOKEN_TTL_S)},
        )
        self._token = self._request(req)
        # renew well before the service's expiry
        self._token_expires = time.monotonic() + TOKEN_TTL_S / 2
        return self._token

    def get(self, path: str) -> str:
        """Reads `latest/meta-data/<path>`; raises DiscoveryError, or HTTPError 404."""
        req = urllib.request.Request(  # noqa: S310 - the endpoint is checked to be http(s)
            f"{self.endpoint}/latest/meta-data/{path}", headers={TOKEN_HEADER: self.token()}
        )
        try:
            return self._request(req)
        except DiscoveryError:
            self._token = ""  # maybe the token expired under us: fetch a new one next time
            raise

    def optional(self, path: str) -> str:
        try:
            return self.get(path)
        except urllib.error.HTTPError:
            return ""

    def required(self, path: str) -> str:
        try:
            return self.get(path)
        except urllib.error.HTTPError:
            raise DiscoveryError(
                f"instance metadata at {self.endpoint} has no {path}", FIX
            ) from None

    def identity(self) -> Identity:
        az = self.required("placement/availability-zone")
        instance_id = self.required("instance-id")
        region = self.optional("placement/region") or az[:-1]
        return Identity(
            region=region,
            availability_zone=az,
            availability_zone_id=self.optional("placement/availability-zone-id"),
            instance_id=instance_id,
        )


def _reason(exc: Exception | None) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _open(req: urllib.request.Request, timeout: float) -> Any:
    """urlopen, whose HTTPError (itself an open answer) gives its connection back at once:
    the retries and the callers keep only its code."""
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        exc.close()
        raise
