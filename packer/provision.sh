#!/usr/bin/env bash
# Provisions a host (or an AMI being baked) for volagent:
#   1. OS packages: the NFS client, amazon-efs-utils where the distro has it, Docker, and a
#      Python >= 3.11 (apt: Debian/Ubuntu; dnf: Amazon Linux 2023, Fedora, RHEL; yum: AL2),
#   2. volagent from the release bundle into its own virtual environment under /opt/volagent
#      (no network: every wheel is in the bundle), the command linked as /usr/bin/volagent
#      (install.sh says why there), its man page and bash completion into /usr/local/share,
#   3. the config (/etc/volagent/volagent.toml, checked with `volagent check-config`),
#   4. the `volagent` group (members may use the status socket), the systemd units, the
#      docker.service drop-in and, when the guard is on, the authorization plugin in
#      /etc/docker/daemon.json (merged into an existing file),
#   5. enables the units (started at next boot, or now with --now) and verifies them.
# Idempotent: run it again to upgrade or to change the config.
#
# --uninstall takes out what steps 2, 4 and 5 put in: volagent from Docker's daemon.json
# first (then dockerd is reloaded, so its calls never wait for a plugin that is gone), the
# units (stopped and disabled), the Docker drop-in, /opt/volagent and the command on PATH.
# It keeps the config (/etc/volagent), volagent's state (/var/lib/volagent), the group, the
# OS packages, and the shared filesystem's mount and data: containers may still use them.
#
# usage: provision.sh [--bundle FILE.tar.gz|DIR] [--config FILE] [--prefix DIR]
#                     [--guard auto|on|off] [--skip-packages] [--now]
#        provision.sh --uninstall [--prefix DIR]
#        provision.sh --print-packages apt|dnf|yum
# The same settings from the environment: VOLAGENT_BUNDLE, VOLAGENT_CONFIG_SRC,
# VOLAGENT_PREFIX, VOLAGENT_GUARD.
set -euo pipefail

bundle=${VOLAGENT_BUNDLE:-}
config_src=${VOLAGENT_CONFIG_SRC:-}
prefix=${VOLAGENT_PREFIX:-/opt/volagent}
guard=${VOLAGENT_GUARD:-auto}
skip_packages=0
start_now=0
uninstall=0
docs="man/man1/volagent.1 bash-completion/completions/volagent"
unit_dir=/etc/systemd/system
config_file=/etc/volagent/volagent.toml
daemon_json=/etc/docker/daemon.json

log() { echo "provision: $*" >&2; }
die() {
    echo "provision: error: $*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# The packages each package manager is asked for (those already installed are skipped).
# amazon-efs-utils is added where the distro offers it; docker only where no engine is.
packages() {
    case $1 in
        apt) echo "nfs-common python3 docker.io" ;;
        dnf) echo "nfs-utils python3.11 docker" ;;
        yum) echo "nfs-utils docker" ;;
        *) die "unknown package manager $1" ;;
    esac
}

python_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; }

find_python() {
    local candidate path
    for candidate in python3.13 python3.12 python3.11 python3; do
        path=$(command -v "$candidate" 2>/dev/null) || continue
        if python_ok "$path"; then
            echo "$path"
            return 0
        fi
    done
    return 1
}

while [ $# -gt 0 ]; do
    case $1 in
        --bundle) bundle=$2; shift 2 ;;
        --config) config_src=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --guard) guard=$2; shift 2 ;;
        --skip-packages) skip_packages=1; shift ;;
        --now) start_now=1; shift ;;
        --uninstall) uninstall=1; shift ;;
        --print-packages) packages "$2"; exit 0 ;;
        -h | --help) sed -n '2,/^set -e/p' "$0" | grep '^#' | cut -c3-; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case $guard in auto | on | off) ;; *) die "--guard must be auto, on or off, not $guard" ;; esac
[ "$(id -u)" -eq 0 ] || die "run as root"

# Takes volagent out of daemon.json's authorization plugins, keeping every other setting.
drop_plugin() {
    [ -e "$daemon_json" ] || return 0
    grep -q '"volagent"' "$daemon_json" || return 0
    local python
    python=$(find_python) || python=python3
    "$python" - "$daemon_json" <<'EOF'
import json, os, sys

path = sys.argv[1]
with open(path) as f:
    current = json.load(f)
plugins = [p for p in current.get("authorization-plugins", []) if p != "volagent"]
if plugins:
    current["authorization-plugins"] = plugins
else:
    current.pop("authorization-plugins", None)
tmp = f"{path}.volagent-tmp"
with open(tmp, "w") as f:
    json.dump(current, f, indent=2)
    f.write("\n")
os.chmod(tmp, 0o644)
os.replace(tmp, path)
EOF
    log "took volagent out of $daemon_json"
    if [ -d /run/systemd/system ] && systemctl is-active --quiet docker.service; then
        systemctl reload docker.service # SIGHUP: dockerd re-reads authorization-plugins
    fi
}

