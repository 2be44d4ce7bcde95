"""Run untrusted shell commands (model outputs, benchmark references) in an isolated sandbox.

Isolation comes from the kernel, not from inspecting the command text: every command runs under
bubblewrap (Debian package ``bubblewrap``) in fresh user, mount, PID, network, IPC, UTS and cgroup
namespaces:

- **no network**: an own network namespace holding only a loopback interface, so neither the
  host's 127.0.0.1 services nor any outside address is reachable;
- **read-only system**: ``/usr`` (and the merged-/usr links ``/bin``, ``/lib`` ...) bound
  read-only; from ``/etc`` only what programs need to start (dynamic linker cache, alternatives,
  time zone, LVM's packaged configuration) plus a generated ``passwd``/``group``/``hosts``; ``/root``, ``/home``, ``/etc/shadow``,
  ``/var``, ``/sys``, the host's ``/tmp`` and ``/proc`` simply do not exist inside;
- **a fresh scratch directory**: ``/scratch`` (the working directory and ``$HOME``), ``/tmp`` and
  ``/run`` are new size-limited tmpfs mounts, gone when the command ends; the task's optional ``setup``
  shell commands run first, in the same sandbox, to seed the scratch directory;
- **task fixtures** (`Fixture`): files, directories and symlinks with their contents and
  permissions, at the paths a task names (relative ones in ``/scratch``, absolute ones under a
  top-level directory such as ``/data`` or ``/var``, never the system's ``/usr``, ``/etc``,
  ``/proc`` ...). The evaluator writes them to a per-task host tree, bound read-only at
  ``/.fixtures``; the driver copies that tree into the writable, size-limited tmpfs mounted at
  each named top-level directory (``/scratch``, ``/tmp`` and ``/run`` are already ones), then sets the
  declared modes, so nothing a command does to them reaches the host tree. Every fixture carries
  the same modification time (`FIXTURE_MTIME`, 2024-01-01 00:00 UTC), so ``ls -l``, ``find
  -newer`` or an archive of them print the same in every run;
- **file-system state** (``track=True``): after the command exits, every process left inside is
  killed and the driver lists the tracked trees (``/scratch`` and the fixtures' directories:
  type, mode, sha256 of each regular file, symlink targets) before and after the command into a
  pipe the command itself has no descriptor of; ``Result.files_before`` / ``Result.files`` hold
  them and ``changes()`` the created, deleted and changed paths;
- **no privileges**: when the evaluator runs as root it drops, before starting bubblewrap, to a
  host user id that no account has, drawn anew for each run (so that concurrent sandboxes do not
  share RLIMIT_NPROC's per-user count, and none is ``nobody``, which daemons share), and
  bubblewrap runs as that user (Debian's is not setuid; a setuid one refuses ``--cap-add`` to
  unprivileged callers, so a privileged run there ends as ``sandbox_error``). Inside, by default,
  the command is user 1000 with no capabilities and may not create namespaces (``--disable-userns``);
- **namespaced root** (``run(..., privileged=True)``, a task's explicit opt-in): the command is
  user 0 with every capability, *in its own user namespace only* (rootless-container style: that
  uid 0 is the unprivileged host user id above). The capabilities act on the namespaces the
  sandbox owns and nothing else: it may add links, addresses, routes, qdiscs and firewall rules to
  its own network namespace (still only a loopback, no route out), set its own host name, read
  its own sockets; the kernel checks everything that reaches the host (modules, the clock, the
  kernel log, raw devices, sysctls outside its network namespace, raising a hard rlimit, another
  user's files: the host's files belong to ids unmapped in the namespace, so the capabilities do
  not apply to them) against the initial user namespace, where it has nothing. What a namespace
  owner could otherwise still do is closed by a seccomp filter (libseccomp, through
  ``pyseccomp``): every mount-family call (``mount``, ``umount2``, ``pivot_root``, the new mount
  API: ``fsopen`` ... ``mount_setattr``) and any new user namespace (``unshare``/``clone`` with
  ``CLONE_NEWUSER``; ``clone3``, whose flags a filter cannot read, fails with ENOSYS so libc
  falls back to ``clone``) fail, so the read-only binds stay read-only, nothing is mounted over
  ``/usr`` or onto the host's trees, and no unsized tmpfs can be made. All other bounds below
  apply unchanged; ``Result.privileged`` records the mode;
- **limits**: CPU seconds, address space, file size, open files and process count (setrlimit,
  inherited by everything inside), a cap on captured output, and a wall-clock timeout after which
  the whole sandbox is killed (killing bubblewrap tears down the PID namespace with every process
  in it; ``--die-with-parent`` covers the evaluator itself dying).

**Memory a command can hold.** Memory outside a process's address space (tmpfs pages, a
``memfd``, SysV shared memory) survives RLIMIT_AS, so it is bounded separately, in one of two ways;
``Sandbox.memory_limit`` says which applied and every ``Result`` records it:

- ``"cgroup"``: where the kernel offers a writable cgroup v2 hierarchy with the memory controller
  (we are root, or the cgroup is delegated to us), each run gets its own child cgroup with
  ``memory.max = memory_bytes`` (anonymous memory, page cache, tmpfs/memfd/shm pages and kernel
  memory of every process inside, together), ``memory.swap.max = 0`` and ``memory.oom.group = 1``
  (an OOM kills the whole sandbox; ``Result.oom_killed`` says so). The cgroup is killed and removed
  after the run.
- ``"rlimit"``: otherwise (no cgroup v2 memory controller, e.g. a cgroup v1 host, or a container
  that delegates none). Then RLIMIT_AS bounds each process, a seccomp filter (libseccomp, through
  ``pyseccomp``) makes ``memfd_create``, ``memfd_secret`` and ``shmget`` fail with EPERM, and the
  mounts below bound the rest. The total is at most ``processes x memory_bytes`` of address space
  plus the tmpfs sizes. Without libseccomp and without a cgroup, no sandbox is made
  (SandboxUnavailable), since memfd would then be unbounded.

In both modes every writable mount is a sized tmpfs (``/scratch``, ``/tmp``, ``/run``, ``/dev/shm``:
``scratch_bytes`` each, and a task's fixture directories, sized alike) and the rest of the tree
(bubblewrap's own root tmpfs holding ``/etc``, and the ``/dev`` tmpfs) is remounted read-only, so
nothing else can be filled; a privileged run can mount nothing new (the seccomp filter above) and
its filter denies the unbounded-memory calls too where no cgroup bounds memory.

A command whose program is not installed (``command not found``, exit status 126/127) is reported
with status ``not_executable``; nothing a command does inside is raised as an exception here, and
neither is a command that cannot be run at all (a NUL byte: ``not_executable``, or in the setup:
``setup_failed``) or a sandbox that fails to start (``sandbox_error``).
"""

