"""Run untrusted shell commands (model outputs, benchmark references) in an isolated sandbox.

Isolation comes from the kernel, not from inspecting the command text: every command runs under
bubblewrap (Debian package ``bubblewrap``) in fresh user, mount, PID, network, IPC, UTS and cgroup
namespaces:

- **no network**: an own network namespace holding only a loopback interface, so neither the
  host's 127.0.0.1 services nor any outside address is reachable;
- **read-only system**: ``/usr`` (and the merged-/usr links ``/bin``, ``/lib`` ...) bound
  read-only; from ``/etc`` only what programs need to start (dynamic linker cache, alternatives,
  time zone) plus a generated ``passwd``/``group``/``hosts``; ``/root``, ``/home``, ``/etc/shadow``,
  ``/var``, ``/sys``, the host's ``/tmp`` and ``/proc`` simply do not exist inside;
- **a fresh scratch directory**: ``/scratch`` (the working directory and ``$HOME``) and ``/tmp``
  are new size-limited tmpfs mounts, gone when the command ends; the task's optional ``setup``
  shell commands run first, in the same sandbox, to seed the scratch directory;
- **no privileges**: when the evaluator runs as root it drops to ``nobody`` on the host before
  starting bubblewrap; inside, the process has no capabilities and may not create namespaces;
- **limits**: CPU seconds, address space, file size, open files and process count (setrlimit,
  inherited by everything inside), a cap on captured output, and a wall-clock timeout after which
  the whole sandbox is killed (killing bubblewrap tears down the PID namespace with every process
  in it; ``--die-with-parent`` covers the evaluator itself dying).

A command whose program is not installed (``command not found``, exit status 126/127) is reported
with status ``not_executable``; nothing a command does inside is raised as an exception here.
"""

from __future__ import annotations

import os
import resource
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_UID = 1000  # the user id seen inside (mapped onto the unprivileged host user)
NOBODY = 65534

# What /etc holds inside: enough for the dynamic linker, `alternatives` links (awk, editor ...),
# time zone and libmagic; never credentials or host configuration.
ETC_ALLOW = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone",
             "magic", "magic.mime", "mime.types", "nsswitch.conf", "protocols", "services",
             "inputrc", "bash.bashrc", "profile")

SETUP_FAILED = "minisigma-sandbox: setup failed"
TOOL_MISSING = "minisigma-sandbox: tool not installed"

