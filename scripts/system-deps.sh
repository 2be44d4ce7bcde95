#!/bin/sh
# System packages the project needs (Debian/Ubuntu). Idempotent: safe to run again.
# Uses sudo when not root; skips quietly where apt-get is not available; waits up to 5 minutes
# for another apt or dpkg (unattended upgrades, a second run) to release its lock.
set -e
if ! command -v apt-get >/dev/null 2>&1; then echo "system-deps: no apt-get, install the packages below by hand" >&2; exit 0; fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq || true
# evaluation sandbox (CMDGen command execution) and the report's headless-browser test
# (libseccomp2: the sandbox's seccomp filter where no cgroup v2 bounds its memory)
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends bubblewrap libseccomp2
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends chromium fonts-dejavu-core
# the embedded default corpus: man pages are rendered with groff (apt-get download + dpkg-deb are in apt/dpkg)
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends groff-base
# synth: man-page fixtures are rendered with man-db's `man -l` and `col` (bsdextrautils); `bash -n` checks commands
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends man-db bsdextrautils
# CMDGen-mini: the programs its tasks ask for, so the sandbox can run the reference commands
# (one Debian package per line in scripts/sandbox-packages.txt; derived from the localdocs manifest)
DIR=$(dirname "$0")
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends $(grep -v '^#' "$DIR/sandbox-packages.txt")