from __future__ import annotations

import base64
import errno
import os
import re
import resource
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from minisigma.core.errors import UserError

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_UID = 1000  # the user id seen inside (mapped onto the unprivileged host user)
NOBODY = 65534
# As root, each run drops to a host user id of its own, drawn from this range (no account has
# one): RLIMIT_NPROC counts the processes of a user id host-wide, so sandboxes sharing one user
# (nobody) would exhaust each other's process limit when several run at once.
RUN_UID_BASE, RUN_UID_SPAN = 1 << 30, 1 << 29

# What /etc holds inside: enough for the dynamic linker, `alternatives` links (awk, editor ...),
# time zone and libmagic; never credentials or host configuration.
ETC_ALLOW = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone",
             "magic", "magic.mime", "mime.types", "nsswitch.conf", "protocols", "services",
             "inputrc", "bash.bashrc", "profile", "lvm")  # lvm: LVM's packaged lvm.conf (else it cannot start)

# Denied (EPERM) by the seccomp filter when no cgroup bounds the sandbox's memory: the ways to hold
# memory that neither RLIMIT_AS nor a tmpfs size limits.
UNBOUNDED_MEMORY_SYSCALLS = ("memfd_create", "memfd_secret", "shmget")
# Denied (EPERM) to a privileged (namespaced-root) run: whatever changes the mount tree, so the
# read-only binds stay read-only and no unsized file system appears (module docstring).
MOUNT_SYSCALLS = ("mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig",
                  "fsmount", "fspick", "mount_setattr")
CLONE_NEWUSER = 0x10000000

SETUP_FAILED = "minisigma-sandbox: setup failed"
TOOL_MISSING = "minisigma-sandbox: tool not installed"
STATE_MARK = "minisigma-sandbox-state"
STATE_BYTES = 1 << 20  # the largest file-system listing kept (more: the state is unknown)

