"""The start guard's decisions on real directories: creates prepared before the answer,
violations and unhealthy mounts denied with a reason, starts judged from memory, a stuck
filesystem denied in time, and the guard's own errors failing open."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.unit import factories
from tests.unit.guard_requests import LABELS, ask, create, create_body, decision, plugin_body

from volagent.guard.plugin import Guard
from volagent.httpserver import Request, Response
from volagent.nesting import HostBind
from volagent.state import AgentState, ContainerRecord, VolumeRecord
from volagent.volumes.preparer import ContainerSpec, Preparer
from volagent.worker import TimedWorker

# tests marked `root` have the guard prepare a directory: volagent makes its parents
# root 0755 (rule 2)

CID = "f" * 64


def make_state(mp: Path, **guard: Any) -> AgentState:
    """A state whose guard is on (with `guard` over its defaults)."""
    return factories.make_state(mp, guard={"enabled": True, **guard})


@pytest.fixture
def worker() -> Iterator[TimedWorker]:
    w = TimedWorker("test-guard", max_threads=1)
    yield w
    w.close()


@pytest.fixture
def state(mp: Path) -> AgentState:
    return make_state(mp)


@pytest.fixture
def guard(state: AgentState, worker: TimedWorker) -> Guard:
    return Guard(state, Preparer(state, worker))


def learn_id(g: Guard, body: dict[str, Any], name: str, cid: str) -> None:
    """What dockerd sends after the create: AuthZRes with Docker's answer."""
    raw = plugin_body(
        "POST",
        f"/containers/create?name={name}",
        body,
        ResponseStatusCode=201,
        ResponseBody=base64.b64encode(json.dumps({"Id": cid}).encode()).decode(),
    )
    assert decision(ask(g, raw, "/AuthZPlugin.AuthZRes")) == {"Allow": True}


