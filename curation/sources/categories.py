"""System-domain category labels from source metadata (weak labels for the domain classifier).

Every document of a source adapter gets `metadata.category`, one of CATEGORIES, decided from what
the source itself says about the document: arXiv categories (primary first), a venue's area (the
CCF manifest names a category per venue), Stack Exchange tags (the first tag with a known
category wins, tags in the question's order), or a blog's declared topic. When the metadata says
nothing system-specific, a small keyword rule over the title decides, else "other".

These labels are noisy on purpose: the refinement stage trains a classifier on them.
"""

from __future__ import annotations

import re
from typing import Iterable

CATEGORIES = (
    "os_kernel",
    "networking",
    "storage_databases",
    "distributed_cloud",
    "gpu_accelerators",
    "security",
    "devops_tooling",
    "languages_compilers",
    "other",
)

# arXiv computer-science categories (https://arxiv.org/category_taxonomy) -> our categories.
ARXIV = {
    "cs.OS": "os_kernel",
    "cs.NI": "networking",
    "cs.DB": "storage_databases",
    "cs.IR": "storage_databases",
    "cs.DC": "distributed_cloud",
    "cs.MA": "distributed_cloud",
    "cs.AR": "gpu_accelerators",
    "cs.ET": "gpu_accelerators",
    "cs.CR": "security",
    "cs.SE": "devops_tooling",
    "cs.MS": "devops_tooling",
    "cs.PL": "languages_compilers",
    "cs.FL": "languages_compilers",
    "cs.LO": "languages_compilers",
    "cs.PF": "distributed_cloud",  # performance evaluation papers are mostly about systems at scale
    "eess.SY": "other",
}

# Stack Exchange tags -> categories. Tags are matched exactly, then by prefix ("cuda-" -> cuda).
TAGS = {
    # OS and kernel
    "linux": "os_kernel", "linux-kernel": "os_kernel", "kernel": "os_kernel", "systemd": "os_kernel",
    "process": "os_kernel", "scheduling": "os_kernel", "memory-management": "os_kernel", "mmap": "os_kernel",
    "filesystems": "os_kernel", "ext4": "os_kernel", "proc": "os_kernel", "signals": "os_kernel",
    "multithreading": "os_kernel", "pthreads": "os_kernel", "ubuntu": "os_kernel", "debian": "os_kernel",
    "centos": "os_kernel", "fedora": "os_kernel", "windows": "os_kernel", "macos": "os_kernel",
    "kernel-modules": "os_kernel", "boot": "os_kernel", "grub": "os_kernel", "drivers": "os_kernel",
    "performance": "os_kernel", "cpu": "os_kernel", "memory": "os_kernel", "perf": "os_kernel",
    # networking
    "networking": "networking", "tcp": "networking", "udp": "networking", "sockets": "networking",
    "iptables": "networking", "firewall": "networking", "dns": "networking", "routing": "networking",
    "nginx": "networking", "apache": "networking", "http": "networking", "ssh": "networking",
    "vpn": "networking", "wireguard": "networking", "ip": "networking", "ipv6": "networking",
    "network-interface": "networking", "load-balancing": "networking", "haproxy": "networking",
    # storage and databases
    "mysql": "storage_databases", "postgresql": "storage_databases", "sqlite": "storage_databases",
    "database": "storage_databases", "sql": "storage_databases", "redis": "storage_databases",
    "mongodb": "storage_databases", "storage": "storage_databases", "raid": "storage_databases",
    "zfs": "storage_databases", "lvm": "storage_databases", "nfs": "storage_databases",
    "hard-drive": "storage_databases", "ssd": "storage_databases", "backup": "storage_databases",
    # distributed systems and cloud
    "kubernetes": "distributed_cloud", "amazon-web-services": "distributed_cloud", "aws": "distributed_cloud",
    "google-cloud-platform": "distributed_cloud", "azure": "distributed_cloud", "hadoop": "distributed_cloud",
    "apache-spark": "distributed_cloud", "apache-kafka": "distributed_cloud", "mpi": "distributed_cloud",
    "slurm": "distributed_cloud", "distributed-computing": "distributed_cloud", "ray": "distributed_cloud",
    "virtualization": "distributed_cloud", "kvm": "distributed_cloud", "qemu": "distributed_cloud",
    "openstack": "distributed_cloud", "hpc": "distributed_cloud", "cluster": "distributed_cloud",
    # GPUs and accelerators
    "cuda": "gpu_accelerators", "nvidia": "gpu_accelerators", "gpu": "gpu_accelerators",
    "nvidia-smi": "gpu_accelerators", "opencl": "gpu_accelerators", "rocm": "gpu_accelerators",
    "nccl": "gpu_accelerators", "tensorrt": "gpu_accelerators", "fpga": "gpu_accelerators",
    "nvcc": "gpu_accelerators", "gpgpu": "gpu_accelerators", "cudnn": "gpu_accelerators",
    # security
    "security": "security", "ssl": "security", "tls": "security", "openssl": "security",
    "selinux": "security", "apparmor": "security", "encryption": "security", "authentication": "security",
    "permissions": "security", "sudo": "security", "gpg": "security", "certificates": "security",
    # DevOps and tooling
    "docker": "devops_tooling", "docker-compose": "devops_tooling", "bash": "devops_tooling",
    "shell": "devops_tooling", "shell-script": "devops_tooling", "git": "devops_tooling",
    "ansible": "devops_tooling", "terraform": "devops_tooling", "jenkins": "devops_tooling",
    "cron": "devops_tooling", "sed": "devops_tooling", "awk": "devops_tooling", "grep": "devops_tooling",
    "vim": "devops_tooling", "tmux": "devops_tooling", "make": "devops_tooling", "cmake": "devops_tooling",
    "command-line": "devops_tooling", "zsh": "devops_tooling", "powershell": "devops_tooling",
    "github-actions": "devops_tooling", "continuous-integration": "devops_tooling", "rsync": "devops_tooling",
    # programming languages and compilers
    "c": "languages_compilers", "c++": "languages_compilers", "rust": "languages_compilers",
    "gcc": "languages_compilers", "clang": "languages_compilers", "llvm": "languages_compilers",
    "compiler-construction": "languages_compilers", "assembly": "languages_compilers",
    "x86": "languages_compilers", "go": "languages_compilers", "linker": "languages_compilers",
    "compiler-optimization": "languages_compilers", "python": "languages_compilers",
    "java": "languages_compilers", "jvm": "languages_compilers",
}

