"""The status socket's answers, rendered once per change instead of once per request.

With a few hundred containers known the status document takes milliseconds to encode, and
the socket shares the event loop with the start guard: a client asking again and again must
not turn into milliseconds of every Docker call. So:
- the JSON document is the small part that changes all the time (verdict, mount, counters),
  encoded per request, with the list of containers spliced in as bytes encoded once per
  change of the containers (`AgentState.containers_version`): always exact;
- the human view (`format=text`) is a whole rendering, kept for up to `MAX_AGE_S` and while
  the containers, the verdict, the warnings and the states of mount and Docker stay the
  same: only its counters and "for 3m12s" may lag, by that much.
`/metrics` is not kept: nothing tells when a counter last moved, and a scrape must be exact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from volagent.api import render
from volagent.state import AgentState

MAX_AGE_S = 1.0
_COMPACT = (",", ":")


class StatusCache:
    """Renders `state` for the socket; `clock` is monotonic seconds (tests pass their own)."""

    def __init__(self, state: AgentState, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock
        self._containers: dict[bool, tuple[int, bytes]] = {}  # pretty -> (version, JSON)
        self._text: dict[tuple[Any, ...], tuple[float, str]] = {}

    def document(self, *, pretty: bool = False, extra: dict[str, Any] | None = None) -> bytes:
        """The status document as JSON, `extra` keys (the rack's hosts) added."""
        head = self.state.status_document(containers=False)
        if extra:
            head.update(extra)
        # the keys before and after the containers, encoded apart and joined around them, so
        # the document reads in its usual order
        keys = list(head)
        at = keys.index("containers")
        before = {k: head[k] for k in keys[:at]}
        after = {k: head[k] for k in keys[at + 1 :]}
        containers = self._containers_json(pretty)
        # joined as bytes, the large part copied once
        if pretty:
            parts = [json.dumps(before, indent=2)[2:-2].encode()] if before else []
            parts.append(b'  "containers": ' + containers)
            if after:
                parts.append(json.dumps(after, indent=2)[2:-2].encode())
            return b"".join((b"{\n", b",\n".join(parts), b"\n}\n"))
        lead = json.dumps(before, separators=_COMPACT)[1:-1] + "," if before else ""
        tail = "," + json.dumps(after, separators=_COMPACT)[1:-1] if after else ""
        lead += '"containers":'
        return b"".join((b"{", lead.encode(), containers, tail.encode(), b"}\n"))

    def _containers_json(self, pretty: bool) -> bytes:
        version = self.state.containers_version
        cached = self._containers.get(pretty)
        if cached is not None and cached[0] == version:
            return cached[1]
        listed = [c.encode() for c in self.state.listed_containers()]
        if pretty:
            # one level in: the lines of the list are indented as under the top-level key
            text = json.dumps(listed, indent=2).replace("\n", "\n  ")
        else:
            text = json.dumps(listed, separators=_COMPACT)
        self._containers[pretty] = (version, text.encode())
        return self._containers[pretty][1]

    def text(
        self, *, color: bool, verbose: bool, extra: dict[str, Any] | None = None
    ) -> tuple[str, str]:
        """The human view and its verdict."""
        st = self.state
        verdict = st.verdict()
        key = (
            color,
            verbose,
            extra is not None,
            verdict,
            st.containers_version,
            tuple(st.warnings),
            (st.mount.state, st.mount.error, st.docker.state, st.docker.error, st.guard.enabled),
        )
        now = self.clock()
        cached = self._text.get(key)
        if cached is not None and now - cached[0] < MAX_AGE_S:
            return cached[1], verdict
        doc = self.state.status_document()
        if extra:
            doc.update(extra)
        text = render.render_status(doc, color=color, verbose=verbose, host=self.state.host_id)
        # only the newest rendering of each kind is kept
        self._text = {k: v for k, v in self._text.items() if k[:3] != key[:3]}
        self._text[key] = (now, text)
        return text, verdict