# The driver runs inside the sandbox: setup (output discarded), the optional tool check, then the
# command itself. Commands travel in environment variables, so no quoting is ever needed.
DRIVER = r"""
if [ -n "$MS_FIXTURE_ROOTS" ]; then
  for r in $MS_FIXTURE_ROOTS; do
    cp -a --no-preserve=ownership "/.fixtures/$r/." "/$r/" 2>/dev/null || { echo "%s (fixtures: /$r)" >&2; exit 125; }
  done
  while IFS= read -r -d '' m && IFS= read -r -d '' f; do
    chmod -- "$m" "$f" 2>/dev/null || { echo "%s (fixture mode $m $f)" >&2; exit 125; }
  done < /.fixtures/.modes
fi
if [ -n "$MS_SETUP" ]; then
  ( eval "$MS_SETUP" ) </dev/null >/dev/null 2>&1 || { echo "%s (exit $?)" >&2; exit 125; }
fi
if [ -n "$MS_TOOL" ] && ! command -v -- "$MS_TOOL" >/dev/null 2>&1; then
  echo "%s: $MS_TOOL" >&2; exit 127
fi
c=$MS_CMD; unset MS_SETUP MS_CMD MS_TOOL MS_FIXTURE_ROOTS
if [ -n "$MS_STATE_FD" ]; then
  snap() {
    {
      printf '%%s\0%%s\0' "$MS_MARK" "$1"
      for r in $MS_TRACK; do /usr/bin/find "/$r" -mindepth 1 -xdev -printf '%%y\0%%m\0%%p\0%%l\0'; done
      printf 'sha256\0'
      for r in $MS_TRACK; do
        /usr/bin/find "/$r" -mindepth 1 -xdev -type f -print0 | /usr/bin/xargs -0 -r /usr/bin/sha256sum -z --
      done
    } 2>/dev/null >&"$MS_STATE_FD"
  }
  snap before
  ( eval "exec $MS_STATE_FD>&-"; unset MS_STATE_FD MS_TRACK MS_MARK; exec /bin/bash -c "$c" ) </dev/null
  rc=$?
  # whatever the command left running must not touch the tree while (or after) it is listed
  kill -KILL -1 2>/dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    n=0; for q in /proc/[0-9]*; do case ${q#/proc/} in 1|$$) ;; *) n=1 ;; esac; done
    [ $n = 0 ] && break; sleep 0.05
  done
  snap after
  exit $rc
fi
exec /bin/bash -c "$c" </dev/null
""" % (SETUP_FAILED, SETUP_FAILED, SETUP_FAILED, TOOL_MISSING)


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces on this machine."""


@dataclass
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    # address space per process; with a cgroup (see the module docstring) also all memory the
    # sandbox holds together, tmpfs/memfd/shm included
    memory_bytes: int = 1 << 30
    output_bytes: int = 64 << 10  # captured stdout + stderr; more kills the sandbox
    processes: int = 64
    file_bytes: int = 16 << 20  # largest file a command may write
    scratch_bytes: int = 32 << 20  # size of the /scratch tmpfs (and of /tmp and /dev/shm)
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
    memory_limit: str | None = None  # "cgroup" or "rlimit": how memory was bounded (module docstring)
    oom_killed: bool = False  # the cgroup's memory limit killed the sandbox
    # track=True: the tracked trees before and after the command, {path: entry} (`parse_state`);
    # None when not tracked or when the listing did not come back (timeout, killed driver)
    files_before: dict | None = None
    files: dict | None = None
    privileged: bool = False  # ran as namespaced root (module docstring)

    def to_dict(self) -> dict:
        return {"status": self.status, "exit_code": self.exit_code, "stdout": self.stdout,
                "stderr": self.stderr, "seconds": round(self.seconds, 3), "truncated": self.truncated,
                "signal": self.signal, "memory_limit": self.memory_limit, "oom_killed": self.oom_killed,
                "privileged": self.privileged, "changes": self.changes()}

    def changes(self) -> dict | None:
        """What the command did to the tracked trees: created, deleted and changed paths."""
        return state_changes(self.files_before, self.files)


@dataclass
class Sandbox:
    limits: Limits = field(default_factory=Limits)
    # False: bound memory without a cgroup even where one is offered (the "rlimit" way)
    use_cgroup: bool = True

    def __post_init__(self):
        self.bwrap = shutil.which("bwrap")
        if self.bwrap is None:
            raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap); "
                                     "commands cannot be executed safely without it")
        self._drop_to_nobody = os.geteuid() == 0
        self._cgroup_parent = usable_cgroup_parent() if self.use_cgroup else None
        self._seccomp = None if self._cgroup_parent is not None else _seccomp_filter(memory=True)
        self._seccomp_root: bytes | None = None  # compiled on the first privileged run
        self._etc = Path(tempfile.mkdtemp(prefix="minisigma-sandbox-etc-"))
        self._write_etc()

    @property
    def memory_limit(self) -> str:
        """How the memory outside processes' address spaces is bounded: "cgroup" or "rlimit"."""
        return "cgroup" if self._cgroup_parent is not None else "rlimit"

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

    def argv(self, mounts: Sequence[str] = (), privileged: bool = False) -> list[str]:
        """The bubblewrap command line (without the program to run); `mounts`: a task's fixture
        mounts (`FixtureTree.mounts`), placed after the sandbox's own writable mounts.
        `privileged`: uid 0 with every capability in the sandbox's own user namespace; the caller
        adds the seccomp filter that goes with it (`_run`)."""
        lim = self.limits
        a = [self.bwrap, "--unshare-all", "--unshare-user"]
        if privileged:
            a += ["--uid", "0", "--gid", "0", "--cap-add", "ALL"]
        else:
            a += ["--disable-userns", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        a += ["--die-with-parent", "--new-session", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
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
        # The writable places, each a tmpfs of bounded size ...
        a += ["--proc", "/proc", "--dev", "/dev",
              "--size", str(lim.scratch_bytes), "--tmpfs", "/tmp",
              "--size", str(lim.scratch_bytes), "--tmpfs", "/run",
              "--size", str(lim.scratch_bytes), "--tmpfs", "/dev/shm",
              "--size", str(lim.scratch_bytes), "--tmpfs", "/scratch"]
        a += list(mounts)  # a task's fixture mounts (new top-level paths: before the remount below)
        # ... and none else: bubblewrap's root and /dev are tmpfs mounts without a size (its
        # options cannot size them), so they are made read-only (each remount affects only that
        # mount point, not the ones inside it). This stays the last mount operation: anything
        # mounted at a new top-level path must come before it.
        a += ["--remount-ro", "/dev", "--remount-ro", "/"]
        a += ["--chdir", "/scratch", "--clearenv",
              "--setenv", "PATH", SANDBOX_PATH, "--setenv", "HOME", "/scratch",
              "--setenv", "USER", "root" if privileged else "user", "--setenv", "LANG", "C.UTF-8", "--setenv", "TERM", "dumb",
              "--setenv", "TMPDIR", "/tmp"]
        return a

    def _preexec(self, cgroup: "_Cgroup | None", run_uid: int) -> None:
        # Runs in the child between fork and exec: the cgroup and the limits first (as root they
        # can still be set), then drop root for good. Everything inside inherits all of them.
        if cgroup is not None:
            cgroup.enter()
        lim = self.limits
        resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_bytes, lim.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_bytes, lim.file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim.open_files, lim.open_files))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim.processes, lim.processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if self._drop_to_nobody:
            os.setgroups([])
            os.setgid(run_uid)
            os.setuid(run_uid)

    # ---------------------------------------------------------------- running
    def run(self, command: str, setup: str | None = None, tool: str | None = None,
            fixtures: Sequence["Fixture"] = (), track: bool = False, privileged: bool = False) -> Result:
        """Run `command` with bash in a fresh sandbox, after `fixtures` and `setup`; never raises.

        `tool`, when given, is checked first: if no such program exists inside, the result is
        ``not_executable`` without running anything. `track`: list the tracked trees before and
        after the command (``Result.files_before`` / ``Result.files``, module docstring).
        `privileged`: setup and command run as namespaced root (module docstring). Every
        failure, the sandbox's own included, is a Result with a status.
        """
        try:
            with FixtureTree(fixtures, track, self.limits.scratch_bytes) as tree:
                r = self._run(command, setup, tool, tree, privileged)
        except Exception as e:  # a failure of the sandbox itself, never of what the command did
            r = self._result("sandbox_error", None, "", f"minisigma-sandbox: {type(e).__name__}: {e}", 0.0)
        r.privileged = bool(privileged)
        return r

    def _result(self, status: str, code: int | None, stdout: str, stderr: str, seconds: float, **kw) -> Result:
        return Result(status, code, stdout, stderr, seconds, memory_limit=self.memory_limit, **kw)

    def _filter(self, privileged: bool) -> bytes | None:
        """The compiled seccomp program of a run: the memory calls where no cgroup bounds memory,
        plus the mount family and new user namespaces for a privileged run (module docstring)."""
        if not privileged:
            return self._seccomp
        if self._seccomp_root is None:
            self._seccomp_root = _seccomp_filter(memory=self._cgroup_parent is None, mounts=True)
        return self._seccomp_root

    def _run(self, command, setup, tool, tree: "FixtureTree", privileged: bool = False) -> Result:
        for name, value in (("command", command), ("setup", setup), ("tool", tool)):
            if value is not None and not isinstance(value, str):
                return self._result("not_executable" if name != "setup" else "setup_failed", None, "",
                                    f"minisigma-sandbox: the {name} is a {type(value).__name__}, not text", 0.0)
        if command is None or not command.strip():
            return self._result("empty", None, "", "", 0.0)
        # No program can receive a NUL byte in an argument or the environment (the kernel's strings
        # end there), so such a command cannot be run at all.
        for name, value in (("command", command), ("tool", tool), ("setup", setup)):
            if "\0" in (value or ""):
                prefix = SETUP_FAILED if name == "setup" else "minisigma-sandbox"
                return self._result("setup_failed" if name == "setup" else "not_executable", None, "",
                                    f"{prefix}: the {name} contains a NUL byte, which no shell command can hold", 0.0)
        try:
            program = self._filter(privileged)
        except SandboxUnavailable as e:
            return self._result("sandbox_error", None, "", f"minisigma-sandbox: {e}", 0.0)
        argv = self.argv(tree.mounts, privileged) + tree.env
        pass_fds: tuple[int, ...] = ()
        cgroup = None
        if self._cgroup_parent is not None:
            cgroup = _Cgroup.create(self._cgroup_parent, self.limits.memory_bytes)
        if program is not None:
            r, w = os.pipe()  # bubblewrap reads the compiled filter from this descriptor to EOF
            os.write(w, program)
            os.close(w)
            pass_fds = (r,)
            argv += ["--seccomp", str(r)]
        argv += ["--setenv", "MS_CMD", command, "--setenv", "MS_SETUP", setup or "",
                 "--setenv", "MS_TOOL", tool or "", "--", "/bin/bash", "-c", DRIVER]
        run_uid = RUN_UID_BASE + int.from_bytes(os.urandom(4), "little") % RUN_UID_SPAN
        t0 = time.monotonic()
        try:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, cwd="/", start_new_session=True,
                                        preexec_fn=lambda: self._preexec(cgroup, run_uid), close_fds=True,
                                        pass_fds=pass_fds + tree.pass_fds,
                                        # bubblewrap itself is PID 1 inside and its /proc/1/environ is
                                        # readable there: it must not carry the evaluator's environment.
                                        env={"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"})
            except (OSError, subprocess.SubprocessError) as e:
                return self._result("sandbox_error", None, "", f"cannot start bubblewrap: {e}", 0.0)
            finally:
                for fd in pass_fds:
                    os.close(fd)
                tree.started()
            out, err, why = self._collect(proc, t0, tree.state_read)
            before, after = tree.states()
            oom = cgroup is not None and cgroup.oom_kills() > 0
        finally:
            if cgroup is not None:
                cgroup.destroy()
        seconds = time.monotonic() - t0
        stdout = bytes(out).decode("utf-8", "replace")
        stderr = bytes(err).decode("utf-8", "replace")
        code = proc.returncode
        sig = -code if code is not None and code < 0 else None
        if why == "timeout":
            return self._result("timeout", None, stdout, stderr, seconds, signal=signal.SIGKILL, oom_killed=oom)
        if why == "output_limit":
            return self._result("output_limit", None, stdout, stderr, seconds, truncated=True,
                                signal=signal.SIGKILL, oom_killed=oom)
        if oom:
            return self._result("killed", code, stdout, stderr, seconds, signal=sig or signal.SIGKILL, oom_killed=True)
        r = self._classify(code, sig, stdout, stderr, seconds)
        r.memory_limit = self.memory_limit
        if tree.track:
            r.files_before, r.files = before, after
        return r

    def _collect(self, proc: subprocess.Popen, t0: float,
                 state: "_StateReader | None" = None) -> tuple[bytearray, bytearray, str | None]:
        """Read both pipes (and the state pipe) until EOF, the output cap or the deadline; kill the
        sandbox on the latter two. The state pipe has its own cap and never kills the sandbox."""
        lim = self.limits
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        bufs = {out_fd: bytearray(), err_fd: bytearray()}
        sel = selectors.DefaultSelector()
        for f in (proc.stdout, proc.stderr):
            sel.register(f, selectors.EVENT_READ)
        if state is not None:
            sel.register(state.fd, selectors.EVENT_READ)
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
                    if state is not None and key.fd == state.fd:
                        if not chunk:
                            sel.unregister(key.fileobj)
                        state.feed(chunk)
                        continue
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
            if state is not None and not why:
                state.drain()
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


