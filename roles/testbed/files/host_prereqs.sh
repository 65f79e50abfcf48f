#!/bin/sh
# Checks, before anything is installed, that this machine can host the han testbed: Debian 12 or later, as
# root. Then makes sure a Python with venv exists for the controller's .venv.
# OS_RELEASE_FILE may point at another os-release file (the tests use it to play a non-Debian machine).
set -eu

os_release=${OS_RELEASE_FILE:-/etc/os-release}
fail() { echo "make testbed: $*" >&2; exit 1; }

[ -r "$os_release" ] || fail "cannot read $os_release: the testbed needs Debian 12 or later."
id=$(. "$os_release" && echo "${ID:-unknown}")
version=$(. "$os_release" && echo "${VERSION_ID:-0}")
[ "$id" = debian ] || fail "this machine is '$id', not Debian: the testbed needs Debian 12 or later (it installs Debian's slurm-wlm, munge and openssh-server)."
[ "${version%%.*}" -ge 12 ] 2>/dev/null || fail "this is Debian $version: the testbed needs Debian 12 or later."
[ "$(id -u)" -eq 0 ] || fail "run as root (uid 0), not as $(id -un): the testbed installs packages, creates the 'pegasus' account and starts Slurm, munge and sshd."

python=${PYTHON:-python3}
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "make testbed: installing Debian's python3-venv for the controller's .venv" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