# The driver runs inside the sandbox: setup (output discarded), the optional tool check, then the
# command itself. Commands travel in environment variables, so no quoting is ever needed.
DRIVER = r"""
if [ -n "$MS_SETUP" ]; then
  ( eval "$MS_SETUP" ) </dev/null >/dev/null 2>&1 || { echo "%s (exit $?)" >&2; exit 125; }
fi
if [ -n "$MS_TOOL" ] && ! command -v -- "$MS_TOOL" >/dev/null 2>&1; then
  echo "%s: $MS_TOOL" >&2; exit 127
fi
c=$MS_CMD; unset MS_SETUP MS_CMD MS_TOOL
exec /bin/bash -c "$c" </dev/null
""" % (SETUP_FAILED, TOOL_MISSING)


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces on this machine."""


@dataclass
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_bytes: int = 1 << 30  # address space per process
    output_bytes: int = 64 << 10  # captured stdout + stderr; more kills the sandbox
    processes: int = 64
    file_bytes: int = 16 << 20  # largest file a command may write
    scratch_bytes: int = 32 << 20  # size of the /scratch tmpfs (and of /tmp)
    open_files: int = 256


@dataclass
class Result:
    status: str  # ok | error | not_executable | timeout | output_limit | killed | empty | setup_failed | sandbox_error
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float
    truncated: bool = False
    signal: int | None = None

    def to_dict(self) -> dict:
        return {"status": self.status, "exit_code": self.exit_code, "stdout": self.stdout,
                "stderr": self.stderr, "seconds": round(self.seconds, 3), "truncated": self.truncated,
                "signal": self.signal}


@dataclass
class Sandbox:
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        self.bwrap = shutil.which("bwrap")
        if self.bwrap is None:
            raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap); "
                                     "commands cannot be executed safely without it")
        self._drop_to_nobody = os.geteuid() == 0
        self._etc = Path(tempfile.mkdtemp(prefix="minisigma-sandbox-etc-"))
        self._write_etc()

    # ---------------------------------------------------------------- set-up
    def _write_etc(self) -> None:
        files = {
            "passwd": f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
                      f"user:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/scratch:/bin/bash\n"
                      f"nobody:x:{NOBODY}:{NOBODY}:nobody:/nonexistent:/usr/sbin/nologin\n",
            "group": f"root:x:0:\nuser:x:{SANDBOX_UID}:\nnogroup:x:{NOBODY}:\n",
            "hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost\n",
            "hostname": "sandbox\n",
        }
        for name, text in files.items():
            (self._etc / name).write_text(text)
            (self._etc / name).chmod(0o644)
        self._etc.chmod(0o755)

    def close(self) -> None:
        shutil.rmtree(self._etc, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def argv(self) -> list[str]:
        """The bubblewrap command line (without the program to run)."""
        lim = self.limits
        a = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns",
             "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
             "--die-with-parent", "--new-session", "--hostname", "sandbox",
             "--ro-bind", "/usr", "/usr"]
        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            p = Path("/") / top
            if p.is_symlink():
                a += ["--symlink", os.readlink(p), f"/{top}"]
            elif p.is_dir():
                a += ["--ro-bind", str(p), f"/{top}"]
        for name in ETC_ALLOW:
            if (Path("/etc") / name).exists():
                a += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        for name in ("passwd", "group", "hosts", "hostname"):
            a += ["--ro-bind", str(self._etc / name), f"/etc/{name}"]
        a += ["--proc", "/proc", "--dev", "/dev",
              "--size", str(lim.scratch_bytes), "--tmpfs", "/tmp",
              "--size", str(lim.scratch_bytes), "--tmpfs", "/dev/shm",
              "--size", str(lim.scratch_bytes), "--tmpfs", "/scratch",
              "--chdir", "/scratch", "--clearenv",
              "--setenv", "PATH", SANDBOX_PATH, "--setenv", "HOME", "/scratch",
              "--setenv", "USER", "user", "--setenv", "LANG", "C.UTF-8", "--setenv", "TERM", "dumb",
              "--setenv", "TMPDIR", "/tmp"]
        return a

    def _preexec(self) -> None:
        # Runs in the child between fork and exec: limits first (as root they can still be raised),
        # then drop root for good. Everything inside the sandbox inherits these limits.
        lim = self.limits
        resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_bytes, lim.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_bytes, lim.file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim.open_files, lim.open_files))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim.processes, lim.processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if self._drop_to_nobody:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)

    # ---------------------------------------------------------------- running
    def run(self, command: str, setup: str | None = None, tool: str | None = None) -> Result:
        """Run `command` with bash in a fresh sandbox, after `setup`; never raises for what it does.

        `tool`, when given, is checked first: if no such program exists inside, the result is
        ``not_executable`` without running anything.
        """
        if not command.strip():
            return Result("empty", None, "", "", 0.0)
        argv = self.argv() + ["--setenv", "MS_CMD", command, "--setenv", "MS_SETUP", setup or "",
                              "--setenv", "MS_TOOL", tool or "", "--", "/bin/bash", "-c", DRIVER]
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd="/", start_new_session=True,
                                    preexec_fn=self._preexec, close_fds=True,
                                    # bubblewrap itself is PID 1 inside and its /proc/1/environ is
                                    # readable there: it must not carry the evaluator's environment.
                                    env={"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"})
        except OSError as e:
            return Result("sandbox_error", None, "", f"cannot start bubblewrap: {e}", 0.0)
        out, err, why = self._collect(proc, t0)
        seconds = time.monotonic() - t0
        stdout = bytes(out).decode("utf-8", "replace")
        stderr = bytes(err).decode("utf-8", "replace")
        code = proc.returncode
        sig = -code if code is not None and code < 0 else None
        if why == "timeout":
            return Result("timeout", None, stdout, stderr, seconds, signal=signal.SIGKILL)
        if why == "output_limit":
            return Result("output_limit", None, stdout, stderr, seconds, truncated=True, signal=signal.SIGKILL)
        return self._classify(code, sig, stdout, stderr, seconds)

    def _collect(self, proc: subprocess.Popen, t0: float) -> tuple[bytearray, bytearray, str | None]:
        """Read both pipes until EOF, the output cap or the deadline; kill the sandbox on the latter two."""
        lim = self.limits
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        bufs = {out_fd: bytearray(), err_fd: bytearray()}
        sel = selectors.DefaultSelector()
        for f in (proc.stdout, proc.stderr):
            sel.register(f, selectors.EVENT_READ)
        deadline = t0 + lim.wall_seconds
        why = None
        open_streams = 2
        try:
            while open_streams:
                left = deadline - time.monotonic()
                if left <= 0:
                    why = "timeout"
                    break
                for key, _ in sel.select(timeout=min(left, 0.5)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        open_streams -= 1
                        continue
                    buf = bufs[key.fd]
                    room = lim.output_bytes - sum(len(b) for b in bufs.values())
                    buf += chunk[:max(room, 0)]
                    if len(chunk) > room:
                        why = "output_limit"
                        break
                if why:
                    break
            if why:
                self._kill(proc)
            else:
                left = max(deadline - time.monotonic(), 0.1)
                try:
                    proc.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    why = "timeout"
                    self._kill(proc)
        finally:
            sel.close()
            proc.stdout.close()
            proc.stderr.close()
        return bufs[out_fd], bufs[err_fd], why

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        # bubblewrap leads its own process group; killing it kills (--die-with-parent) the sandbox's
        # PID 1, and the kernel then kills every process left in that PID namespace. That teardown
        # is asynchronous: wait until the namespace's init is gone, so that a fork bomb's processes
        # no longer count against the next sandbox's process limit.
        inits = _children(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid, ns) for pid, ns in inits) and time.monotonic() < deadline:
            time.sleep(0.02)

    @staticmethod
    def _classify(code: int | None, sig: int | None, stdout: str, stderr: str, seconds: float) -> Result:
        if code == 125 and stderr.startswith(SETUP_FAILED):
            return Result("setup_failed", code, stdout, stderr, seconds)
        if code in (126, 127):
            return Result("not_executable", code, stdout, stderr, seconds)
        if sig is not None:
            return Result("killed", code, stdout, stderr, seconds, signal=sig)
        if code is not None and code >= 128 + 1 and code <= 128 + 64:
            # bash reports a child killed by a signal (e.g. SIGXCPU at the CPU limit) as 128+n
            return Result("killed", code, stdout, stderr, seconds, signal=code - 128)
        if code == 1 and stderr.startswith("bwrap:"):
            return Result("sandbox_error", code, stdout, stderr, seconds)
        return Result("ok" if code == 0 else "error", code, stdout, stderr, seconds)


def _children(pid: int) -> list[tuple[int, str]]:
    """Direct children of `pid` with their PID-namespace identity (to recognise them later)."""
    out = []
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        try:
            out.append((int(k), os.readlink(f"/proc/{k}/ns/pid")))
        except OSError:
            pass
    return out


def _alive(pid: int, ns: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == ns
    except OSError:
        return False


def check_available() -> None:
    """Raise SandboxUnavailable with the reason when sandboxed execution cannot work here
    (bubblewrap missing, or user namespaces not permitted, as in some containers)."""
    with Sandbox(Limits(wall_seconds=10)) as sb:
        r = sb.run("echo ok")
    if r.status != "ok" or r.stdout.strip() != "ok":
        raise SandboxUnavailable(f"bubblewrap cannot create a sandbox here: {r.stderr.strip() or r.status}")