# ------------------------------------------------------------------ task fixtures, file-system state
# Top-level directories a fixture may not name: the read-only system and the kernel's trees.
SYSTEM_ROOTS = frozenset({"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev",
                          "sys", "fixtures", ".fixtures"})
FIXTURE_TYPES = ("file", "dir", "symlink")
FIXTURE_MTIME = 1704067200  # 2024-01-01T00:00:00Z: every fixture's time stamp, the same in every run


@dataclass(frozen=True)
class Fixture:
    """One file-system entry that exists before a task's command runs.

    `path`: relative (to ``/scratch``, the working directory) or absolute under a top-level
    directory that is not the system's (`SYSTEM_ROOTS`); no ``..``. `type`: file | dir | symlink.
    A file's bytes are `content` (text, UTF-8); a symlink points at `target`; `mode` (an int,
    e.g. 0o600) is applied inside after copying (default: 0644 files, 0755 directories).
    Missing parent directories are created (0755)."""

    path: str
    type: str = "file"
    content: str | bytes = ""
    mode: int | None = None
    target: str | None = None

    def location(self) -> tuple[str, str]:
        """(top-level directory inside, path below it); ValueError when the path is not allowed."""
        p = self.path
        if not p or "\0" in p or p.endswith("/") and p.strip("/") == "":
            raise ValueError(f"fixture path {p!r} is empty or the root")
        parts = [x for x in p.split("/") if x not in ("", ".")]
        if ".." in parts or not parts:
            raise ValueError(f"fixture path {p!r} must not contain '..'")
        if not p.startswith("/"):
            return "scratch", "/".join(parts)
        if parts[0] in SYSTEM_ROOTS:
            raise ValueError(f"fixture path {p!r} is under /{parts[0]}, which belongs to the sandbox's system")
        if len(parts) == 1:
            raise ValueError(f"fixture path {p!r} must be inside a top-level directory, not one itself")
        return parts[0], "/".join(parts[1:])

    def check(self) -> None:
        self.location()
        if self.type not in FIXTURE_TYPES:
            raise ValueError(f"fixture type {self.type!r} is not one of {', '.join(FIXTURE_TYPES)}")
        if self.type == "symlink" and not self.target:
            raise ValueError(f"symlink fixture {self.path!r} needs a target")
        if self.type != "symlink" and self.target is not None:
            raise ValueError(f"fixture {self.path!r}: only a symlink has a target")
        if self.type != "file" and self.content:
            raise ValueError(f"fixture {self.path!r}: only a file has content")
        if self.mode is not None and not (isinstance(self.mode, int) and 0 <= self.mode <= 0o7777):
            raise ValueError(f"fixture {self.path!r}: mode must be an integer 0..0o7777")


