"""Test fixture: real Debian man pages rendered to curated-document shards.

Builds what curation/localdocs.py produces (source "manpages", metadata {tool, section, package,
version}, text with the man-page headings on their own lines): `apt-get download` the packages
into a cache, `dpkg-deb -x` them, render every section-1/8 page with `man -l` (groff) and `col -bx`.
Nothing is committed: the .debs and the rendered text live in a cache directory
(MINISIGMA_TEST_CACHE or ~/.cache/minisigma-tests) so reruns are fast.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from minisigma.core.shards import ShardWriter, stable_id

CACHE = Path(os.environ.get("MINISIGMA_TEST_CACHE", Path.home() / ".cache" / "minisigma-tests"))

SMALL = ["coreutils", "findutils", "tar", "grep", "sed", "gzip"]
MANY = SMALL + ["gawk", "procps", "iproute2", "util-linux", "git-man", "openssh-client", "curl", "rsync",
                "wget", "bzip2", "xz-utils", "zstd", "diffutils", "file", "less", "lsof", "strace", "tcpdump",
                "iptables", "nftables", "openssl", "jq", "sqlite3", "zip", "unzip", "parallel", "moreutils",
                "netcat-openbsd", "nmap", "socat", "bind9-dnsutils", "iputils-ping", "traceroute", "ethtool",
                "e2fsprogs", "parted", "fdisk", "btrfs-progs", "apt", "dpkg", "man-db", "debianutils",
                "bsdextrautils", "cron", "at", "sudo", "passwd", "mount", "pciutils", "usbutils", "dmidecode",
                "sysstat", "htop", "time", "net-tools", "tmux", "screen", "mtr-tiny", "whois", "tree", "pv",
                "cpio", "make", "binutils", "gdb", "numactl", "hwloc", "ipmitool", "smartmontools", "nvme-cli",
                "mdadm", "cryptsetup-bin", "lvm2", "imagemagick-6.q16", "ghostscript", "poppler-utils",
                "graphviz", "ripgrep", "fd-find", "bc", "units", "gpg", "kmod", "systemd", "psmisc", "ncdu",
                "xxd", "gettext-base", "patch", "cifs-utils", "nfs-common", "git", "lz4", "p7zip-full",
                "rclone", "s3cmd", "tshark", "ffmpeg", "sox"]

_MANDIR = re.compile(r"usr/share/man/man([18])/([^/]+)\.([18][a-z0-9]*)(\.gz)?$")


def download(pkg: str) -> Path | None:
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    if found:
        return found[-1]
    r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
    if r.returncode != 0:
        return None
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    return found[-1] if found else None


def render(page: Path) -> str:
    env = {**os.environ, "MANWIDTH": "80", "LANG": "C.UTF-8", "MAN_KEEP_FORMATTING": "0"}
    man = subprocess.run(["man", "-l", str(page)], capture_output=True, env=env, timeout=60)
    out = subprocess.run(["col", "-bx"], input=man.stdout, capture_output=True, timeout=60)
    return out.stdout.decode("utf-8", "replace")


def package_docs(pkg: str) -> list[dict]:
    """Rendered section 1/8 man pages of one package (cached as json)."""
    deb = download(pkg)
    if deb is None:
        return []
    cached = CACHE / "rendered" / (deb.stem + ".json")
    if cached.exists():
        return json.loads(cached.read_text())
    version = deb.stem.split("_")[1]
    docs = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        pages = []
        for p in sorted(Path(tmp).rglob("*")):
            m = _MANDIR.search(p.as_posix())
            if m and p.is_file() and not p.is_symlink() and "/man/" in p.as_posix() and "/share/man/man" in p.as_posix():
                pages.append((p, m.group(2), m.group(1)))
        for (p, tool, section) in pages:
            text = render(p)
            if len(text.split()) < 20:
                continue
            loc = f"deb://{pkg}/{version}/man{section}/{tool}"
            docs.append({"id": stable_id("manpages", loc), "text": text, "source": "manpages", "url": loc,
                         "metadata": {"tool": tool, "section": section, "package": pkg, "version": version,
                                      "title": f"{tool}({section})", "license": "see package copyright"}})
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(docs))
    return docs


def build_corpus(out_dir: str | Path, packages: list[str] = SMALL, per_shard: int = 400) -> dict:
    """Write the rendered pages of `packages` as curated shards into out_dir. Returns a summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(2) as pool:
        per_pkg = list(pool.map(package_docs, packages))
    docs = [d for ds in per_pkg for d in ds]
    seen, uniq = set(), []
    for d in docs:
        if d["id"] not in seen:
            seen.add(d["id"])
            uniq.append(d)
    for i in range(0, max(len(uniq), 1), per_shard):
        with ShardWriter(out / f"{i // per_shard:05d}.jsonl.gz") as w:
            w.write_all(uniq[i:i + per_shard])
    return {"docs": len(uniq), "packages": sum(1 for ds in per_pkg if ds)}


if __name__ == "__main__":
    import sys

    pk = MANY if len(sys.argv) > 2 and sys.argv[2] == "many" else SMALL
    print(build_corpus(sys.argv[1], pk))
