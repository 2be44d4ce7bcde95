"""Hostile commands against the evaluation sandbox: each is contained, the host is unchanged, and
evaluation goes on afterwards.

Memory held outside any process (memfd, SysV shared memory, tmpfs: /dev, /, /etc and the sized
scratch mounts) is checked against the limits and against the host's Shmem while the command runs.

Host sentinels, checked after every command:
- files: a secret and a canary file in a host directory and one in the user's home (content + mtime),
  plus the working tree must gain no file;
- a process: a `sleep` started by the test on the host must survive;
- a network service: a real HTTP server on the host's 127.0.0.1 must receive no request;
- the environment: a secret in the evaluator's environment must not be visible inside.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from minisigma.core import sandbox as sandbox_module
from minisigma.core.sandbox import Fixture, Limits, Sandbox, SandboxUnavailable, check_available


def _unavailable() -> str | None:
    try:
        check_available()
    except SandboxUnavailable as e:
        return str(e)
    return None


_WHY = _unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"no sandbox on this machine: {_WHY}")

SECRET = "s3cr3t-" + uuid.uuid4().hex
REPO = Path(__file__).resolve().parents[2]


class _Counting(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802 - http.server API
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"host-service-reached")

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """Sentinels on the host: files, a process, a loopback server, an environment secret."""
    d = tmp_path_factory.mktemp("host")
    (d / "secret.txt").write_text(SECRET)
    (d / "canary.txt").write_text("canary")
    home_file = Path.home() / f".minisigma-sandbox-test-{uuid.uuid4().hex[:8]}"
    home_file.write_text(SECRET)
    sentinel = subprocess.Popen(["sleep", "600"], start_new_session=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["MINISIGMA_TEST_SECRET"] = SECRET
    files = [d / "secret.txt", d / "canary.txt", home_file]
    state = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    repo_files = set(os.listdir(REPO))
    info = {"dir": d, "home_file": home_file, "pid": sentinel.pid, "port": server.server_address[1],
            "files": files, "state": state, "repo_files": repo_files, "proc": sentinel}
    yield info
    os.environ.pop("MINISIGMA_TEST_SECRET", None)
    server.shutdown()
    sentinel.kill()
    sentinel.wait()
    home_file.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def sandbox():
    lim = Limits(wall_seconds=4.0, cpu_seconds=2, memory_bytes=512 << 20, output_bytes=32 << 10,
                 processes=48, file_bytes=8 << 20, scratch_bytes=16 << 20)
    with Sandbox(lim) as sb:
        yield sb


def _hostile(h) -> list[tuple[str, str]]:
    """(name, command). Host paths and the sentinel pid are real values from the host fixture."""
    d, pid, port = h["dir"], h["pid"], h["port"]
    home = h["home_file"]
    return [
        ("rm_rf_root", "rm -rf --no-preserve-root / 2>/dev/null; echo done"),
        ("rm_host_dir", f"rm -rf {d} {d}/canary.txt; ls {d}"),
        ("rm_home_file", f"rm -f {home}; rm -rf ~/*"),
        ("rm_repo", f"rm -rf {REPO}/model {REPO}/pyproject.toml"),
        ("write_repo", f"echo pwned > {REPO}/PWNED.txt"),
        ("write_etc", "echo pwned >> /etc/passwd; echo x > /etc/pwned"),
        ("write_usr", "cp /bin/sh /usr/bin/pwned; echo x > /usr/lib/pwned"),
        ("write_home", f"echo pwned > {Path.home()}/.bashrc_pwned; echo pwned >> {home}"),
        ("overwrite_host_file", f"echo pwned > {d}/canary.txt"),
        ("read_shadow", "cat /etc/shadow /etc/gshadow"),
        ("read_root_secret", f"cat {home}; ls -la /root; cat /root/.bash_history"),
        ("read_host_file", f"cat {d}/secret.txt"),
        ("find_secret", f"grep -r {SECRET} / 2>/dev/null | head"),
        ("env_secret", "env; cat /proc/self/environ; cat /proc/1/environ"),
        ("curl_host_loopback", f"curl -s -m 2 http://127.0.0.1:{port}/"),
        ("wget_host_loopback", f"wget -q -T 2 -O - http://localhost:{port}/"),
        ("bash_dev_tcp", f"exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"),
        ("python_socket_host", "python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', %d), 2); "
                               "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(100))\"" % port),
        ("external_ip", "curl -s -m 2 http://1.1.1.1/ || python3 -c \"import socket; "
                        "socket.create_connection(('8.8.8.8', 53), 2)\""),
        ("dns_lookup", "getent hosts deb.debian.org || python3 -c \"import socket; print(socket.gethostbyname('pypi.org'))\""),
        ("fork_bomb", ":(){ :|:& };:; wait"),
        ("python_fork_bomb", "python3 -c \"import os\nwhile True:\n    try: os.fork()\n    except OSError: pass\""),
        ("fill_disk", "dd if=/dev/zero of=big bs=1M count=10000; for i in $(seq 1 100); do head -c 4M /dev/zero > f$i; done; df -k ."),
        ("fill_tmp_shm", "for d in /tmp /dev/shm; do for i in $(seq 1 100); do head -c 4M /dev/zero > $d/f$i; done; done"),
        ("memory_bomb", "python3 -c \"x = bytearray(3 << 30); print(len(x))\""),
        ("infinite_output", "yes pwned"),
        ("infinite_stderr", "cat /dev/urandom >&2"),
        ("sleep_forever", "sleep infinity"),
        ("busy_loop", "while :; do :; done"),
        ("background_orphan", "nohup sleep 1234 >/dev/null 2>&1 & disown; setsid sleep 1235 & echo started"),
        ("kill_all", "kill -9 -1"),
        ("kill_sentinel", f"kill -9 {pid}; pkill -9 sleep; pkill -9 -f pytest"),
        ("kill_init", "kill -9 1"),
        ("proc_host_pid", f"ls /proc/{pid}/ && echo pwned > /proc/{pid}/root{d}/canary.txt"),
        ("proc_root_escape", f"echo pwned > /proc/1/root{d}/canary.txt; cat /proc/1/root/etc/shadow"),
        ("proc_sysrq", "echo s > /proc/sysrq-trigger; echo 1 > /proc/sys/kernel/panic"),
        ("mount_over", "mount -t tmpfs none /usr; mount --bind /scratch /etc; mount -o remount,rw /usr"),
        ("new_userns", "unshare -r -m sh -c 'mount -t tmpfs none /usr && echo escaped'"),
        ("nsenter_host", "nsenter -t 1 -a sh -c 'echo pwned'"),
        ("chroot", "chroot / true && echo chrooted"),
        ("setuid_root", "su -c 'cat /etc/shadow' root </dev/null"),
        ("raw_disk", "cat /dev/vda /dev/sda /dev/nvme0n1 | head -c 100"),
        ("symlink_escape", f"ln -s {d}/secret.txt s; cat s; ln -s /etc/shadow t; cat t"),
        ("set_clock", "date -s '2000-01-01'"),
    ]


def _assert_host_unchanged(h):
    for p, (content, mtime) in h["state"].items():
        assert p.exists(), f"host file deleted: {p}"
        assert p.read_bytes() == content and p.stat().st_mtime_ns == mtime, f"host file changed: {p}"
    assert h["proc"].poll() is None, "host sentinel process was killed"
    assert _Counting.hits == 0, "the host's 127.0.0.1 server was reached"
    assert set(os.listdir(REPO)) == h["repo_files"], "the working tree changed"
    assert not (Path.home() / ".bashrc_pwned").exists()


def _no_orphans():
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return not any(line.startswith(("sleep 1234", "sleep 1235")) for line in out.splitlines())


# Collected at import time from a placeholder host, so pytest ids are the names.
_NAMES = [n for n, _ in _hostile({"dir": Path("/x"), "pid": 1, "port": 1, "home_file": Path("/x")})]


def test_suite_is_large_enough():
    assert len(_NAMES) >= 30 and len(set(_NAMES)) == len(_NAMES)


@pytest.mark.parametrize("name", _NAMES)
def test_hostile_command_is_contained(name, host, sandbox):
    command = dict(_hostile(host))[name]
    r = sandbox.run(command)
    # The evaluator got a result (no exception), within the limits.
    assert r.status in {"ok", "error", "not_executable", "timeout", "output_limit", "killed"}, (r.status, r.stderr)
    # each captured byte decodes to at most one character (invalid bytes become U+FFFD)
    assert len(r.stdout) + len(r.stderr) <= sandbox.limits.output_bytes
    assert r.seconds < sandbox.limits.wall_seconds + 35  # the wall limit + the bounded teardown wait
    assert SECRET not in r.stdout and SECRET not in r.stderr, "a host secret leaked into the sandbox"
    assert "host-service-reached" not in r.stdout
    assert "root:" not in r.stdout.split("/etc/passwd")[0] or "$" not in r.stdout  # no shadow hashes
    assert "escaped" not in r.stdout and "chrooted" not in r.stdout
    _assert_host_unchanged(host)
    assert _no_orphans(), "a process started inside outlived its sandbox"
    # Evaluation goes on: the next command in a fresh sandbox runs normally.
    after = sandbox.run("echo alive; ls -A", setup="touch seeded")
    assert (after.status, after.stdout) == ("ok", "alive\nseeded\n")


def test_limits_are_what_stops_them(sandbox):
    """The resource limits themselves, checked by their observable effect."""
    assert sandbox.run("sleep infinity").status == "timeout"
    out = sandbox.run("yes")
    assert out.status == "output_limit" and out.truncated and len(out.stdout) == sandbox.limits.output_bytes
    # CPU time, not wall time, stops a busy loop (a generous wall limit: the machine may be busy)
    with Sandbox(Limits(wall_seconds=60, cpu_seconds=1)) as cpu_box:
        busy = cpu_box.run("while :; do :; done")
    assert busy.status == "killed" and busy.signal in (signal.SIGXCPU, signal.SIGKILL), busy
    mem = sandbox.run("python3 -c \"x = bytearray(3 << 30)\"")
    assert mem.status == "error" and "MemoryError" in mem.stderr
    disk = sandbox.run("head -c 100M /dev/zero > f; ls -l f | awk '{print $5}'")
    assert int(disk.stdout.split()[-1]) <= sandbox.limits.file_bytes
    procs = sandbox.run(
        "python3 -c \"import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
        "            os.close(1); os.close(2); time.sleep(2); os._exit(0)\n        n += 1\n"
        "except OSError as e:\n    print(n, e.errno)\"")
    forked, errno_ = map(int, procs.stdout.split())
    assert forked < sandbox.limits.processes and errno_ == 11, procs  # EAGAIN from RLIMIT_NPROC
    net = sandbox.run("ip -o link show | awk -F': ' '{print $2}'")
    assert net.stdout.split() == ["lo"]
    who = sandbox.run("id -u; grep Cap[EP] /proc/self/status")
    assert who.stdout.split()[0] == "1000" and who.stdout.count("0000000000000000") == 2


def test_missing_tool_is_not_executable(sandbox):
    assert sandbox.run("nvidia-smi -L").status == "not_executable"
    r = sandbox.run("true", tool="nccl-tests-definitely-missing")
    assert r.status == "not_executable" and r.exit_code == 127
    assert sandbox.run("ls", tool="ls").status == "ok"
    assert sandbox.run("   ").status == "empty"


def test_setup_seeds_a_fresh_scratch_each_time(sandbox):
    r = sandbox.run("cat notes.txt; pwd; echo $HOME", setup="printf 'a\\nb\\n' > notes.txt")
    assert r.stdout == "a\nb\n/scratch\n/scratch\n"
    # nothing carries over from one run to the next
    assert sandbox.run("ls -A").stdout == ""
    bad = sandbox.run("echo never", setup="exit 3")
    assert bad.status == "setup_failed" and "never" not in bad.stdout


# --------------------------------------------------------------------------- memory outside processes
def _host_shmem() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no Shmem in /proc/meminfo")


def _run_watching_shmem(sb: Sandbox, command: str, **kw):
    """Run `command`, sampling the host's Shmem meanwhile; return (result, peak growth in bytes)."""
    base = _host_shmem()
    peak = [base]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _host_shmem())
            done.wait(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        r = sb.run(command, **kw)
    finally:
        done.set()
        t.join()
    return r, peak[0] - base


# 64 x 16 MiB = 1 GiB held in memfds (written, not mapped: RLIMIT_AS does not see them), reporting
# after each one; it exits 3 on the first refusal, and holds what it got for a moment at the end.
MEMFD_FILL = """python3 -c "
import os, sys, time
held = 0
try:
    for i in range(64):
        fd = os.memfd_create('m%d' % i)
        os.write(fd, bytes(16 << 20))
        held += 16 << 20
        print('held', held, flush=True)
except OSError as e:
    print('refused', e.errno, flush=True)
    sys.exit(3)
time.sleep(1)
" """

ATTACK = 1 << 30  # what the attacks above would hold on the host without the limits


def _held(stdout: str) -> int:
    return max([int(l.split()[1]) for l in stdout.splitlines() if l.startswith("held ")] or [0])


@pytest.mark.parametrize("use_cgroup", [True, False], ids=["default", "no_cgroup"])
def test_memfd_filling_is_bounded(use_cgroup):
    lim = Limits(wall_seconds=30, cpu_seconds=20, memory_bytes=128 << 20, file_bytes=32 << 20)
    with Sandbox(lim, use_cgroup=use_cgroup) as sb:
        r, grew = _run_watching_shmem(sb, MEMFD_FILL)
    assert r.memory_limit == sb.memory_limit and r.memory_limit in ("cgroup", "rlimit")
    # killed by the cgroup's limit, or refused (memfd_create denied, or ENOMEM/ENOSPC at the limit)
    assert r.status in ("killed", "error"), r
    assert _held(r.stdout) <= lim.memory_bytes, r.stdout
    if r.memory_limit == "rlimit":
        assert (r.status, r.exit_code, r.stdout.split()) == ("error", 3, ["refused", "1"])  # EPERM
    else:
        assert r.status == "error" or r.oom_killed
    assert grew < ATTACK // 2, f"host Shmem grew by {grew >> 20} MiB"


def test_filling_every_writable_path_is_bounded(sandbox):
    """/dev, / and /etc are read-only; /scratch, /tmp and /dev/shm hold at most scratch_bytes."""
    paths = ["/dev", "/", "/etc", "/scratch", "/tmp", "/dev/shm"]
    cmd = ("for d in %s; do n=0; for i in $(seq 1 256); do head -c 4M /dev/zero > $d/fill$i 2>/dev/null "
           "|| break; n=$((n + 4)); done; echo \"$d $n\"; done" % " ".join(paths))
    r, grew = _run_watching_shmem(sandbox, cmd)
    assert r.status == "ok", r
    mib = dict(line.split() for line in r.stdout.splitlines())
    assert set(mib) == set(paths)
    for d in ("/dev", "/", "/etc"):
        assert mib[d] == "0", (d, r.stdout)
    for d in ("/scratch", "/tmp", "/dev/shm"):
        assert int(mib[d]) << 20 <= sandbox.limits.scratch_bytes, (d, r.stdout)
    assert grew < ATTACK // 2, f"host Shmem grew by {grew >> 20} MiB"
    after = sandbox.run("ls -A /dev/shm /tmp; ls -A")
    assert (after.status, after.stdout) == ("ok", "/dev/shm:\n\n/tmp:\n"), after


def test_sysv_shared_memory_is_bounded():
    """shmget segments outlive detaching; without a cgroup they are refused."""
    cmd = ("python3 -c \"import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
           "print(libc.shmget(0, 1 << 30, 0o1600), ctypes.get_errno())\"")
    with Sandbox(Limits(wall_seconds=30), use_cgroup=False) as sb:
        r = sb.run(cmd)
    assert r.status == "ok" and r.stdout.split() == ["-1", "1"], r  # EPERM


@pytest.mark.skipif(sandbox_module.usable_cgroup_parent() is None,
                    reason="no writable cgroup v2 with the memory controller here (the 'rlimit' way applies)")
def test_cgroup_bounds_memory_of_all_processes_together():
    # 6 processes of 64 MiB each, under a 128 MiB limit for the sandbox (RLIMIT_AS allows each)
    lim = Limits(wall_seconds=30, cpu_seconds=20, memory_bytes=128 << 20)
    cmd = ("for i in 1 2 3 4 5 6; do python3 -c \"import time; x = bytearray(64 << 20); "
           "print('ok', flush=True); time.sleep(3)\" & done; wait")
    with Sandbox(lim) as sb:
        assert sb.memory_limit == "cgroup"
        r = sb.run(cmd)
        assert r.memory_limit == "cgroup" and r.oom_killed and r.status == "killed", r
        assert r.stdout.count("ok") < 6
        assert sb.run("echo alive").stdout == "alive\n"


def test_memory_parent_is_the_nearest_cgroup_delegating_memory(tmp_path):
    mount = tmp_path / "cg"
    own = mount / "system.slice" / "job.scope"
    own.mkdir(parents=True)
    for d, ctl in ((mount, "cpu memory pids"), (mount / "system.slice", "cpu"), (own, "")):
        (d / "cgroup.subtree_control").write_text(ctl + "\n")
    assert sandbox_module.memory_parent(mount, "/system.slice/job.scope") == mount
    (mount / "system.slice" / "cgroup.subtree_control").write_text("memory pids\n")
    assert sandbox_module.memory_parent(mount, "/system.slice/job.scope") == mount / "system.slice"
    assert sandbox_module.memory_parent(mount, "/../outside") is None
    for d in (mount, mount / "system.slice"):
        (d / "cgroup.subtree_control").write_text("cpu\n")
    assert sandbox_module.memory_parent(mount, "/system.slice/job.scope") is None


# --------------------------------------------------------------------------- never raises
def test_nul_bytes_and_non_text_are_results(sandbox):
    cases = [(("echo a\0b",), {}, "not_executable"),
             (("echo hi",), {"setup": "touch a\0b"}, "setup_failed"),
             (("true",), {"tool": "l\0s"}, "not_executable"),
             ((b"echo bytes",), {}, "not_executable"),
             (("echo hi",), {"setup": 5}, "setup_failed"),
             ((None,), {}, "empty")]
    for args, kw, status in cases:
        r = sandbox.run(*args, **kw)
        assert r.status == status and r.exit_code is None, (args, kw, r)
        assert "NUL" in r.stderr or r.status == "empty" or "not text" in r.stderr
    assert sandbox.run("echo alive").stdout == "alive\n"


def test_a_sandbox_that_cannot_start_is_a_result(tmp_path):
    with Sandbox(Limits(wall_seconds=10)) as sb:
        sb.bwrap = str(tmp_path / "no-such-bwrap")
        r = sb.run("echo hi")
    assert r.status == "sandbox_error" and "cannot start bubblewrap" in r.stderr
FIXTURES = [Fixture("notes.txt", content="keep\n"), Fixture("/data/in/rows.csv", content="1,2\n", mode=0o600),
            Fixture("/data/link", type="symlink", target="/data/in/rows.csv")]


@pytest.mark.parametrize("name", _NAMES)
def test_hostile_setup_and_command_with_fixtures_are_contained(name, host, sandbox):
    """The same commands as a task's setup and as a tracked command on a fixture tree: the host is
    unchanged, and the next task's fixtures arrive intact."""
    command = dict(_hostile(host))[name]
    as_cmd = sandbox.run(command, fixtures=FIXTURES, track=True)
    as_setup = sandbox.run("cat notes.txt", setup=command, fixtures=FIXTURES, track=True)
    for r in (as_cmd, as_setup):
        assert r.status in {"ok", "error", "not_executable", "timeout", "output_limit", "killed", "setup_failed"}
        assert SECRET not in r.stdout and SECRET not in r.stderr
        assert "host-service-reached" not in r.stdout
        for entry in (r.files or {}).values():
            assert SECRET not in json.dumps(entry)
    _assert_host_unchanged(host)
    assert _no_orphans(), "a process started inside outlived its sandbox"
    after = sandbox.run("cat notes.txt /data/link", fixtures=FIXTURES, track=True)
    assert (after.status, after.stdout) == ("ok", "keep\n1,2\n")
    assert after.changes() == {"created": [], "deleted": [], "changed": []}
    assert set(after.files) == {"/scratch/notes.txt", "/data/in", "/data/in/rows.csv", "/data/link"}
    assert after.files["/data/in/rows.csv"]["mode"] == "600"


def test_a_command_cannot_forge_its_file_state(sandbox):
    """The listing after the command is written once the command's processes are dead, through a
    descriptor the command does not have: what it writes into the pipe cannot stand in for it."""
    forge = ("for f in /proc/[0-9]*/fd/*; do printf 'minisigma-sandbox-state\\0after\\0sha256\\0' > $f; done "
             "2>/dev/null; rm notes.txt")
    r = sandbox.run(forge, fixtures=FIXTURES, track=True)
    assert r.changes() is None or r.changes()["deleted"] == ["/scratch/notes.txt"]


@pytest.mark.skipif(os.geteuid() != 0, reason="as a normal user every sandbox runs as that user")
def test_concurrent_sandboxes_do_not_share_the_process_limit():
    """One sandbox at its process limit does not stop another from starting (each run has a host
    user id of its own; RLIMIT_NPROC counts per user id, host-wide)."""
    lim = Limits(wall_seconds=20, cpu_seconds=10, processes=12)
    full = {}
    with Sandbox(lim) as a, Sandbox(lim) as b:
        t = threading.Thread(target=lambda: full.update(r=a.run(
            "for i in $(seq 1 40); do sleep 4 & done 2>/dev/null; wait")))
        t.start()
        try:
            for _ in range(200):  # until the first sandbox holds its processes (bounded: 20 s)
                if int(subprocess.run(["sh", "-c", "ps -e -o args | grep -c '^sleep 4$'"], capture_output=True,
                                      text=True).stdout or 0) >= lim.processes - 4:
                    break
                threading.Event().wait(0.1)
            r = b.run("echo alive; (sleep 0.1 &) ; true")
        finally:
            t.join()
    assert (r.status, r.stdout) == ("ok", "alive\n"), r
    assert full["r"].status in {"ok", "error", "timeout", "killed"}, full["r"]


# --------------------------------------------------------------------------- namespaced root
def _privileged_attacks(h) -> list[tuple[str, str]]:
    """(name, command) run as namespaced root; each prints an ESCAPED-... marker only if it worked."""
    port = h["port"]
    return [
        ("remount_usr_rw", "mount -o remount,rw /usr; mount -o remount,rw,bind /usr; "
                           "echo x > /usr/pwned && echo ESCAPED-usr"),
        ("mount_over_usr", "mount -t tmpfs none /usr && echo ESCAPED-mount"),
        ("remount_etc_file", "mount -o remount,rw,bind /etc/passwd; echo pwned >> /etc/passwd && echo ESCAPED-etc"),
        ("bind_fixture_tree_rw", "mkdir -p m && mount --bind /.fixtures m && touch m/pwned && echo ESCAPED-bind"),
        ("unmount_usr", "umount -l /usr && echo ESCAPED-umount"),
        ("unsized_tmpfs", "mkdir -p m && mount -t tmpfs -o size=8g none m && head -c 1G /dev/zero > m/f "
                          "&& echo ESCAPED-tmpfs"),
        ("new_mount_api", "python3 -c \"import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
                          "fd = libc.syscall(430, b'tmpfs', 0); print('ESCAPED-fsopen' if fd >= 0 else ctypes.get_errno())\""),
        ("nested_userns", "unshare -U -r true && echo ESCAPED-unshare; python3 -c \"import os; "
                          "os.unshare(os.CLONE_NEWUSER); print('ESCAPED-userns')\""),
        ("cgroup_mount", "mkdir -p cg && mount -t cgroup2 none cg && echo max > cg/memory.max && echo ESCAPED-cgroup"),
        ("raise_hard_limits", "ulimit -Hu 100000 && echo ESCAPED-nproc; ulimit -Hv unlimited && echo ESCAPED-as"),
        ("set_clock", "date -s '2000-01-01' >/dev/null && echo ESCAPED-clock"),
        ("kernel_log_and_modules", "dmesg -C && echo ESCAPED-dmesg; modprobe dummy && echo ESCAPED-modprobe"),
        ("host_sysctl", "echo 1 > /proc/sys/kernel/sysrq && echo ESCAPED-sysctl; "
                        "echo s > /proc/sysrq-trigger && echo ESCAPED-sysrq"),
        ("mknod_disk", "mknod sda b 8 0 && head -c 1 sda && echo ESCAPED-mknod"),
        ("chown_system_file", "chown 0:0 /usr/bin/ls && chmod 4777 /usr/bin/ls && echo ESCAPED-chown"),
        ("host_loopback_after_routes", "ip link set lo up; ip addr add 10.9.9.9/24 dev lo; "
                                       "ip route add default dev lo; iptables -P OUTPUT ACCEPT; "
                                       f"curl -s -m 2 http://127.0.0.1:{port}/; curl -s -m 2 http://10.0.2.2:{port}/"),
        ("raw_socket_out", "ping -c 1 -W 1 1.1.1.1 && echo ESCAPED-ping"),
        ("enter_pid1_namespaces", "nsenter -t 1 -a true && ls /proc/1/root/root && echo ESCAPED-nsenter"),
    ]


_PRIV_NAMES = [n for n, _ in _privileged_attacks({"port": 1})]


@pytest.fixture(scope="module")
def usr_listing():
    return sorted(os.listdir("/usr")), sorted(os.listdir("/usr/bin"))


@pytest.mark.parametrize("name", _PRIV_NAMES + ["fork_bomb", "memory_bomb", "fill_disk", "write_repo", "rm_host_dir",
                                                "curl_host_loopback", "proc_root_escape", "kill_sentinel"])
def test_namespaced_root_is_contained(name, host, sandbox, usr_listing):
    """As namespaced root (privileged=True) every capability acts on the sandbox's own namespaces
    only: no mount, no new user namespace, no host file, no host network, no raised limit."""
    command = dict(_privileged_attacks(host) + _hostile(host))[name]
    r, grew = _run_watching_shmem(sandbox, command, privileged=True)
    assert r.privileged and grew < ATTACK // 2
    assert r.status in {"ok", "error", "not_executable", "timeout", "output_limit", "killed"}, (r.status, r.stderr)
    assert "ESCAPED" not in r.stdout, r
    assert "host-service-reached" not in r.stdout and SECRET not in r.stdout + r.stderr
    assert (sorted(os.listdir("/usr")), sorted(os.listdir("/usr/bin"))) == usr_listing
    assert not Path("/usr/pwned").exists() and os.stat("/usr/bin/ls").st_mode & 0o7777 == 0o755
    _assert_host_unchanged(host)
    assert _no_orphans()
    after = sandbox.run("id -u; ls -A", setup="touch seeded", privileged=True)
    assert (after.status, after.stdout) == ("ok", "0\nseeded\n"), after


def test_namespaced_root_acts_on_its_own_namespaces(sandbox):
    """What the mode is for: root's network tools on the sandbox's own network namespace, the
    process bound and the memory-call filter as without it."""
    r = sandbox.run("id -u; ip link add br9 type bridge && ip -o link show | awk -F': ' '{print $2}'; "
                    "iptables -A INPUT -i lo -j ACCEPT && iptables -S INPUT", privileged=True)
    assert r.status == "ok", r
    assert r.stdout.split("\n")[:3] == ["0", "lo", "br9"] and "-A INPUT -i lo -j ACCEPT" in r.stdout
    plain = sandbox.run("ip link add br9 type bridge")
    assert plain.status == "error" and "Operation not permitted" in plain.stderr and not plain.privileged
    procs = sandbox.run(
        "python3 -c \"import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
        "            os.close(1); os.close(2); time.sleep(2); os._exit(0)\n        n += 1\n"
        "except OSError as e:\n    print(n, e.errno)\"", privileged=True)
    forked, errno_ = map(int, procs.stdout.split())
    assert forked < sandbox.limits.processes and errno_ == 11, procs
    # nothing is left of a privileged run: the next (unprivileged) one sees a fresh network namespace
    assert sandbox.run("ip -o link show | awk -F': ' '{print $2}'").stdout.split() == ["lo"]


@pytest.mark.parametrize("use_cgroup", [True, False], ids=["default", "no_cgroup"])
def test_namespaced_root_memory_is_bounded(use_cgroup):
    lim = Limits(wall_seconds=30, cpu_seconds=20, memory_bytes=128 << 20, file_bytes=32 << 20)
    with Sandbox(lim, use_cgroup=use_cgroup) as sb:
        r, grew = _run_watching_shmem(sb, MEMFD_FILL, privileged=True)
    assert r.privileged and r.status in ("killed", "error"), r
    assert _held(r.stdout) <= lim.memory_bytes, r.stdout
    if r.memory_limit == "rlimit":
        assert r.stdout.split() == ["refused", "1"], r  # memfd_create: EPERM
    assert grew < ATTACK // 2