if [ "$uninstall" -eq 1 ]; then
    # Docker first: a plugin named in daemon.json but gone makes every Docker call fail
    drop_plugin
    units="volagent.service volagent-api.socket volagent-guard.socket"
    now=""
    [ -d /run/systemd/system ] && now=--now
    # shellcheck disable=SC2086
    systemctl disable $now $units >/dev/null 2>&1 || true
    for unit in $units; do rm -f "$unit_dir/$unit"; done
    rm -f "$unit_dir/docker.service.d/volagent.conf"
    rmdir "$unit_dir/docker.service.d" 2>/dev/null || true
    for doc in $docs; do
        case $(readlink "/usr/local/share/$doc" 2>/dev/null) in
            "$prefix"/*) rm -f "/usr/local/share/$doc" ;;
        esac
    done
    [ -d /run/systemd/system ] && systemctl daemon-reload
    if [ -x "$prefix/install.sh" ]; then
        "$prefix/install.sh" --uninstall --prefix "$prefix" --link /usr/bin
    elif [ -d "$prefix" ]; then
        die "$prefix/install.sh is missing: remove $prefix and /usr/bin/volagent by hand"
    fi
    log "volagent uninstalled; kept $config_file, /var/lib/volagent, the group volagent and what is on the shared filesystem (still mounted while containers use it)"
    exit 0
fi

# --- 1. OS packages ---------------------------------------------------------------------
apt_missing() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

# Prints the words of $2... except $1.
without() {
    local drop=$1 word
    shift
    for word in "$@"; do [ "$word" = "$drop" ] || echo "$word"; done
}

install_apt() {
    local wanted missing
    # shellcheck disable=SC2207
    wanted=($(packages apt))
    if have dockerd; then
        # an engine is there already (docker-ce, say): docker.io would conflict with it
        # shellcheck disable=SC2207
        wanted=($(without docker.io "${wanted[@]}"))
    fi
    if apt-cache show amazon-efs-utils >/dev/null 2>&1; then
        wanted+=(amazon-efs-utils)
    else
        log "amazon-efs-utils is not packaged here: mount type efs needs it, nfs4 does not"
    fi
    # shellcheck disable=SC2207
    missing=($(apt_missing "${wanted[@]}"))
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # the package lists present are tried first: an offline host with its packages cached
    # installs without a network; stale or empty lists are refreshed once
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        log "installing from the present package lists failed; refreshing them"
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

install_rpm() {
    local manager=$1 wanted
    # shellcheck disable=SC2207
    wanted=($(packages "$manager"))
    if find_python >/dev/null; then
        # shellcheck disable=SC2207
        wanted=($(without python3.11 "${wanted[@]}"))
    fi
    if have dockerd; then
        # shellcheck disable=SC2207
        wanted=($(without docker "${wanted[@]}"))
    fi
    if "$manager" -q list amazon-efs-utils >/dev/null 2>&1; then
        wanted+=(amazon-efs-utils)
    else
        log "amazon-efs-utils is not packaged here: mount type efs needs it, nfs4 does not"
    fi
    log "installing ${wanted[*]}"
    "$manager" install -y -q "${wanted[@]}"
}

if [ "$skip_packages" -eq 0 ]; then
    if have apt-get; then
        install_apt
    elif have dnf; then
        install_rpm dnf
    elif have yum; then
        install_rpm yum
    else
        die "no apt-get, dnf or yum here: install an NFS client, Docker and Python >= 3.11 by hand, then run again with --skip-packages"
    fi
fi
python=$(find_python) || die "volagent needs Python >= 3.11 (Amazon Linux: dnf install python3.11; Debian/Ubuntu: apt-get install python3)"
have systemctl || die "systemd is required (systemctl not found)"

# --- 2. volagent from the bundle --------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$bundle" ] && [ -x "$(dirname "$0")/install.sh" ]; then
    bundle=$(dirname "$0")  # running from an unpacked bundle
fi
[ -n "$bundle" ] || die "no release bundle: pass --bundle dist/volagent-VERSION-bundle.tar.gz (make dist builds it)"
if [ -d "$bundle" ]; then
    src=$(cd "$bundle" && pwd)
else
    [ -f "$bundle" ] || die "bundle $bundle does not exist"
    tar -xzf "$bundle" -C "$work"
    src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'volagent-*' | head -n 1)
    [ -n "$src" ] || die "$bundle holds no volagent-VERSION directory"
fi
"$src/install.sh" --prefix "$prefix" --python "$python" --link /usr/bin
volagent="$prefix/bin/volagent"
# `man volagent` and completion, following PREFIX/current (an upgrade or a rollback
# switches them too); bash-completion 2 looks in /usr/local/share by default
for doc in $docs; do
    install -d -m 0755 "/usr/local/share/$(dirname "$doc")"
    ln -sfn "$prefix/current/share/$doc" "/usr/local/share/$doc"
done

# --- 3. the config ----------------------------------------------------------------------
install -d -m 0755 /etc/volagent
if [ -n "$config_src" ]; then
    install -m 0644 "$config_src" "$config_file"
elif [ ! -e "$config_file" ]; then
    install -m 0644 "$src/examples/volagent.toml" "$config_file"
fi
"$volagent" check-config --config "$config_file" >/dev/null ||
    die "$config_file is invalid (the error above names the key)"
if [ "$guard" = auto ]; then
    guard=$("$prefix/bin/python" -c '
import sys
from volagent import config
print("on" if config.load(sys.argv[1]).guard.enabled else "off")' "$config_file")
fi
log "installed $("$volagent" --version), config $config_file, guard $guard"

# --- 4. units, Docker drop-in, daemon.json ----------------------------------------------
# the status socket's group (install.sh makes it too): `usermod -aG volagent USER` lets a
# user run `volagent status` without root; volagent-api.socket fails without the group
if ! getent group volagent >/dev/null 2>&1; then
    if have groupadd; then
        groupadd --system volagent
    elif have addgroup; then
        addgroup -S volagent
    else
        die "cannot create the group volagent (no groupadd or addgroup); create it by hand"
    fi
    log "created the group volagent: members may use the status socket"
fi
for unit in volagent.service volagent-api.socket volagent-guard.socket; do
    sed "s|/opt/volagent/|$prefix/|g" "$src/systemd/$unit" >"$work/$unit"
    install -m 0644 "$work/$unit" "$unit_dir/$unit"
done
# the drop-in orders dockerd after the mount unit of the default mount point, volumes.mount:
# with another mount_point, after that one's unit instead (systemd-escape names it)
mount_point=$("$prefix/bin/python" -c '
import sys
from volagent import config
print(config.load(sys.argv[1]).mount_point)' "$config_file")
mount_unit=volumes.mount
if [ "$mount_point" != /volumes ] && have systemd-escape; then
    mount_unit=$(systemd-escape --path --suffix=mount "$mount_point")
fi
sed "/^After=/s|volumes\.mount|$mount_unit|" "$src/systemd/docker.service.d/volagent.conf" >"$work/docker-volagent.conf"
install -d -m 0755 "$unit_dir/docker.service.d"
install -m 0644 "$work/docker-volagent.conf" "$unit_dir/docker.service.d/volagent.conf"

# Merges the fragment's lists into daemon.json (or takes them out, guard off); every other
# key of an existing file is kept. Written to a temporary file and renamed into place.
install -d -m 0755 "$(dirname "$daemon_json")"
"$prefix/bin/python" - "$daemon_json" "$src/systemd/daemon.json" "$guard" <<'EOF'
import json, os, sys

path, fragment_path, guard = sys.argv[1:4]
try:
    with open(path) as f:
        current = json.load(f)
except FileNotFoundError:
    current = {}
except ValueError as exc:
    sys.exit(f"provision: error: {path} is not valid JSON ({exc}); dockerd would not start with it either: fix it first")
if not isinstance(current, dict):
    sys.exit(f"provision: error: {path} does not hold a JSON object")
with open(fragment_path) as f:
    fragment = json.load(f)
for key, items in fragment.items():
    have = [x for x in current.get(key, []) if x not in items]
    merged = have + list(items) if guard == "on" else have
    if merged:
        current[key] = merged
    else:
        current.pop(key, None)
tmp = f"{path}.volagent-tmp"
with open(tmp, "w") as f:
    json.dump(current, f, indent=2)
    f.write("\n")
os.chmod(tmp, 0o644)
os.replace(tmp, path)
EOF

# --- 5. enable and verify ---------------------------------------------------------------
booted=0
[ -d /run/systemd/system ] && booted=1 # systemd runs here (not a chroot or image build)
[ "$booted" -eq 1 ] && systemctl daemon-reload
systemctl enable volagent.service volagent-api.socket
if [ "$guard" = on ]; then
    systemctl enable volagent-guard.socket
else
    systemctl disable volagent-guard.socket >/dev/null 2>&1 || true
fi
if systemctl cat docker.service >/dev/null 2>&1 || [ -e /usr/lib/systemd/system/docker.service ] ||
    [ -e /lib/systemd/system/docker.service ]; then
    systemctl enable docker.service
fi
if have systemd-analyze; then
    systemd-analyze verify "$unit_dir/volagent.service" "$unit_dir/volagent-api.socket" \
        "$unit_dir/volagent-guard.socket" || die "systemd-analyze verify found problems in the units"
fi
if [ "$start_now" -eq 1 ] && [ "$booted" -eq 1 ]; then
    systemctl restart volagent-api.socket
    [ "$guard" = on ] && systemctl restart volagent-guard.socket
    systemctl restart volagent.service
    systemctl reload-or-restart docker.service
fi
log "done: volagent starts before docker.service at boot; 'volagent status' shows its state"
