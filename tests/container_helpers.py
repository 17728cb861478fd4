"""A Debian 12 root with systemd, booted by `systemd-nspawn -b`, for testing the shipped units
under a real service manager (tests/test_systemd_container.py).

Two roots are cached under $STREAMCLF_TEST_ROOTS (default /var/cache/streamclf-test), each named
by a hash of its recipe, so a changed recipe builds a new one (older ones are removed):

- `deb12-base-HASH`: debootstrap's minimal Debian 12 with systemd (about 1 min to build);
- `deb12-ready-HASH`: a copy of it in which the README's set-up (`scripts/run.sh`) and then
  docs/deploy.md's install (`scripts/install-service.sh`) ran on a copy of the checkout, as on a
  user's fresh machine. Its hash covers those scripts, so a change to how streamclf is set up
  or installed repeats that fresh-machine run.

Each test session boots the ready root with `--volatile=overlay` (changes go to a tmpfs and
vanish at power-off), installs the checkout under test into it again with the same script, and
runs commands inside with `nsenter` into the container's namespaces. machined is not running on
the host, so the container is not registered (`--register=no`) and `machinectl` is not used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = Path(os.environ.get("STREAMCLF_TEST_ROOTS", "/var/cache/streamclf-test"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# systemd as PID 1 and D-Bus for systemctl; ca-certificates and procps as on any Debian install;
# libpam-systemd as on any desktop (without it a user manager cannot start).
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "libpam-systemd", "procps", "ca-certificates")
# A change to these repeats the fresh-machine run. pyproject.toml is left out on purpose: each
# session's install-service.sh run installs the checkout's dependencies anyway.
SETUP_FILES = ("scripts/setup.sh", "scripts/run.sh", "scripts/install-service.sh")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CHECKOUT_IN_CONTAINER = "/srv/streamclf"
RUN_SH_LOG = "root/run-sh.log"  # what `scripts/run.sh` printed in the fresh root, kept in it
RUN_SH_SECONDS = 8  # `streamclf listen --duration` of the README's first command
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_TIMEOUT_S = 1500


def missing_tools() -> list[str]:
    return [tool for tool in ("systemd-nspawn", "debootstrap", "nsenter") if not shutil.which(tool)]


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def _base_key() -> str:
    return _digest(SUITE.encode(), MIRROR.encode(), " ".join(BASE_PACKAGES).encode())


def _ready_key() -> str:
    return _digest(_base_key().encode(), str(RUN_SH_SECONDS).encode(),
                   *((REPO / name).read_bytes() for name in SETUP_FILES))  # fmt: skip


def _replace_others(prefix: str, keep: Path) -> None:
    for old in ROOTS.glob(f"{prefix}-*"):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def copy_checkout(dest: Path) -> None:
    """The files of the checkout under test (tracked, and untracked but not ignored) into dest."""
    names = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        for name in filter(None, names):
            if (REPO / name).exists():
                tar.add(REPO / name, arcname=name, recursive=False)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    archive.unlink()


def _nspawn_run(root: Path, script: str, log: Path) -> None:
    """Run a shell script in the root without booting it (set-up steps)."""
    cmd = ["systemd-nspawn", "-D", str(root), "--register=no", "--keep-unit", "--pipe",
           "--resolv-conf=replace-host", *_ca_binds(),
           "--setenv=PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
           "--setenv=PIP_DISABLE_PIP_VERSION_CHECK=1",
           "/bin/bash", "-euxc", script]  # fmt: skip
    with log.open("ab") as out:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              timeout=BUILD_TIMEOUT_S, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        msg = f"in the container, exit {done.returncode}:\n" + "\n".join(tail)
        raise RuntimeError(msg)


def _ca_binds() -> list[str]:
    """This machine reaches PyPI through a TLS proxy whose CA only the host's bundle holds."""
    if HOST_CA_BUNDLE.is_file():
        return [f"--bind-ro={HOST_CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt"]
    return []


def base_root(log: Path) -> Path:
    root = ROOTS / f"deb12-base-{_base_key()}"
    if root.is_dir():
        return root
    ROOTS.mkdir(parents=True, exist_ok=True)
    building = root.with_name(root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
           str(building), MIRROR]  # fmt: skip
    with log.open("ab") as out:
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                       timeout=BUILD_TIMEOUT_S, check=True)
    building.rename(root)
    _replace_others("deb12-base", root)
    return root