# Title keywords when the metadata is silent (word-boundary, case-insensitive), in priority order.
KEYWORDS = [
    ("gpu_accelerators", r"gpus?|cuda|accelerators?|fpgas?|tpus?|nvidia|tensor cores?"),
    ("os_kernel", r"kernels?|operating systems?|linux|scheduler|virtual memory|page cache|syscalls?|file ?systems?"),
    ("networking", r"networks?|networking|tcp|rdma|congestion|routing|packets?|wireless|5g|sdn"),
    ("storage_databases", r"storage|databases?|sql|key-value|ssds?|flash|transactions?|query|index(es|ing)?"),
    ("distributed_cloud", r"distributed|cloud|serverless|consensus|raft|paxos|datacenters?|clusters?|microservices?"),
    ("security", r"security|attacks?|vulnerabilit(y|ies)|malware|privacy|encryption|side[- ]channel|fuzz(ing)?"),
    ("languages_compilers", r"compilers?|programming languages?|type systems?|llvm|jit|static analysis"),
    ("devops_tooling", r"devops|continuous integration|deployment|containers?|docker|kubernetes|configuration"),
]
_KEYWORD_RES = [(cat, re.compile(rf"\b({pat})\b", re.I)) for cat, pat in KEYWORDS]


def from_keywords(text: str) -> str:
    for cat, rx in _KEYWORD_RES:
        if rx.search(text or ""):
            return cat
    return "other"


def from_arxiv(categories: Iterable[str], title: str = "") -> str:
    """Primary category first; the first one we map decides; else the title's keywords."""
    for c in categories:
        cat = ARXIV.get(c)
        if cat and cat != "other":
            return cat
    return from_keywords(title)


def from_tags(tags: Iterable[str], title: str = "") -> str:
    tags = [t.lower() for t in tags]
    for t in tags:
        if t in TAGS:
            return TAGS[t]
    for t in tags:  # "cuda-streams" -> cuda, "docker-networking" -> docker
        head = t.split("-")[0]
        if head in TAGS:
            return TAGS[head]
    return from_keywords(title)


def from_venue(venue_category: str | None, title: str = "") -> str:
    """A venue's declared category; a general venue ('other') falls back to the title's keywords."""
    if venue_category and venue_category != "other":
        return venue_category
    return from_keywords(title)


def check(category: str) -> str:
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r} (one of {', '.join(CATEGORIES)})")
    return category
