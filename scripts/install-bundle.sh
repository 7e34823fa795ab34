#!/bin/sh
# Installs volagent from this bundle into its own virtual environment, with no network:
# every wheel it needs is in wheels/ next to this script (pip itself included, so the
# distro's ensurepip/python3-venv is not needed).
#
#   PREFIX/versions/VERSION/   the virtual environment, one per version installed, with
#                              share/man/man1/volagent.1 and share/bash-completion/
#   PREFIX/current             -> versions/VERSION (switched atomically on upgrade)
#   PREFIX/previous            -> the version current pointed to before (what --rollback
#                              goes back to)
#   PREFIX/bin/volagent        -> ../current/bin/volagent (what the systemd unit runs)
#   PREFIX/bin/python          runs current/bin/python (a wrapper: a symlink to a venv's
#                              python would start it outside the venv)
#   PREFIX/install.sh, PREFIX/provision.sh   these scripts, for --rollback and --uninstall
#   LINK_DIR/volagent          -> PREFIX/bin/volagent: the command on PATH
#
# LINK_DIR is /usr/bin for the system install (as root, PREFIX /opt/volagent), so that
# `volagent status` works for root and through sudo on every supported host: sudo's
# secure_path on Amazon Linux and the other RHEL-family systems is /sbin:/bin:/usr/sbin:
# /usr/bin, without /usr/local/bin, and so is cron's PATH. No distribution packages a
# `volagent`, and an existing LINK_DIR/volagent that is not this link is never replaced.
#
# As root it also creates the system group `volagent`, whose members may use the status
# socket (`--no-group`: leave the host's groups alone, e.g. for a build or a test).
#
# usage: install.sh [--prefix DIR] [--python PYTHON] [--no-group] [--link DIR | --no-link]
#                   [--keep N]
#        install.sh --rollback [--prefix DIR] [--config FILE]
#        install.sh --uninstall [--prefix DIR] [--link DIR]
# Defaults: PREFIX /opt/volagent, the newest python3.X >= 3.11 on PATH, --keep 3 (versions
# kept under PREFIX/versions: the current, the previous and the newest others), --config
# /etc/volagent/volagent.toml (checked with the version rolled back to before switching).
# --rollback and --uninstall touch volagent's files only: provision.sh --uninstall also
# takes out the units and the Docker plugin, and keeps the config and the data.
set -eu
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
default_prefix=/opt/volagent
prefix=$default_prefix
python=""
make_group=1
link_dir="unset"
keep=3
action=install
config_file=/etc/volagent/volagent.toml
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        --no-group) make_group=0; shift ;;
        --link) link_dir=$2; shift 2 ;;
        --no-link) link_dir=""; shift ;;
        --keep) keep=$2; shift 2 ;;
        --config) config_file=$2; shift 2 ;;
        --rollback) action=rollback; shift ;;
        --uninstall) action=uninstall; shift ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
die() {
    echo "install.sh: error: $*" >&2
    exit 1
}
case $keep in
    '' | *[!0-9]*) die "--keep needs a number of versions (at least 2: the current and the previous)" ;;
esac
[ "$keep" -ge 2 ] || die "--keep $keep: at least 2 versions are kept (the current and the previous)"
if [ "$link_dir" = unset ]; then
    link_dir=""
    if [ "$(id -u)" -eq 0 ] && [ "$prefix" = "$default_prefix" ]; then
        link_dir=/usr/bin
    fi
fi

# Whether LINK_DIR/volagent is free or already ours (dies when it is something else).
link_is_ours() {
    [ -e "$link_dir/volagent" ] || [ -L "$link_dir/volagent" ] || return 1
    [ "$(readlink "$link_dir/volagent" 2>/dev/null)" = "$prefix/bin/volagent" ] && return 0
    die "$link_dir/volagent exists and is not a link to $prefix/bin/volagent: remove it, or pass --link DIR (--no-link for none)"
}

# Points the command on PATH at PREFIX/bin/volagent, never replacing what is not ours.
link_command() {
    [ -n "$link_dir" ] || return 0
    link_is_ours && return 0
    mkdir -p "$link_dir"
    ln -s "$prefix/bin/volagent" "$link_dir/volagent"
}

# Takes the command off PATH, only when it is this install's link.
unlink_command() {
    [ -n "$link_dir" ] || return 0
    if [ "$(readlink "$link_dir/volagent" 2>/dev/null)" = "$prefix/bin/volagent" ]; then
        rm -f "$link_dir/volagent"
    fi
}