class FixtureTree:
    """The host side of one run's fixtures and state tracking (module docstring): the per-task tree
    bound read-only at /.fixtures, the tmpfs mounts for its top-level directories, and the state pipe."""

    def __init__(self, fixtures: Sequence[Fixture], track: bool, tmpfs_bytes: int):
        self.fixtures = list(fixtures)
        self.track = track
        self.tmpfs_bytes = tmpfs_bytes
        self.mounts: list[str] = []
        self.env: list[str] = []
        self.pass_fds: tuple[int, ...] = ()
        self.state_read: _StateReader | None = None
        self._dir: Path | None = None
        self._w: int | None = None

    def __enter__(self) -> "FixtureTree":
        roots: list[str] = []
        if self.fixtures:
            for fx in self.fixtures:
                fx.check()
                root = fx.location()[0]
                if root not in roots:
                    roots.append(root)
            self._dir = Path(tempfile.mkdtemp(prefix="minisigma-fixtures-"))
            self._dir.chmod(0o755)  # the sandbox's (unprivileged) user reads it, read-only
            modes = self._write(self._dir)
            self.mounts += ["--ro-bind", str(self._dir), "/.fixtures"]
            for root in roots:
                if root not in ("scratch", "tmp", "run"):  # those are tmpfs mounts already
                    self.mounts += ["--size", str(self.tmpfs_bytes), "--tmpfs", f"/{root}"]
            self.env += ["--setenv", "MS_FIXTURE_ROOTS", " ".join(roots)]
            (self._dir / ".modes").write_bytes(b"".join(f"{m:o}\0{path}\0".encode() for m, path in modes))
        if self.track:
            tracked = ["scratch"] + [r for r in roots if r != "scratch"]
            r, w = os.pipe()
            self._w = w
            self.state_read = _StateReader(r)
            self.pass_fds = (w,)
            self.env += ["--setenv", "MS_STATE_FD", str(w), "--setenv", "MS_TRACK", " ".join(tracked),
                         "--setenv", "MS_MARK", STATE_MARK]
        return self

    def _write(self, top: Path) -> list[tuple[int, str]]:
        """Write the entries below `top`/<root>/...; return the (mode, inside path) list to apply,
        deepest first (a directory's own mode may take away the access its entries need)."""
        modes = []
        for fx in self.fixtures:
            root, rel = fx.location()
            dest = top / root / rel
            for parent in reversed(dest.relative_to(top).parents):
                d = top / parent
                if not d.exists():
                    d.mkdir()
                    d.chmod(0o755)
            if fx.type == "dir":
                dest.mkdir(exist_ok=True)
                dest.chmod(0o755)
            elif fx.type == "symlink":
                os.symlink(fx.target, dest)
            else:
                data = fx.content.encode("utf-8") if isinstance(fx.content, str) else bytes(fx.content)
                dest.write_bytes(data)
                dest.chmod(0o644)
            if fx.mode is not None and fx.type != "symlink":
                modes.append((fx.mode, f"/{root}/{rel}"))
        modes.sort(key=lambda m: (-m[1].count("/"), m[1]))
        # fixed time stamps (cp -a keeps them), deepest first: writing an entry changes its directory's
        for entry in sorted(top.rglob("*"), key=lambda q: -len(q.parts)):
            os.utime(entry, (FIXTURE_MTIME, FIXTURE_MTIME), follow_symlinks=False)
        return modes

    def started(self) -> None:
        """The sandbox has its copy of the pipe's write end: close ours, so EOF comes when it ends."""
        if self._w is not None:
            os.close(self._w)
            self._w = None

    def states(self) -> tuple[dict | None, dict | None]:
        if self.state_read is None:
            return None, None
        return self.state_read.states()

    def __exit__(self, *exc) -> None:
        self.started()
        if self.state_read is not None:
            self.state_read.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


