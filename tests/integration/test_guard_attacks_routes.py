"""More attacks on volagent's start guard (ids and names, local-driver volumes, swarm, odd
request spellings, other routes), each against a real dockerd started with
`--authorization-plugin=volagent` and the guard on (`violations = "deny"`).

Every test is named by the attack it tries and asserts the attack is stopped: the request
is refused, or, where Docker itself refuses it, nothing of another app is reached. The
attacker is an app's developer (app `evil`): they control their requests to Docker and the
code in their containers; they are not root on the host. The victim is app `other`, whose
directory holds a secret.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import socket
import tarfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import docker
import docker.errors
import docker.types
import pytest

from tests.testbed import Containers, app_labels
from tests.testbed.guarded import VICTIM_SECRET, Guarded, still_serving

pytestmark = [pytest.mark.docker, pytest.mark.mount]

OWNER = "33:33"
EVIL = {**app_labels("evil", "web", owner=OWNER), "volagent.test": "1"}
OTHER = app_labels("other", "web", owner=OWNER)
IMAGE = "volagent-test/busybox:latest"


# --- helpers ----------------------------------------------------------------------------------
@pytest.fixture
def victim_ctr(bed: Guarded, ctr: Containers, victim: str) -> str:
    """App other's own container, binding its directory (allowed: its own namespace)."""
    return ctr.create([f"{victim}:/data"], labels=OTHER, command=["sleep", "300"])