def owner_mode(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


# --- the protocol ---------------------------------------------------------------------------
def test_activate_says_authz(guard: Guard) -> None:
    assert decision(ask(guard, b"", "/Plugin.Activate")) == {"Implements": ["authz"]}


def test_other_requests_are_allowed_at_once_and_counted(guard: Guard, state: AgentState) -> None:
    for method, uri in (("GET", "/v1.41/containers/json"), ("POST", "/v1.41/containers/x/stop")):
        assert decision(ask(guard, plugin_body(method, uri))) == {"Allow": True}
    assert (state.guard.allowed, state.guard.denied) == (2, 0)
    assert (
        state.metrics.registry.get_sample_value(
            "volagent_guard_decisions_total", {"result": "allow"}
        )
        == 2
    )


def test_responses_are_always_allowed(guard: Guard) -> None:
    raw = plugin_body("GET", "/v1.41/containers/json", ResponseStatusCode=200)
    assert decision(ask(guard, raw, "/AuthZPlugin.AuthZRes")) == {"Allow": True}
    # what dockerd sends when it retries a call whose connection broke: the body is gone
    assert decision(ask(guard, b"", "/AuthZPlugin.AuthZRes")) == {"Allow": True}


@pytest.mark.parametrize(
    ("path", "raw", "status"),
    [
        ("/AuthZPlugin.AuthZReq", b"", 400),
        ("/AuthZPlugin.AuthZReq", b"{not json", 400),
        ("/AuthZPlugin.AuthZReq", b'{"RequestMethod":"GET"}', 400),
        (
            "/AuthZPlugin.AuthZReq",
            b'{"RequestMethod":"POST","RequestUri":"/containers/create","RequestBody":"%"}',
            400,
        ),
        ("/AuthZPlugin.AuthZRes", b"garbage", 400),
        ("/AuthZPlugin.AuthZRes", b'{"RequestUri":"/containers/create","RequestBody":"%"}', 400),
        ("/Nope", b"{}", 404),
    ],
)
def test_malformed_plugin_requests_get_an_error(
    guard: Guard, path: str, raw: bytes, status: int
) -> None:
    resp = ask(guard, raw, path)
    assert resp.status == status
    doc = json.loads(resp.body)
    assert doc["Allow"] is False and doc["Err"]


def test_only_root_may_ask(guard: Guard, mp: Path) -> None:
    raw = plugin_body("POST", "/containers/create", create_body(f"{mp}/r1-a/web/data:/data"))
    assert ask(guard, raw, uid=1000).status == 403
    assert not (mp / "r1-a").exists()


# --- create ---------------------------------------------------------------------------------
def test_a_create_waits_for_the_table_of_containers_and_is_refused_without_it(
    worker: TimedWorker, mp: Path
) -> None:
    """The attack: just after volagent (re)started its table of this host's containers is
    empty until the Docker watch has listed them; a create binding the parent of a running
    container's bind source, judged then, met nothing to nest with (rule 7)."""
    st = factories.make_state(mp, listed=False, guard={"enabled": True})
    g = Guard(st, Preparer(st, worker))
    with factories.directory_timeout(st, 0.2):
        answer = create(g, f"{mp}/r1-a/web:/data")
    assert answer["Allow"] is False
    assert "has not finished listing this host's containers" in answer["Msg"]
    assert not (mp / "r1-a").exists()
    # one that binds nothing is not refused for it (an app's bind of a host path is: rule 7
    # for host paths judges it against the table too)
    st = factories.make_state(mp, listed=False, guard={"enabled": True})
    g = Guard(st, Preparer(st, worker))
    with factories.directory_timeout(st, 0.2):
        assert create(g) == {"Allow": True}


@pytest.mark.root
def test_a_create_judged_once_the_containers_are_listed_meets_their_binds(
    worker: TimedWorker, mp: Path
) -> None:
    """Asked while the listing is under way, the create waits for it, then judges against
    the whole table: the running container's bind nests it."""
    st = factories.make_state(mp, listed=False, guard={"enabled": True})
    g = Guard(st, Preparer(st, worker))
    inner = VolumeRecord(host=f"{mp}/r1-a/web/data", container="/d", read_only=False)
    running = ContainerRecord(
        id=CID, name="web-0", rack="r1", app="a", service="web", volumes=[inner]
    )
    raw = plugin_body(
        "POST", "/v1.41/containers/create?name=web-1", create_body(f"{mp}/r1-a/web:/data")
    )

    async def listing() -> None:
        await asyncio.sleep(0.05)
        st.upsert_container(running)
        st.containers_listed.set()

    async def both() -> Response:
        answer, _ = await asyncio.gather(
            g.handle(Request("POST", "/AuthZPlugin.AuthZReq", {}, {}, raw, peer_uid=0)),
            listing(),
        )
        return answer

    answer = decision(asyncio.run(both()))
    assert answer["Allow"] is False
    assert "binds may not nest" in answer["Msg"]


@pytest.mark.root
def test_create_prepares_before_answering(guard: Guard, state: AgentState, mp: Path) -> None:
    assert create(guard, f"{mp}/r1-a/web/data:/data") == {"Allow": True}
    assert owner_mode(mp / "r1-a/web/data") == (33, 33, 0o755)
    assert owner_mode(mp / "r1-a") == (0, 0, 0o755)
    assert (state.guard.allowed, state.guard.denied) == (1, 0)
    assert (
        state.metrics.registry.get_sample_value(
            "volagent_guard_decisions_total", {"result": "allow"}
        )
        == 1
    )


def test_outside_binds_are_untouched(guard: Guard, mp: Path, tmp_path: Path) -> None:
    assert create(guard, f"{tmp_path}/elsewhere:/data") == {"Allow": True}
    assert os.listdir(mp) == []


def test_unlabeled_container_binding_the_shared_filesystem_is_denied(
    guard: Guard, mp: Path
) -> None:
    # the labels are the creator's to write: leaving them out must not open every namespace
    answer = create(guard, f"{mp}/r1-b/web/data:/data", labels={})
    assert answer["Allow"] is False
    assert "rule 6" in answer["Msg"] and "names no app" in answer["Msg"]
    assert os.listdir(mp) == []


@pytest.mark.parametrize(
    ("rel", "fragment"),
    [
        ("r1-b/web/data", "outside app a's namespace"),
        ("r1-a/../r1-b/web/data", "escapes through '..'"),
        ("", "mount point root"),
        ("r1-a", "namespace root"),
    ],
)
def test_violations_are_denied_and_nothing_is_created(
    guard: Guard, state: AgentState, mp: Path, rel: str, fragment: str
) -> None:
    host = f"{mp}/{rel}".rstrip("/")
    answer = create(guard, f"{mp}/r1-a/web/ok:/ok", f"{host}:/data")
    assert answer["Allow"] is False
    assert fragment in answer["Msg"] and "volagent paths" in answer["Msg"]
    assert os.listdir(mp) == []
    assert state.guard.denied == 1


def test_a_planted_symlink_is_denied(guard: Guard, mp: Path, tmp_path: Path) -> None:
    (mp / "r1-a").mkdir()
    target = tmp_path / "etc"
    target.mkdir()
    (mp / "r1-a" / "web").symlink_to(target)
    answer = create(guard, f"{mp}/r1-a/web/data:/data")
    assert answer["Allow"] is False
    assert "symlink" in answer["Msg"]
    assert os.listdir(target) == []


@pytest.mark.root
def test_warn_mode_lets_violations_through(mp: Path, worker: TimedWorker) -> None:
    st = make_state(mp, violations="warn")
    g = Guard(st, Preparer(st, worker))
    assert create(g, f"{mp}/r1-b/web/data:/data", f"{mp}/r1-a/web/ok:/ok") == {"Allow": True}
    assert (mp / "r1-a/web/ok").is_dir()
    assert not (mp / "r1-b").exists()


@pytest.mark.parametrize("mount_state", ["unmounted", "stalled", "mounting"])
def test_unhealthy_mount_denies_creates_naming_the_state(
    guard: Guard, state: AgentState, mp: Path, mount_state: str
) -> None:
    state.set_mount_state(mount_state, "probe timed out")
    answer = create(guard, f"{mp}/r1-a/web/data:/data")
    assert answer["Allow"] is False
    assert f"is {mount_state} (probe timed out)" in answer["Msg"]
    assert 'when_unhealthy = "allow"' in answer["Msg"]
    assert os.listdir(mp) == []
    # containers without binds under the mount point keep working
    assert create(guard, "/tmp/x:/x") == {"Allow": True}
    assert decision(ask(guard, plugin_body("POST", "/containers/create", {"Image": "x"}))) == {
        "Allow": True
    }


def test_when_unhealthy_allow_lets_them_through(mp: Path, worker: TimedWorker) -> None:
    st = make_state(mp, when_unhealthy="allow")
    st.set_mount_state("unmounted", "mount failed")
    g = Guard(st, Preparer(st, worker))
    assert create(g, f"{mp}/r1-a/web/data:/data") == {"Allow": True}
    assert os.listdir(mp) == []  # never created while the mount is not the shared one


def test_a_stuck_filesystem_is_a_deny_in_time(
    guard: Guard, state: AgentState, worker: TimedWorker, mp: Path
) -> None:
    # the worker's only thread is stuck, as it would be in the kernel on a hung mount
    release = threading.Event()
    worker.submit(release.wait)
    try:
        with factories.directory_timeout(state, 0.5):
            answer = create(guard, f"{mp}/r1-a/web/data:/data")
    finally:
        release.set()
    assert answer["Allow"] is False
    assert "did not finish within" in answer["Msg"]
    assert "not answering" in answer["Msg"]


@pytest.mark.root
async def test_just_after_start_a_create_waits_for_the_mount_state(
    mp: Path, worker: TimedWorker
) -> None:
    st = make_state(mp)
    st.set_mount_state("unmounted")  # as at start-up: nobody has looked at the mount yet
    st.mount.error = None
    st.mount_known.clear()
    g = Guard(st, Preparer(st, worker))

    asking = asyncio.create_task(
        g.handle(
            Request(
                "POST",
                "/AuthZPlugin.AuthZReq",
                {},
                {},
                plugin_body("POST", "/containers/create", create_body(f"{mp}/r1-a/w/d:/d")),
                peer_uid=0,
            )
        )
    )
    await asyncio.sleep(0.2)
    assert not asking.done()
    st.set_mount_state("mounted")  # the manager adopted the mount already there
    assert decision(await asking) == {"Allow": True}
    assert (mp / "r1-a/w/d").is_dir()


def test_a_create_without_body_is_denied(guard: Guard) -> None:
    raw = plugin_body("POST", "/v1.41/containers/create")
    answer = decision(ask(guard, raw))
    assert answer["Allow"] is False
    assert "application/json" in answer["Msg"]


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"HostConfig": {"Binds": ["/a:/b"]}, "hostconfig": {}}', b'{"Labels": 1}'],
)
def test_an_unreadable_create_body_is_denied(guard: Guard, raw: bytes) -> None:
    answer = decision(ask(guard, plugin_body("POST", "/containers/create", raw)))
    assert answer["Allow"] is False
    assert answer["Msg"].startswith("volagent cannot read this create request")