class _StateReader:
    """Collects the driver's state listings from the read end of the state pipe (capped)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.data = bytearray()
        self.overflow = False
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            self.closed = True
            return
        if len(self.data) + len(chunk) > STATE_BYTES:
            self.overflow = True  # keep reading (the driver must never block on us), keep nothing
            return
        self.data += chunk

    def drain(self, seconds: float = 5.0) -> None:
        """Read what is left after the sandbox ended (bounded: its holders are gone by now)."""
        end = time.monotonic() + seconds
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ)
        try:
            while not self.closed and time.monotonic() < end:
                if sel.select(timeout=0.1):
                    self.feed(os.read(self.fd, 65536))
        finally:
            sel.close()

    def states(self) -> tuple[dict | None, dict | None]:
        if self.overflow or not self.closed:
            return None, None
        return parse_state(bytes(self.data))

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def parse_state(data: bytes) -> tuple[dict | None, dict | None]:
    """The last complete "before" and "after" listings in the driver's output.

    Each entry is ``{path: {"type": f|d|l|p|s|..., "mode": "644", "sha256": hex (files) or None if
    unreadable, "target": text (symlinks)}}``. The after listing is written once every process of
    the command is dead, so whatever the command wrote into the pipe comes before it and cannot
    forge it (a fragment written earlier can only make a listing unreadable: then it is None)."""
    toks = data.split(b"\0")
    mark = STATE_MARK.encode()
    out: dict[str, dict | None] = {"before": None, "after": None}
    starts = [i for i in range(len(toks) - 1) if toks[i] == mark and toks[i + 1] in (b"before", b"after")]
    for n, i in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(toks)
        label = toks[i + 1].decode()
        out[label] = _parse_listing(toks[i + 2:end])
    return out["before"], out["after"]


def _parse_listing(toks: list[bytes]) -> dict | None:
    entries: dict[str, dict] = {}
    i = 0
    while i < len(toks) and toks[i] != b"sha256":
        if i + 4 > len(toks):
            return None
        y, m, path, link = (t.decode("utf-8", "surrogateescape") for t in toks[i:i + 4])
        e = {"type": y, "mode": m}
        if y == "f":
            e["sha256"] = None
        elif y == "l":
            e["target"] = link
        entries[path] = e
        i += 4
    if i >= len(toks):
        return None  # cut short: no hash section
    for t in toks[i + 1:]:
        if not t:
            continue
        rec = t.decode("utf-8", "surrogateescape")
        digest, _, path = rec.partition("  ")
        if path in entries and entries[path]["type"] == "f" and len(digest) == 64:
            entries[path]["sha256"] = digest
    return entries


def state_changes(before: dict | None, after: dict | None) -> dict | None:
    """Created, deleted and changed (type, mode or content) paths between two listings."""
    if before is None or after is None:
        return None
    return {"created": sorted(set(after) - set(before)),
            "deleted": sorted(set(before) - set(after)),
            "changed": sorted(p for p in set(before) & set(after) if before[p] != after[p])}


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


# ------------------------------------------------------------------------ memory: cgroup or seccomp
class _Cgroup:
    """One run's cgroup v2 (a child of a cgroup whose children get the memory controller)."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, parent: Path, memory_bytes: int) -> "_Cgroup":
        path = parent / f"minisigma-sandbox-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path.mkdir()
        cg = cls(path)
        try:
            cg._write("memory.max", str(memory_bytes))
            # without swap accounting (no such file) nothing inside can be swapped out either:
            # cgroup v2 charges swap only where the controller offers it
            if (path / "memory.swap.max").exists():
                cg._write("memory.swap.max", "0")
            if (path / "memory.oom.group").exists():
                cg._write("memory.oom.group", "1")
        except OSError:
            cg.destroy()
            raise
        return cg

    def _write(self, name: str, value: str) -> None:
        with open(self.path / name, "w") as f:
            f.write(value)

    def enter(self) -> None:
        """Move the calling process into this cgroup (in the child, before exec)."""
        self._write("cgroup.procs", "0")

    def _pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def oom_kills(self) -> int:
        try:
            for line in (self.path / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def destroy(self) -> None:
        """Kill whatever is left inside, then remove the cgroup (bounded wait)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = self._pids()
            if not pids:
                try:
                    self.path.rmdir()
                    return
                except FileNotFoundError:
                    return
                except OSError:
                    pass  # still populated for a moment while the kernel tears processes down
            elif (self.path / "cgroup.kill").exists():
                try:
                    self._write("cgroup.kill", "1")
                except OSError:
                    pass
            else:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            time.sleep(0.02)


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid hosts)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def own_cgroup() -> str | None:
    """This process's cgroup v2 path ("0::/path" in /proc/self/cgroup)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None


def memory_parent(mount: Path, own: str) -> Path | None:
    """The nearest cgroup, from our own upwards, whose children get the memory controller and in
    which we may create one. A cgroup holding processes (our own, usually) cannot enable
    controllers for its children, so this is mostly the parent, and the sandbox's cgroup a sibling
    of ours; nothing is ever changed in an existing cgroup."""
    parts = [p for p in own.split("/") if p]
    if ".." in parts:  # our cgroup lies outside this cgroup namespace's view
        return None
    d = mount.joinpath(*parts)
    while True:
        try:
            enabled = (d / "cgroup.subtree_control").read_text().split()
        except OSError:
            enabled = []
        if "memory" in enabled and os.access(d, os.W_OK | os.X_OK):
            return d
        if d == mount or mount not in d.parents:
            return None
        d = d.parent


_PARENT_PROBED: dict[str, Path | None] = {}


def usable_cgroup_parent() -> Path | None:
    """A cgroup v2 under which a sandbox's cgroup can be made, with memory.max set and a process
    moved in (tried once per process with a real child), or None where the kernel offers none."""
    if "parent" in _PARENT_PROBED:
        return _PARENT_PROBED["parent"]
    found = None
    mount, own = cgroup2_mount(), own_cgroup()
    parent = memory_parent(mount, own) if mount is not None and own is not None else None
    if parent is not None:
        try:
            cg = _Cgroup.create(parent, 64 << 20)
        except OSError:
            cg = None
        if cg is not None:
            try:
                seen = subprocess.run(["cat", "/proc/self/cgroup"], preexec_fn=cg.enter, capture_output=True,
                                      text=True, timeout=30, env={"PATH": SANDBOX_PATH}).stdout
                moved = any(line.startswith("0::") and line.endswith("/" + cg.path.name)
                            for line in seen.splitlines())
                if moved and (cg.path / "memory.max").read_text().strip() == str(64 << 20):
                    found = parent
            except (OSError, subprocess.SubprocessError):
                pass
            finally:
                cg.destroy()
    _PARENT_PROBED["parent"] = found
    return found


def _seccomp_filter(memory: bool = False, mounts: bool = False) -> bytes:
    """A compiled seccomp program (for bubblewrap's --seccomp): `memory` denies
    UNBOUNDED_MEMORY_SYSCALLS, `mounts` (a privileged run) denies MOUNT_SYSCALLS and new user
    namespaces (EPERM; ``clone3`` ENOSYS, so that libc falls back to ``clone``)."""
    try:
        # imported here: only needed where no cgroup bounds memory or for a privileged run, and it
        # loads libseccomp.so
        import pyseccomp as seccomp
    except (ImportError, OSError) as e:
        if mounts:
            raise SandboxUnavailable(f"libseccomp cannot be loaded ({e}): a privileged (namespaced-root) "
                                     "run needs it to deny mounts and new user namespaces") from None
        raise SandboxUnavailable(
            f"no cgroup v2 memory controller is writable here and libseccomp cannot be loaded ({e}): "
            "memory a command holds in memfd or shared memory could not be bounded") from None
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)  # other architectures' syscalls: killed
    for name in (UNBOUNDED_MEMORY_SYSCALLS if memory else ()) + (MOUNT_SYSCALLS if mounts else ()):
        f.add_rule(seccomp.ERRNO(errno.EPERM), name)
    if mounts:
        newuser = seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
        f.add_rule(seccomp.ERRNO(errno.EPERM), "unshare", newuser)
        f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", newuser)
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as t:
        f.export_bpf(t)
        t.seek(0)
        return t.read()