# Makes versions/$1 the current version; the one it replaces becomes the previous one.
switch_to() {
    was=$(readlink "$prefix/current" 2>/dev/null || true)
    if [ -n "$was" ] && [ "$was" != "versions/$1" ] && [ -d "$prefix/$was" ]; then
        ln -sfn "$was" "$prefix/previous.new"
        mv -T "$prefix/previous.new" "$prefix/previous"
    fi
    # a new symlink renamed onto the old one, so PREFIX/current is never missing
    ln -sfn "versions/$1" "$prefix/current.new"
    mv -T "$prefix/current.new" "$prefix/current"
    touch "$prefix/versions/$1" # the order --keep prunes in: the most recently switched to
}

# Removes the versions beyond the newest $keep, never the current or the previous one.
prune_versions() {
    current=$(readlink "$prefix/current" 2>/dev/null || true)
    previous=$(readlink "$prefix/previous" 2>/dev/null || true)
    n=0
    # version names are made by the build (digits, dots, letters): no white space, and ls
    # is the one portable way to have them newest first
    # shellcheck disable=SC2045
    for name in $(ls -1t "$prefix/versions"); do
        n=$((n + 1))
        case "versions/$name" in "$current" | "$previous") continue ;; esac
        [ "$n" -le "$keep" ] && continue
        rm -rf "${prefix:?}/versions/$name"
        echo "install.sh: removed the old version $name" >&2
    done
}

if [ "$action" = uninstall ]; then
    [ -d "$prefix" ] || die "nothing installed in $prefix"
    prefix=$(CDPATH='' cd -- "$prefix" && pwd)
    [ -d "$prefix/versions" ] || die "$prefix holds no volagent install (no versions/)"
    unlink_command
    rm -rf "${prefix:?}/versions" "${prefix:?}/bin" "$prefix/current" "$prefix/previous" \
        "$prefix/README.md" "$prefix/install.sh" "$prefix/provision.sh" "$prefix/share"
    rmdir "$prefix" 2>/dev/null || true
    echo "install.sh: volagent removed from $prefix" >&2
    exit 0
fi
if [ "$action" = rollback ]; then
    [ -d "$prefix" ] || die "nothing installed in $prefix"
    prefix=$(CDPATH='' cd -- "$prefix" && pwd)
    current=$(readlink "$prefix/current" 2>/dev/null) || die "no current version in $prefix"
    previous=$(readlink "$prefix/previous" 2>/dev/null) ||
        die "no previous version recorded in $prefix: --rollback goes back to the version installed before the current one"
    [ -x "$prefix/$previous/bin/volagent" ] || die "the previous version $prefix/$previous is gone"
    # the older version must accept the config the daemon will read (a key new in the
    # current version is an unknown key to it)
    if [ -e "$config_file" ] && ! "$prefix/$previous/bin/volagent" check-config --config "$config_file" >/dev/null; then
        die "${previous#versions/} refuses $config_file (the error above names the key): edit it, or pass --config FILE"
    fi
    switch_to "${previous#versions/}"
    link_command
    echo "install.sh: rolled back from ${current#versions/} to $("$prefix/bin/volagent" --version)" >&2
    if [ "$(id -u)" -eq 0 ] && command -v systemctl >/dev/null 2>&1 &&
        systemctl is-active --quiet volagent.service 2>/dev/null; then
        systemctl restart volagent.service
        echo "install.sh: restarted volagent.service" >&2
    fi
    exit 0
fi
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
[ -z "$link_dir" ] || link_is_ours || true # refuses before anything changes

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
    # the man page and bash completion of this version (provision.sh links them)
    if [ -d "$here/share" ]; then
        mkdir -p "$venv/share"
        cp -R "$here/share/." "$venv/share/"
    fi
fi
cp "$here/README.md" "$prefix/README.md" 2>/dev/null || true
# the scripts stay with the install, for --rollback and --uninstall
if [ "$here" != "$prefix" ]; then
    install -m 0755 "$here/install.sh" "$prefix/install.sh"
    [ -f "$here/provision.sh" ] && install -m 0755 "$here/provision.sh" "$prefix/provision.sh"
fi

switch_to "$version"
ln -sfn "../current/bin/volagent" "$prefix/bin/volagent.new"
mv -T "$prefix/bin/volagent.new" "$prefix/bin/volagent"
printf '#!/bin/sh\nexec "%s/current/bin/python" "$@"\n' "$prefix" >"$prefix/bin/python.new"
chmod 0755 "$prefix/bin/python.new"
mv -T "$prefix/bin/python.new" "$prefix/bin/python"
"$prefix/bin/volagent" --version >/dev/null || die "$prefix/bin/volagent does not run"
link_command
prune_versions
echo "install.sh: $("$prefix/bin/volagent" --version) installed in $prefix" >&2