class _Conn(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def raw(
    bed: Guarded,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, bytes]:
    """One request to the guarded engine with exactly the headers given."""
    conn = _Conn(bed.engine.socket_path, 60)
    try:
        if chunked:
            conn.request(
                method,
                path,
                body=iter([body or b""]),
                headers=dict(headers or {}),
                encode_chunked=True,
            )
        else:
            conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


JSON = {"Content-Type": "application/json"}


def create_raw(bed: Guarded, body: dict[str, Any] | bytes, query: str = "") -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw(bed, "POST", f"/v1.41/containers/create{query}", data, headers=JSON)


def body_of(
    host_config: dict[str, Any], labels: Mapping[str, str] = EVIL, **extra: Any
) -> dict[str, Any]:
    return {
        "Image": IMAGE,
        "Cmd": ["cat", "/data/secret"],
        "Labels": dict(labels),
        "HostConfig": {"NetworkMode": "none", **host_config},
        **extra,
    }


def leaked(ctr: Containers, cid: str) -> bool:
    """Whether the container printed the secret."""
    with contextlib.suppress(Exception):
        ctr.wait(cid, timeout=20)
    with contextlib.suppress(docker.errors.NotFound):
        return VICTIM_SECRET in ctr.logs(cid)
    return False


def assert_refused(status: int, answer: bytes) -> None:
    assert status >= 400, f"allowed: {status} {answer[:300]!r}"


def created_then_started(ctr: Containers, cid: str) -> bool:
    """Start the container; True when Docker let it start."""
    try:
        ctr.start(cid)
    except docker.errors.APIError:
        return False
    return True


@contextlib.contextmanager
def removed_volumes(ctr: Containers, *names: str) -> Iterator[None]:
    try:
        yield
    finally:
        for ctr_id in ctr.ours():
            ctr.remove(ctr_id)
        for name in names:
            with contextlib.suppress(docker.errors.APIError):
                ctr.api.remove_volume(name, force=True)


def refused_volume(ctr: Containers, opts: Mapping[str, str], name: str = "evil-vol") -> str:
    """Creates a local-driver volume with `opts`; the guard's refusal, which must come."""
    with removed_volumes(ctr, name), pytest.raises(docker.errors.APIError) as excinfo:
        ctr.api.create_volume(name, driver="local", driver_opts=dict(opts))
    text = str(excinfo.value)
    assert "authorization denied by plugin volagent" in text, text
    return text


def dockerd_cwd(bed: Guarded) -> str:
    with open(bed.engine.pidfile) as f:
        pid = int(f.read().strip())
    return os.readlink(f"/proc/{pid}/cwd")


# --- legacy start bodies the guard never sees ---------------------------------------------------
# Docker forwards a body to authorization plugins only when its Content-Type is
# application/json, its length is known (not chunked) and the URI does not end in `/auth`;
# but its start handler (API below 1.24) reads a HostConfig from any body longer than 7
# bytes whose Content-Type is JSON or absent.
def _legacy_start(bed: Guarded, ctr: Containers, victim: str, how: str) -> tuple[str, int, bytes]:
    plain = ctr.create([], labels=EVIL, command=["cat", "/data/secret"])
    body = json.dumps({"Binds": [f"{victim}:/data"]}).encode()
    path = f"/v1.23/containers/{plain}/start"
    if how == "no-content-type":
        status, answer = raw(bed, "POST", path, body, headers={})
    elif how == "chunked":
        status, answer = raw(bed, "POST", path, body, headers=JSON, chunked=True)
    else:  # `/auth` at the end of the URI: Docker skips the body for the plugin
        status, answer = raw(bed, "POST", path + "?x=/auth", body, headers=JSON)
    return plain, status, answer


@pytest.mark.parametrize("how", ["no-content-type", "chunked", "auth-suffix"])
def test_legacy_start_body_hidden_from_the_guard(
    bed: Guarded, ctr: Containers, victim: str, how: str
) -> None:
    plain, status, answer = _legacy_start(bed, ctr, victim, how)
    got_it = leaked(ctr, plain)
    assert not got_it, f"the container read the secret (start answered {status})"
    assert_refused(status, answer)


def test_legacy_start_body_with_json_is_judged(bed: Guarded, ctr: Containers, victim: str) -> None:
    plain = ctr.create([], labels=EVIL, command=["cat", "/data/secret"])
    body = json.dumps({"binds": [f"{victim}:/data"]}).encode()
    status, answer = raw(bed, "POST", f"/v1.23/containers/{plain}/start", body, headers=JSON)
    assert_refused(status, answer)
    assert not leaked(ctr, plain)


# --- VolumesFrom by a reference the guard and Docker resolve differently -------------------------
def _inherit(ctr: Containers, ref: str) -> str | None:
    """An evil container with VolumesFrom `ref`, started; its id, or None when refused."""
    try:
        created = ctr.api.create_container(
            ctr.image,
            command=["cat", "/data/secret"],
            labels=EVIL,
            host_config=ctr.api.create_host_config(network_mode="none", volumes_from=[ref]),
        )
        cid = str(created["Id"])
        ctr.start(cid)
    except docker.errors.APIError as exc:
        assert "authorization denied by plugin volagent" in str(exc) or "No such" in str(exc)
        return None
    return cid


def test_volumes_from_the_victims_id_prefix_after_a_create_named_twice(
    bed: Guarded, ctr: Containers, victim_ctr: str
) -> None:
    # Docker names the container by the first `name`, the guard remembers the last
    prefix = victim_ctr[:12]
    body = body_of({}, Cmd=["true"])
    status, answer = create_raw(bed, body, f"?name=decoy-rt1&name={prefix}")
    assert status == 201, answer
    cid = _inherit(ctr, prefix)
    assert cid is None or not leaked(ctr, cid), "inherited another app's directory"


def test_volumes_from_the_victims_id_prefix_after_a_removed_namesake(
    bed: Guarded, ctr: Containers, victim_ctr: str
) -> None:
    # a container named like the victim's id prefix, removed: the guard still knows the name
    prefix = victim_ctr[:12]
    decoy = ctr.create([], labels=EVIL, command=["true"], name=prefix)
    ctr.remove(decoy)
    time.sleep(0.5)
    cid = _inherit(ctr, prefix)
    assert cid is None or not leaked(ctr, cid), "inherited another app's directory"


def test_volumes_from_the_victims_id_prefix_after_a_renamed_namesake(
    bed: Guarded, ctr: Containers, victim_ctr: str
) -> None:
    prefix = victim_ctr[:12]
    decoy = ctr.create([], labels=EVIL, command=["true"], name=prefix)
    ctr.api.rename(decoy, "decoy-rt3")
    time.sleep(0.5)
    cid = _inherit(ctr, prefix)
    assert cid is None or not leaked(ctr, cid), "inherited another app's directory"


def test_volumes_from_the_victims_container_by_name_with_mode(
    bed: Guarded, ctr: Containers, victim_ctr: str
) -> None:
    name = ctr.api.inspect_container(victim_ctr)["Name"].lstrip("/")
    for ref in (f"{name}:ro", f"/{name}", victim_ctr[:5]):
        cid = _inherit(ctr, ref)
        assert cid is None or not leaked(ctr, cid), ref


# --- local-driver volumes that reach the shared filesystem without a bind ----------------------
def test_local_volume_overlay_with_another_apps_directory_as_upperdir(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    agent = bed.agent
    assert agent is not None
    # the attacker's own directories, prepared by volagent through legitimate creates
    lower, work = agent.ns("evil", "web", "lower"), agent.ns("evil", "web", "work")
    for d in (lower, work):
        ctr.remove(ctr.create([f"{d}:/x"], labels=EVIL, command=["true"]))
    opts = {
        "type": "overlay",
        "device": "overlay",
        "o": f"lowerdir={lower},upperdir={victim},workdir={work}",
    }
    assert "cannot judge" in refused_volume(ctr, opts)


def test_local_volume_overlay_inline_in_mounts(bed: Guarded, ctr: Containers, victim: str) -> None:
    agent = bed.agent
    assert agent is not None
    lower = agent.ns("evil", "web", "lower2")
    ctr.remove(ctr.create([f"{lower}:/x"], labels=EVIL, command=["true"]))
    # read-only overlay: two lower layers, the victim's directory among them
    opts = {"type": "overlay", "device": "overlay", "o": f"lowerdir={victim}:{lower}"}
    mount = docker.types.Mount(
        "/data",
        "rt-overlay2",
        type="volume",
        driver_config=docker.types.DriverConfig("local", opts),
    )
    with removed_volumes(ctr), pytest.raises(docker.errors.APIError) as excinfo:
        ctr.api.create_container(
            ctr.image,
            command=["cat", "/data/secret"],
            labels=EVIL,
            host_config=ctr.api.create_host_config(network_mode="none", mounts=[mount]),
        )
    assert "authorization denied by plugin volagent" in str(excinfo.value)


def test_local_volume_bind_with_a_relative_device(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    # `mount(2)` resolves a relative source against dockerd's working directory
    rel = os.path.relpath(victim, dockerd_cwd(bed))
    opts = {"type": "none", "o": "bind", "device": rel}
    assert "not a plain absolute path" in refused_volume(ctr, opts)


def test_local_volume_bind_spelled_with_rbind_and_spaces(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    for i, o in enumerate(["rbind,ro", "ro, bind", "defaults,bind"]):
        opts = {"type": "none", "o": o, "device": f"/{victim}/"}
        with pytest.raises(docker.errors.APIError) as excinfo:
            ctr.api.create_volume(f"rt-spell{i}", driver="local", driver_opts=opts)
        assert "authorization denied by plugin volagent" in str(excinfo.value)


# --- other spellings of a create ------------------------------------------------------------
def test_case_folded_and_kelvin_keys(bed: Guarded, ctr: Containers, victim: str) -> None:
    # Go matches `hostconfig`/`bind` + U+017F (which folds to s) to HostConfig.Binds
    body = json.dumps(
        {
            "Image": IMAGE,
            "Cmd": ["cat", "/data/secret"],
            "labels": EVIL,
            "hostconfig": {"bind\u017f": [f"{victim}:/data"], "NetworkMode": "none"},
        },
        ensure_ascii=False,
    ).encode()
    assert_refused(*create_raw(bed, body))


def test_duplicate_binds_keys(bed: Guarded, ctr: Containers, victim: str) -> None:
    body = (
        b'{"Image":"' + IMAGE.encode() + b'","Cmd":["cat","/data/secret"],'
        b'"Labels":' + json.dumps(EVIL).encode() + b","
        b'"HostConfig":{"NetworkMode":"none","Binds":[],"Binds":["'
        + victim.encode()
        + b':/data"]}}'
    )
    assert_refused(*create_raw(bed, body))


def test_null_hostconfig_with_top_level_binds(bed: Guarded, ctr: Containers, victim: str) -> None:
    body = {
        "Image": IMAGE,
        "Cmd": ["cat", "/data/secret"],
        "Labels": EVIL,
        "HostConfig": None,
        "Binds": [f"{victim}:/data"],
    }
    assert_refused(*create_raw(bed, body))


def test_percent_encoded_and_absolute_form_create_uri(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    body = json.dumps(body_of({"Binds": [f"{victim}:/data"]})).encode()
    for path in (
        "/v1.41/containers/%63reate",
        "/v1.41/%63ontainers/create?",
        "http://x/v1.41/containers/create",
        "/containers/create",
    ):
        status, answer = raw(bed, "POST", path, body, headers=JSON)
        assert_refused(status, answer)


def test_create_with_body_hidden_from_the_guard(bed: Guarded, ctr: Containers, victim: str) -> None:
    body = json.dumps(body_of({"Binds": [f"{victim}:/data"]})).encode()
    for path, headers, chunked in (
        ("/v1.41/containers/create?x=/auth", JSON, False),
        ("/v1.41/containers/create", {}, False),
        ("/v1.41/containers/create", JSON, True),
        ("/v1.41/containers/create", {"Content-Type": "application/json; charset=utf-8"}, False),
    ):
        status, answer = raw(bed, "POST", path, body, headers=headers, chunked=chunked)
        assert_refused(status, answer)


def test_bind_spellings_trailing_slash_dot_and_mount_point_root(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    agent = bed.agent
    assert agent is not None
    mp = agent.mount_point
    for src in (
        f"{victim}/",
        f"{victim}/.",
        f"{mp}/./{agent.rack}-other/web/data",
        mp,
        f"{mp}/",
        f"{mp}/.volagent",
        agent.ns("evil", "web") + f"/../../{agent.rack}-other/web/data",
    ):
        status, answer = create_raw(bed, body_of({"Binds": [f"{src}:/data"]}))
        assert_refused(status, answer)


def test_mounts_of_type_bind_in_other_case_and_relative_source(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    rel = os.path.relpath(victim, dockerd_cwd(bed))
    for m in (
        {"Type": "BIND", "Source": victim, "Target": "/data"},
        {"type": "bind", "source": victim, "target": "/data"},
        {"Type": "bind", "Source": rel, "Target": "/data"},
        {"Type": "bind", "Source": "/", "Target": "/data", "BindOptions": {"NonRecursive": True}},
        {
            "Type": "bind",
            "Source": victim,
            "Target": "/data",
            "BindOptions": {"Propagation": "rshared"},
        },
    ):
        status, answer = create_raw(bed, body_of({"Mounts": [m]}))
        if status == 201:
            cid = json.loads(answer)["Id"]
            assert not (created_then_started(ctr, cid) and leaked(ctr, cid)), m
        else:
            assert_refused(status, answer)


# --- other routes ------------------------------------------------------------------------------
def test_docker_cp_into_own_container_through_a_symlink(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    agent = bed.agent
    assert agent is not None
    mine = agent.ns("evil", "web", "cp")
    cid = ctr.create([f"{mine}:/data"], labels=EVIL, command=["sleep", "30"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("data/link")
        link.type, link.linkname = tarfile.SYMTYPE, victim
        tar.addfile(link)
        f = tarfile.TarInfo("data/link/planted")
        payload = b"pwned"
        f.size = len(payload)
        tar.addfile(f, io.BytesIO(payload))
    with contextlib.suppress(docker.errors.APIError):
        ctr.api.put_archive(cid, "/", buf.getvalue())
    assert not os.path.exists(os.path.join(victim, "planted"))


def test_update_and_rename_do_not_open_a_start(bed: Guarded, ctr: Containers, victim: str) -> None:
    # a container created with another app's bind is never created; update cannot add binds
    plain = ctr.create([], labels=EVIL, command=["cat", "/data/secret"], name="rt-upd")
    raw(
        bed,
        "POST",
        f"/v1.41/containers/{plain}/update",
        json.dumps({"Binds": [f"{victim}:/data"], "RestartPolicy": {"Name": "always"}}).encode(),
        headers=JSON,
    )
    ctr.api.rename(plain, "rt-upd2")
    with contextlib.suppress(docker.errors.APIError):
        ctr.start("rt-upd2")
    assert not leaked(ctr, plain)


def test_swarm_service_binding_another_apps_directory(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    # a service's tasks are created by the engine itself, never through the API the guard
    # sees; the check after start is all that stands in the way
    agent = bed.agent
    assert agent is not None
    out = agent.ns("evil", "web", "swarm-out")
    ctr.remove(ctr.create([f"{out}:/x"], labels=EVIL, command=["true"]))
    with pytest.raises(docker.errors.APIError) as refused:
        ctr.api.init_swarm(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    assert "swarm services and swarm membership are refused" in str(refused.value)
    try:
        spec = docker.types.ContainerSpec(
            IMAGE,
            command=["sh", "-c", "cat /data/secret > /out/secret; sleep 2"],
            labels=EVIL,
            mounts=[
                docker.types.Mount("/data", victim, type="bind"),
                docker.types.Mount("/out", out, type="bind"),
            ],
        )
        try:
            ctr.api.create_service(  # type: ignore[no-untyped-call]
                docker.types.TaskTemplate(spec, networks=[]), name="evil-svc"
            )
        except docker.errors.APIError as exc:
            assert "authorization denied by plugin volagent" in str(exc)
            return
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not os.path.exists(os.path.join(out, "secret")):
            time.sleep(0.5)
        stolen = os.path.exists(os.path.join(out, "secret"))
        assert not stolen, "a swarm task read another app's directory"
    finally:
        with contextlib.suppress(docker.errors.APIError):
            ctr.api.remove_service("evil-svc")  # type: ignore[no-untyped-call]
        with contextlib.suppress(docker.errors.APIError):
            ctr.api.leave_swarm(force=True)


# --- the guard still answers ------------------------------------------------------------------
def test_guard_still_answers_after_the_attacks(bed: Guarded, ctr: Containers) -> None:
    # after every refusal above, legitimate work goes on
    still_serving(bed, ctr, OWNER)


# --- NFS volumes of the rack's EFS by another spelling of its server ---------------------------
# No NFS server runs on the test machine, so this one asks the guard itself, with the
# AuthZReq dockerd would send, on an agent state mounted from EFS as volagent mounts it
# (nfs4 from the DNS name; the mount target's IP is one of its known aliases).
EFS_DNS = "fs-0123456789abcdef0.efs.us-east-1.amazonaws.com"
EFS_IP = "10.0.1.23"


@pytest.mark.parametrize(
    "opts",
    [
        {"type": "nfs4", "o": f"addr={EFS_IP},nfsvers=4.1", "device": ":/"},
        {"type": "nfs4", "o": f"addr={EFS_IP}", "device": f"{EFS_IP}:/"},
        {"type": "nfs", "o": f"addr={EFS_DNS.upper()},vers=4", "device": ":/"},
        {"type": "nfs4", "o": f"addr={EFS_DNS},nfsvers=4.1", "device": ":/"},
    ],
    ids=["mount-target-ip", "ip-in-device", "dns-upper-case", "dns-name"],
)
async def test_nfs_volume_of_the_racks_efs_by_its_mount_target_ip(
    tmp_path: Any, opts: dict[str, str]
) -> None:

    from tests.unit.factories import make_state
    from volagent.guard.plugin import Guard
    from volagent.httpserver import Request
    from volagent.volumes.preparer import Preparer
    from volagent.worker import TimedWorker

    state = make_state(
        mount_point=str(tmp_path / "mp"),
        state_dir=str(tmp_path),
        docker_state=None,
        guard={"enabled": True},
    )
    state.mount.type = "nfs4"
    state.mount.source = f"{EFS_DNS}:/"
    state.mount.file_system_id = "fs-0123456789abcdef0"
    guard = Guard(state, Preparer(state, TimedWorker("rt", max_threads=1)))
    body = json.dumps({"Name": "rt-nfs", "Driver": "local", "DriverOpts": opts}).encode()
    import base64 as b64

    req = json.dumps(
        {
            "RequestMethod": "POST",
            "RequestUri": "/v1.41/volumes/create",
            "RequestHeaders": {"Content-Type": "application/json"},
            "RequestBody": b64.b64encode(body).decode(),
        }
    ).encode()
    answer = await guard.handle(Request("POST", "/AuthZPlugin.AuthZReq", {}, {}, req))
    doc = json.loads(answer.body)
    assert doc.get("Allow") is False, f"an NFS volume of the rack's EFS allowed: {opts}"


# --- moments: two creates racing for nesting ---------------------------------------------------
def test_two_creates_racing_for_nested_binds(bed: Guarded, ctr: Containers) -> None:
    # rule 7 is checked before the walk and reserved after it: two creates judged at once
    # may both pass, and the outer one can then swap a symlink in above the inner one
    import concurrent.futures

    agent = bed.agent
    assert agent is not None
    both = 0
    for i in range(4):
        outer = agent.ns("evil", f"race{i}")
        inner = agent.ns("evil", f"race{i}", "deep", "inner")

        def make(src: str) -> str | None:
            try:
                return ctr.create([f"{src}:/data"], labels=EVIL, command=["true"])
            except docker.errors.APIError:
                return None

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            got = list(pool.map(make, [outer, inner]))
        if all(got):
            both += 1
    assert both == 0, f"{both} of 4 races created nested binds"


def test_overlay_volume_of_the_mount_point_root(bed: Guarded, ctr: Containers, victim: str) -> None:
    agent = bed.agent
    assert agent is not None
    # a second lower layer outside the shared filesystem (layers may not overlap)
    opts = {"type": "overlay", "device": "overlay", "o": f"lowerdir={agent.mount_point}:/etc"}
    assert "cannot judge" in refused_volume(ctr, opts)


def test_bind_through_proc_pid_root_of_the_victims_running_container(
    bed: Guarded, ctr: Containers, victim_ctr: str
) -> None:
    # readlink(/proc/PID/root) says "/", but the kernel follows it into the container's
    # mount namespace, where /data is the victim's directory
    ctr.start(victim_ctr)
    pid = ctr.api.inspect_container(victim_ctr)["State"]["Pid"]
    for src in (f"/proc/{pid}/root/data", f"/proc/{pid}/cwd/data"):
        status, answer = create_raw(bed, body_of({"Binds": [f"{src}:/data"]}))
        if status == 201:
            cid = json.loads(answer)["Id"]
            assert not (created_then_started(ctr, cid) and leaked(ctr, cid)), src
        else:
            assert_refused(status, answer)


def test_symlink_planted_in_own_namespace_then_bound(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    agent = bed.agent
    assert agent is not None
    parent = agent.ns("evil", "plant")
    planter = ctr.run(
        [f"{parent}:/p"],
        labels=EVIL,
        command=["sh", "-c", f"ln -s {victim} /p/link && ln -s / /p/root"],
    )
    ctr.wait(planter)
    ctr.remove(planter)
    for src in (f"{parent}/link", f"{parent}/root{victim}"):
        status, answer = create_raw(bed, body_of({"Binds": [f"{src}:/data"]}))
        assert_refused(status, answer)


def test_local_volume_bind_whose_device_hides_dotdot_after_a_colon(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    # the guard judges a bind volume as the bind `DEVICE:/probe`, so a device holding `:`
    # is judged by what comes before it; the kernel walks the whole path, `..` included
    # (after a symlink, `..` climbs from where it points). /sys/dev/char/MAJ:MIN exists on
    # every Linux host.
    entry = "/sys/dev/char/" + sorted(os.listdir("/sys/dev/char"))[0]
    depth = os.path.realpath(entry).count("/")
    device = entry + "/" + "../" * depth + victim.lstrip("/")
    opts = {"type": "none", "o": "bind", "device": device}
    assert "not a plain absolute path" in refused_volume(ctr, opts)


# --- moments: a start of a container the guard's table does not know ---------------------------
def test_start_of_a_container_unknown_after_a_restart_onto_a_swapped_symlink(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    # a (re)started volagent knows no container until the Docker watch has looked at them
    # all (it has not reached Docker yet here): a start of a container it does not know was
    # allowed unjudged ("the check after the start covers it", which needs the watch), and
    # the nesting rule did not see it either, so a container binding the parent could swap
    # its directory for a symlink to another app's first
    agent = bed.agent
    assert agent is not None
    mine = agent.ns("evil", "web", "data")
    cid = ctr.create([f"{mine}:/data"], labels=EVIL, command=["cat", "/data/secret"])
    agent.config["docker"]["url"] = "unix:///nonexistent/docker.sock"
    agent.write_config()
    agent.restart()
    agent.wait_for(lambda d: d["mount"]["state"] in ("mounted", "local"), what="the mount")
    swapper = None
    with contextlib.suppress(docker.errors.APIError):
        swapper = ctr.run(
            [agent.ns("evil", "web") + ":/p"],
            labels=EVIL,
            command=["sh", "-c", f"mv /p/data /p/data.moved && ln -s {victim} /p/data"],
        )
    if swapper is not None:
        assert ctr.wait(swapper) == 0, ctr.logs(swapper)
    else:  # refused: as from a container on another host of the rack, binding the parent
        os.rename(mine, mine + ".moved")
        os.symlink(victim, mine)
    try:
        ctr.start(cid)
    except docker.errors.APIError as exc:
        assert "authorization denied by plugin volagent" in str(exc), exc
        return
    assert not leaked(ctr, cid), "a container the guard did not know started on another app's data"


# --- the status socket: a member of its group stalling the event loop ---------------------------
_CHUNKS = r"""
import socket, sys
# one byte per chunk: the most parsing per byte sent, within the socket's body limit
body = b"1\r\nx\r\n" * (64 * 1024 - 16) + b"0\r\n\r\n"
req = b"POST /v1/none HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(60)
try:
    s.sendall(req)
except OSError:
    pass  # refused before the rest was read: the answer is waiting
print(s.recv(65536).split(b"\r\n")[0].decode())
"""


def test_status_socket_refuses_bodies_of_one_byte_chunks(bed: Guarded, ctr: Containers) -> None:
    # a member of the socket's group (here: nobody in group nogroup) sends a body of
    # one-byte chunks: parsing each chunk is the loop's own work, outside the share of it
    # the socket's requests are held to, and a few such requests at once slowed every
    # Docker call about tenfold. The chunk count is bounded (`make bench`, flood bench,
    # measures the guard under such a flood)
    import grp
    import subprocess
    import sys

    agent = bed.agent
    assert agent is not None
    gid = grp.getgrnam("nogroup").gr_gid
    # the socket's own directory is the agent's private one here: let nobody reach it
    for d in (os.path.dirname(agent.base), agent.base):
        os.chmod(d, 0o711)  # noqa: S103 (search only, for the test's unprivileged client)
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    answer = subprocess.run(
        [python, "-c", _CHUNKS, agent.socket_path],
        user=65534,
        group=gid,
        extra_groups=[gid],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert answer.stdout.strip().startswith("HTTP/1.1 413"), answer.stdout + answer.stderr
    # the guard goes on judging
    cid = ctr.create([agent.ns("evil", "web", "after") + ":/data"], labels=EVIL)
    ctr.remove(cid)


def test_start_by_a_name_just_renamed_onto_a_swapped_container(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    # the guard resolves a start's name when it judges it, Docker again when it starts: give
    # a harmless container's name to one whose directory was swapped for a symlink to
    # another app's, in the moment between, by renaming while the start is under way
    import concurrent.futures

    agent = bed.agent
    assert agent is not None
    hits = []
    for i in range(20):
        mine = agent.ns("evil", "web", f"renamed{i}")
        name = f"evil-harmless-{i}"
        harmless = ctr.create([], labels=EVIL, command=["sleep", "1"], name=name)
        swapped = ctr.create([f"{mine}:/data"], labels=EVIL, command=["cat", "/data/secret"])
        agent.wait_for(
            lambda d, cid=swapped: any(c["id"] == cid for c in d["containers"]),
            what="the container",
        )
        os.rename(mine, mine + ".moved")  # as from a container on another host of the rack
        os.symlink(victim, mine)

        def start(name: str = name) -> None:
            with contextlib.suppress(docker.errors.APIError):
                ctr.start(name)

        def rename(harmless: str = harmless, swapped: str = swapped, name: str = name) -> None:
            with contextlib.suppress(docker.errors.APIError):
                ctr.api.rename(harmless, f"{name}-old")
                ctr.api.rename(swapped, name)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(start), pool.submit(rename)]:
                f.result()
        if leaked(ctr, swapped):
            hits.append(i)
        ctr.remove(swapped)
        ctr.remove(harmless)
    assert not hits, f"rounds {hits}: started on another app's data"


def test_two_identical_creates_at_once_then_a_swap_and_both_started(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    # the guard holds an allowed create under a digest of its URI and body until Docker's
    # answer names it: two identical creates at once share one entry, and the second
    # container is not learned from its answer. Both are started on a swapped directory.
    import concurrent.futures

    agent = bed.agent
    assert agent is not None
    for i in range(3):
        mine = agent.ns("evil", "web", f"twin{i}")
        body = body_of({"Binds": [f"{mine}:/data"]})
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda b: create_raw(bed, b), [body, body]))
        ids = [json.loads(a)["Id"] for s, a in answers if s == 201]
        assert len(ids) == 2, answers
        os.rename(mine, mine + ".moved")  # as from a container on another host of the rack
        os.symlink(victim, mine)
        for cid in ids:
            with contextlib.suppress(docker.errors.APIError):
                ctr.start(cid)
        assert not any(leaked(ctr, cid) for cid in ids), f"round {i}"
