#!/bin/sh
# Installs volagent from this bundle into its own virtual environment, with no network:
# every wheel it needs is in wheels/ next to this script (pip itself included, so the
# distro's ensurepip/python3-venv is not needed).
#
#   PREFIX/versions/VERSION/   the virtual environment
#   PREFIX/current             -> versions/VERSION (switched atomically on upgrade)
#   PREFIX/bin/volagent        -> ../current/bin/volagent (what the systemd unit runs)
#   PREFIX/bin/python          runs current/bin/python (a wrapper: a symlink to a venv's
#                              python would start it outside the venv)
#
# As root it also creates the system group `volagent`, whose members may use the status
# socket (`--no-group`: leave the host's groups alone, e.g. for a build or a test).
#
# usage: install.sh [--prefix DIR] [--python PYTHON] [--no-group]   (defaults: /opt/volagent,
#        the newest python3.X >= 3.11 on PATH)
set -eu
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
prefix=/opt/volagent
python=""
make_group=1
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        --no-group) make_group=0; shift ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
die() {
    echo "install.sh: error: $*" >&2
    exit 1
}
python_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; }
if [ -z "$python" ]; then
    for candidate in python3.13 python3.12 python3.11 python3; do
        path=$(command -v "$candidate" 2>/dev/null) || continue
        if python_ok "$path"; then
            python=$path
            break
        fi
    done
fi
if [ -z "$python" ] || ! python_ok "$python"; then
    die "volagent needs Python >= 3.11 (Amazon Linux: dnf install python3.11; Debian/Ubuntu: apt-get install python3)"
fi

# The group whose members may use the status socket (like Docker's `docker` group); its
# socket unit names it, and systemd refuses a socket unit whose group does not exist.
ensure_group() {
    getent group volagent >/dev/null 2>&1 && return 0
    if command -v groupadd >/dev/null 2>&1; then
        groupadd --system volagent
    elif command -v addgroup >/dev/null 2>&1; then
        addgroup -S volagent
    else
        echo "install.sh: warning: no groupadd or addgroup: create the group volagent by hand, or the status socket is for root only" >&2
    fi
}
if [ "$make_group" -eq 1 ] && [ "$(id -u)" -eq 0 ]; then
    ensure_group
fi

version=$(cat "$here/VERSION")
pip_wheel=$(find "$here/wheels" -name 'pip-*.whl' | head -n 1)
[ -n "$pip_wheel" ] || die "no pip wheel in $here/wheels"
mkdir -p "$prefix/versions" "$prefix/bin"
prefix=$(CDPATH='' cd -- "$prefix" && pwd)
venv=$prefix/versions/$version

if [ -x "$venv/bin/volagent" ] && "$venv/bin/volagent" --version >/dev/null 2>&1; then
    echo "install.sh: volagent $version is already installed in $venv" >&2
else
    rm -rf "$venv"
    "$python" -m venv --without-pip "$venv"
    # pip runs straight from its wheel; --no-index: nothing is fetched from anywhere, and
    # no pip setting of this host (config files, PIP_* variables such as extra find-links)
    # adds a source: what gets installed is the bundle's wheels, or nothing
    for var in $(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p'); do
        unset "$var"
    done
    PIP_CONFIG_FILE=/dev/null "$venv/bin/python" "$pip_wheel/pip" install --quiet \
        --no-index --find-links "$here/wheels" --no-cache-dir \
        --disable-pip-version-check --no-warn-script-location \
        pip "volagent==$version" ||
        die "installing the wheels into $venv failed (a Python or platform this bundle has no wheels for?)"
fi
cp "$here/README.md" "$prefix/README.md" 2>/dev/null || true

# switch over: a new symlink renamed onto the old one, so PREFIX/current is never missing
ln -sfn "versions/$version" "$prefix/current.new"
mv -T "$prefix/current.new" "$prefix/current"
ln -sfn "../current/bin/volagent" "$prefix/bin/volagent.new"
mv -T "$prefix/bin/volagent.new" "$prefix/bin/volagent"
printf '#!/bin/sh\nexec "%s/current/bin/python" "$@"\n' "$prefix" >"$prefix/bin/python.new"
chmod 0755 "$prefix/bin/python.new"
mv -T "$prefix/bin/python.new" "$prefix/bin/python"
"$prefix/bin/volagent" --version >/dev/null || die "$prefix/bin/volagent does not run"
echo "install.sh: $("$prefix/bin/volagent" --version) installed in $prefix" >&2