def check_available() -> None:
    """Raise SandboxUnavailable with the reason when sandboxed execution cannot work here
    (bubblewrap missing, or user namespaces not permitted, as in some containers)."""
    with Sandbox(Limits(wall_seconds=10)) as sb:
        r = sb.run("echo ok")
    if r.status != "ok" or r.stdout.strip() != "ok":
        raise SandboxUnavailable(f"bubblewrap cannot create a sandbox here: {r.stderr.strip() or r.status}")


# ----------------------------------------------------------------------------------- task files
FIXTURE_KEYS = ("path", "type", "content", "base64", "mode", "target")


def fixtures_from(raw, where: str) -> tuple[Fixture, ...]:
    """The `Fixture`s of a task file's "fixtures" list; a malformed entry is a one-line UserError
    naming `where` (file:line) and the entry."""
    if not isinstance(raw, list):
        raise UserError(f"{where}: 'fixtures' must be a list of objects")
    out = []
    seen = set()
    for n, f in enumerate(raw):
        at = f"{where}: fixtures[{n}]"
        if not isinstance(f, dict):
            raise UserError(f"{at}: expected an object")
        unknown = sorted(set(f) - set(FIXTURE_KEYS))
        if unknown:
            raise UserError(f"{at}: unknown key {unknown[0]!r} (allowed: {', '.join(FIXTURE_KEYS)})")
        if not isinstance(f.get("path"), str):
            raise UserError(f"{at}: 'path' must be a string")
        if "content" in f and "base64" in f:
            raise UserError(f"{at}: give 'content' or 'base64', not both")
        content: str | bytes = ""
        if "content" in f:
            if not isinstance(f["content"], str):
                raise UserError(f"{at}: 'content' must be a string")
            content = f["content"]
        elif "base64" in f:
            try:
                content = base64.b64decode(f["base64"], validate=True)
            except (ValueError, TypeError):
                raise UserError(f"{at}: 'base64' is not valid base64") from None
        mode = f.get("mode")
        if mode is not None:
            if not isinstance(mode, str) or not re.fullmatch(r"0?[0-7]{3,4}", mode):
                raise UserError(f"{at}: 'mode' must be octal text such as \"0644\"")
            mode = int(mode, 8)
        target = f.get("target")
        if target is not None and not isinstance(target, str):
            raise UserError(f"{at}: 'target' must be a string")
        fx = Fixture(path=f["path"], type=f.get("type", "file"), content=content, mode=mode, target=target)
        try:
            fx.check()
        except ValueError as e:
            raise UserError(f"{at}: {e}") from None
        if fx.location() in seen:
            raise UserError(f"{at}: path {fx.path!r} is declared twice")
        seen.add(fx.location())
        out.append(fx)
    return tuple(out)


def program_of(command: str) -> str | None:
    """The program a command starts (its first shell word), for the sandbox's "is it installed"
    check; None when the first word is not a plain program name (an assignment, a subshell ...).
    A task's `tool` names the man page ("git-commit"); the program is what runs ("git")."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    if not words or not re.fullmatch(r"[\w.+/-]+", words[0]) or "=" in words[0]:
        return None
    return words[0]