def ready_root(log: Path) -> Path:
    """The base root after the README's set-up and docs/deploy.md's install, as a user runs them."""
    root = ROOTS / f"deb12-ready-{_ready_key()}"
    if root.is_dir():
        return root
    base = base_root(log)
    building = root.with_name(root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run(["cp", "-a", str(base), str(building)], check=True)
    copy_checkout(building / "root" / "streamclf")
    # The README's first command, as root on a fresh machine: set-up, then `streamclf listen`.
    _nspawn_run(building, f"cd /root/streamclf && ./scripts/run.sh --duration {RUN_SH_SECONDS} "
                          f"--json > /{RUN_SH_LOG} 2>&1 || {{ cat /{RUN_SH_LOG}; exit 1; }}",
                log)  # fmt: skip
    _nspawn_run(building, "cd /root/streamclf && ./scripts/install-service.sh", log)
    building.rename(root)
    _replace_others("deb12-ready", root)
    return root


class Container:
    """A booted root (systemd as PID 1); `sh()` runs a command inside it as root.

    Stopped by its own handle: `systemctl poweroff` inside, then SIGKILL to the container's
    PID 1 (which ends its whole PID namespace) if it does not go within the time allowed.
    """

    def __init__(self, root: Path, *, binds: tuple[str, ...] = (), log: Path) -> None:
        self.root = root
        self._log = log.open("ab")
        cmd = ["systemd-nspawn", "-D", str(root), "--volatile=overlay", "--register=no",
               "--keep-unit", "-b", "--console=pipe", "--resolv-conf=replace-host",
               f"--machine=streamclf-test-{os.getpid()}", *_ca_binds(), *binds]  # fmt: skip
        # cgroup v2 inside, as on a booted Debian 12, although this host has the hybrid layout
        # (with which systemd in the container calls itself "tainted: cgroupsv1").
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        try:
            self.leader = self._find_leader()
        except RuntimeError:
            self.proc.kill()  # by its own pid
            self.proc.wait(30)
            self._log.close()
            raise

    def _find_leader(self, timeout_s: float = 30.0) -> int:
        """The container's PID 1: the process in a new PID namespace under systemd-nspawn."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = f"systemd-nspawn exited with {self.proc.returncode}"
                raise RuntimeError(msg)
            for pid in _descendants(self.proc.pid):
                if _ns_pids(pid)[-1:] == [1] and len(_ns_pids(pid)) > 1:
                    return pid
            time.sleep(0.1)
        msg = "the container's PID 1 did not appear"
        raise RuntimeError(msg)

    def sh(self, script: str, *, timeout_s: float = 120, check: bool = True,
           user: str | None = None) -> subprocess.CompletedProcess:
        """bash -c SCRIPT inside (as `user` through runuser when given); text output."""
        cmd = self.command(script, user=user)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and done.returncode != 0:
            msg = (f"{script!r} exited {done.returncode}:\n"
                   f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
            raise AssertionError(msg)
        return done

    def command(self, script: str, *, user: str | None = None) -> list[str]:
        """The host command line that runs `script` inside the container."""
        inner = ["/bin/bash", "-c", script]
        if user is not None:
            inner = ["runuser", "-u", user, "--", *inner]
        return ["nsenter", f"--target={self.leader}", "--all", "--",
                "/usr/bin/env", "-i", f"PATH={CONTAINER_PATH}", "LANG=C.UTF-8",
                "PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                "PIP_DISABLE_PIP_VERSION_CHECK=1", *inner]  # fmt: skip

    def wait_booted(self, timeout_s: float = 90) -> str:
        """The system state once start-up is over ("running", or "degraded" if a unit failed)."""
        deadline = time.monotonic() + timeout_s
        while True:  # until PID 1 answers on its private socket, systemctl cannot ask it
            done = self.sh("systemctl is-system-running --wait", timeout_s=timeout_s, check=False)
            state = done.stdout.strip()
            if state not in ("", "offline", "unknown") or time.monotonic() > deadline:
                return state
            time.sleep(0.5)

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc.poll() is None:
            subprocess.run(self.command("systemctl poweroff --no-block"), capture_output=True,
                           timeout=30, check=False)  # fmt: skip
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.leader, signal.SIGKILL)
                self.proc.wait(30)
        self._log.close()


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _ns_pids(pid: int) -> list[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(p) for p in line.split()[1:]]
    except OSError:
        pass
    return []