def test_lower_case_keys_do_not_slip_past(guard: Guard, mp: Path) -> None:
    body = {"labels": LABELS, "hostconfig": {"binds": [f"{mp}/r1-b/web/data:/data"]}}
    answer = decision(ask(guard, plugin_body("POST", "/containers/create", body)))
    assert answer["Allow"] is False
    assert not (mp / "r1-b").exists()


def test_disabled_guard_allows_everything(guard: Guard, state: AgentState, mp: Path) -> None:
    state.guard.enabled = False
    state.set_mount_state("unmounted", "mount failed")
    assert create(guard, f"{mp}/r1-b/web/data:/data") == {"Allow": True}


def test_own_errors_fail_closed_for_anything_that_binds(
    guard: Guard, state: AgentState, mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(spec: Any, landings: Any = None) -> Any:
        raise RuntimeError("a bug")

    # a bug cannot be produced on demand any other way
    monkeypatch.setattr(guard.preparer, "outcome_of", broken)
    answer = create(guard, f"{mp}/r1-a/web/data:/data")
    assert answer["Allow"] is False and "guard failed" in answer["Msg"]
    assert create(guard, "/srv/outside:/data")["Allow"] is False  # where it lands is unknown
    # a container that binds, inherits and mounts nothing cannot reach shared data
    body = {"Image": "x", "Labels": LABELS, "HostConfig": {}}
    plain = decision(ask(guard, plugin_body("POST", "/containers/create", body)))
    assert plain == {"Allow": True}
    assert (
        state.metrics.registry.get_sample_value(
            "volagent_guard_decisions_total", {"result": "error"}
        )
        == 3
    )
    assert any("start guard failed" in w for w in state.warnings)
    assert not (mp / "r1-a").exists()


# --- start ----------------------------------------------------------------------------------
def start(g: Guard, ref: str, action: str = "start") -> dict[str, Any]:
    return decision(ask(g, plugin_body("POST", f"/v1.41/containers/{ref}/{action}")))


@pytest.mark.root
async def test_two_creates_judged_at_once_cannot_nest(guard: Guard, mp: Path) -> None:
    outer = create_body(f"{mp}/r1-a/web:/all")
    inner = create_body(f"{mp}/r1-a/web/data:/data")

    async def both() -> list[Response]:
        requests = [
            Request("POST", "/AuthZPlugin.AuthZReq", {}, {}, plugin_body("POST", uri, body), 0)
            for uri, body in (
                ("/containers/create?name=outer", outer),
                ("/containers/create?name=inner", inner),
            )
        ]
        return list(await asyncio.gather(*(guard.handle(r) for r in requests)))

    answers = [decision(r) for r in await both()]
    assert sorted(a["Allow"] for a in answers) == [False, True], answers
    assert any("rule 7" in a.get("Msg", "") for a in answers)
    # the refused one holds nothing back: a create identical to the allowed one still fits
    assert len(guard.state.reserved_binds) == 1


def walks(state: AgentState) -> float:
    value = state.metrics.registry.get_sample_value("volagent_directory_walks_total")
    return value or 0.0


@pytest.mark.root
def test_a_guarded_create_is_walked_once_and_each_start_once_more(
    guard: Guard, state: AgentState, mp: Path
) -> None:
    body = create_body(f"{mp}/r1-a/web/data:/data")
    assert decision(ask(guard, plugin_body("POST", "/containers/create?name=web-1", body)))["Allow"]
    assert walks(state) == 1
    learn_id(guard, body, "web-1", CID)
    # the Docker watch's look at the create event finds the volume settled: no second walk
    inspected = ContainerSpec(CID, "web-1", LABELS, [], "", body["HostConfig"])
    asyncio.run(guard.preparer.prepare(inspected))
    assert walks(state) == 1
    assert [v.state for v in state.containers[CID].volumes] == ["ready"]
    # every start walks again: what was checked at create may have been swapped since
    assert start(guard, "web-1") == {"Allow": True}
    assert walks(state) == 2


@pytest.mark.root
def test_start_is_judged_from_what_the_guard_saw(guard: Guard, state: AgentState, mp: Path) -> None:
    body = create_body(f"{mp}/r1-a/web/data:/data")
    assert decision(ask(guard, plugin_body("POST", "/containers/create?name=web-1", body)))["Allow"]
    learn_id(guard, body, "web-1", CID)
    for ref in (CID, CID[:12], "web-1"):
        assert start(guard, ref) == {"Allow": True}
    state.set_mount_state("stalled", "probe timed out")
    for ref in (CID, CID[:12], "web-1", "/web-1"):
        answer = start(guard, ref)
        assert answer["Allow"] is False
        assert "is stalled" in answer["Msg"] and "not started" in answer["Msg"]
    assert "not restarted" in start(guard, "web-1", "restart")["Msg"]
    state.set_mount_state("mounted")
    assert start(guard, "web-1") == {"Allow": True}


@pytest.mark.root
def test_an_escaped_create_uri_is_learned_too(guard: Guard, state: AgentState, mp: Path) -> None:
    uri = "/v1.41/containers/%63reate?name=web-1"  # routed as a create: its answer too
    body = create_body(f"{mp}/r1-a/web/data:/data")
    assert decision(ask(guard, plugin_body("POST", uri, body)))["Allow"]
    answer = base64.b64encode(json.dumps({"Id": CID}).encode()).decode()
    raw = plugin_body("POST", uri, body, ResponseStatusCode=201, ResponseBody=answer)
    assert decision(ask(guard, raw, "/AuthZPlugin.AuthZRes")) == {"Allow": True}
    state.set_mount_state("stalled", "probe timed out")
    assert start(guard, CID[:12])["Allow"] is False


def test_start_of_a_container_known_to_the_state(guard: Guard, state: AgentState) -> None:
    vol = VolumeRecord(host="/v/r1-a/web/data", container="/data", read_only=False, state="ready")
    state.upsert_container(ContainerRecord("c" * 64, "old", "r1", "a", "web", [vol]))
    state.upsert_container(ContainerRecord("d" * 64, "plain", "r1", "a", "web", []))
    state.set_mount_state("unmounted", "mount failed")
    assert start(guard, "old")["Allow"] is False
    assert start(guard, "ccc")["Allow"] is False
    assert start(guard, "plain") == {"Allow": True}
    # not in the table, and no Docker to ask what it binds: refused
    assert start(guard, "unknown")["Allow"] is False


def test_start_of_a_container_not_in_the_table_is_judged_from_docker(
    state: AgentState, worker: TimedWorker, mp: Path
) -> None:
    # just after a restart the table is empty until the Docker watch has looked: Docker
    # says what the container binds, and it is judged like a known one
    inspected = {
        "Id": CID,
        "Name": "/web-1",
        "Config": {"Labels": {"convox.app": "a", "convox.service": "web"}},
        "HostConfig": {"Binds": [f"{mp}/r1-a/web/data:/data"]},
    }

    async def inspect(ref: str) -> dict[str, Any] | None:
        return inspected if CID.startswith(ref) or ref == "web-1" else None

    g = Guard(state, Preparer(state, worker), inspect=inspect)
    state.set_mount_state("unmounted", "mount failed")
    assert "not started" in start(g, "web-1")["Msg"]
    assert start(g, "gone") == {"Allow": True}  # Docker knows none: its start fails there


@pytest.mark.root
def test_start_re_prepares_a_volume_left_pending(mp: Path, worker: TimedWorker) -> None:
    st = make_state(mp, when_unhealthy="allow")
    g = Guard(st, Preparer(st, worker))
    st.set_mount_state("unmounted", "mount failed")
    body = create_body(f"{mp}/r1-a/web/data:/data")
    assert decision(ask(g, plugin_body("POST", "/containers/create?name=w", body)))["Allow"]
    learn_id(g, body, "w", CID)
    assert not (mp / "r1-a").exists()
    st.set_mount_state("mounted")
    assert start(g, "w") == {"Allow": True}
    assert owner_mode(mp / "r1-a/web/data") == (33, 33, 0o755)


@pytest.mark.root
def test_volumes_from_a_known_container_counts(guard: Guard, state: AgentState, mp: Path) -> None:
    body = create_body(f"{mp}/r1-a/web/data:/data")
    assert decision(ask(guard, plugin_body("POST", "/containers/create?name=src", body)))["Allow"]
    learn_id(guard, body, "src", CID)
    state.set_mount_state("unmounted", "mount failed")
    inheriting = {"Image": "x", "HostConfig": {"VolumesFrom": ["src:ro"]}}
    answer = decision(ask(guard, plugin_body("POST", "/containers/create", inheriting)))
    assert answer["Allow"] is False
    assert "data" in answer["Msg"]


def test_latency_is_measured(guard: Guard, state: AgentState, mp: Path) -> None:
    create(guard, f"{mp}/r1-a/web/data:/data")
    start(guard, "unknown")
    text = state.metrics.render().decode()
    assert "volagent_guard_decision_seconds_count 2.0" in text


def test_an_old_api_start_body_binding_a_host_path_waits_for_the_table_and_asks_who(
    mp: Path, worker: TimedWorker, tmp_path: Path
) -> None:
    """The attack: just after volagent restarted, `POST /v1.23/containers/ID/start` with a
    body binding a host directory that strictly contains another app's bind source (Docker
    24 and older apply it). The container is not in the table yet, so its app is Docker's
    to say, and rule 7 for host paths must judge against the whole table, not an empty one."""
    host = tmp_path / "host"
    inner = host / "inner"
    inner.mkdir(parents=True)
    st = factories.make_state(mp, listed=False, guard={"enabled": True})
    attacker = "a" * 64
    inspected = {
        "Id": attacker,
        "Name": "/evil",
        "Config": {"Labels": {"convox.app": "b", "convox.service": "web"}, "Env": []},
        "HostConfig": {"Binds": []},
        "State": {"Running": False, "StartedAt": "0001-01-01T00:00:00Z"},
        "Mounts": [],
    }

    async def inspect(ref: str) -> dict[str, Any] | None:
        return inspected if ref == attacker else None

    g = Guard(st, Preparer(st, worker), inspect=inspect)
    victim = ContainerSpec(
        id="b" * 64,
        name="victim",
        labels={"convox.app": "a", "convox.service": "web"},
        env=[],
        user="",
        host_config={"Binds": [f"{inner}:/in"]},
        host_binds=(HostBind(str(inner), str(inner), (str(inner),)),),
    )
    record = ContainerRecord(
        id=victim.id, name="victim", rack="r1", app="a", service="web", volumes=[], spec=victim
    )
    raw = plugin_body("POST", f"/v1.23/containers/{attacker}/start", {"Binds": [f"{host}:/h"]})

    async def listing() -> None:
        await asyncio.sleep(0.05)
        st.upsert_container(record)
        st.containers_listed.set()

    async def both() -> Response:
        request = Request("POST", "/AuthZPlugin.AuthZReq", {}, {}, raw, peer_uid=0)
        answer, _ = await asyncio.gather(g.handle(request), listing())
        return answer

    answer = decision(asyncio.run(both()))
    assert answer["Allow"] is False, answer
