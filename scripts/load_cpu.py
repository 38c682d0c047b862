"""CPU isolation of `make load-test`: who gets the CPUs while something is measured. Stdlib only.

- `CpuGroups` (`CPU_GROUPS`): the driver, and so every process it starts, in one cpu cgroup
  of the largest weight; a second, idle group for a database that must not compete.
- `IdleDatabase`: a mariadbd in the idle group for a `with` block.
- `SoftirqFirst` (part of `CPU_GROUPS.setup`/`remove`): the per-CPU `ksoftirqd` threads at
  SCHED_FIFO 1 for the run, and back to what they were after.
"""

import os
import shutil
import subprocess
from pathlib import Path

from load_common import log


class SoftirqFirst:
    """The `ksoftirqd/N` kernel threads at SCHED_FIFO priority 1 for the run.

    Network receive work that does not finish in the interrupt's tail goes to ksoftirqd, a
    per-CPU kernel thread that cannot be moved into a cgroup. Left in the root group it weighs
    1/256 of `psc-bench`, and it waited for the CPU while packets queued behind it: pload -R
    105000 against the collector, 17 s, ksoftirqd/0 woke 936 times and waited 430 ms in all
    (0.46 ms a wake; /proc/PID/schedstat). At SCHED_FIFO 1 it runs when woken (5 ms of wait in
    1,404 wakes), as on a host tuned for network latency. Each thread's policy and priority are
    put back by `restore`."""

    def __init__(self):
        self.saved = {}

    def raise_all(self):
        for pid in self.pids():
            try:
                self.saved[pid] = (os.sched_getscheduler(pid), os.sched_getparam(pid).sched_priority)
                os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(1))
            except OSError as e:
                self.saved.pop(pid, None)
                log(f"ksoftirqd {pid} keeps its policy: {e}")
        return bool(self.saved)

    def restore(self):
        for pid, (policy, priority) in self.saved.items():
            try:
                os.sched_setscheduler(pid, policy, os.sched_param(priority))
            except OSError as e:
                log(f"ksoftirqd {pid} not put back: {e}")
        self.saved = {}

    @staticmethod
    def pids():
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and (entry / "comm").read_text().startswith("ksoftirqd/"):
                    found.append(int(entry.name))
            except OSError:
                pass
        return found


class CpuGroups:
    """Two cpu cgroups for the run, so that the scheduler weighs what is measured, not sessions.

    - `psc-bench` holds this driver, and so every process it starts (a child starts in its
      parent's cgroup): servers under test, generators, the databases and ClickHouse. It has
      the largest weight the controller takes (v1 cpu.shares 262144, v2 cpu.weight 10000):
      against anything else on the machine (a build, the machine's own services) it gets
      nearly all the CPU it asks for, and inside it every process weighs as its tasks do.
      (With only the servers and generators in it, the back end's mariadbd, left in the root
      group, got 67 % of a CPU in the INSERT drain, against 146 % in the run before.)
    - `psc-bench-idle` (cpu.idle = 1) holds a database while `IdleDatabase` says so: it runs
      only on CPU time nobody else wants, as a database on its own machine would not compete.

    Why not sessions: with `kernel.sched_autogroup_enabled` every session of the root cgroup
    is its own autogroup, and the scheduler shares a CPU between groups before it looks at the
    tasks in them. A process in a session of its own then weighed as much as the collector
    (plain c=64: 52k req/s against 111k), and a server and its generator in two sessions
    added milliseconds to the open loop's p99 (pload -R 60000 against the collector: 5-6.5 ms
    in two sessions, 1.2 ms in one cgroup). The kernel uses autogroups only for tasks of the
    root cgroup, so inside these groups the processes weigh as tasks, whatever their sessions.

    Where neither cgroup version lets us make the groups (not root, no cpu controller),
    `setup` returns False, processes keep their sessions and `IdleDatabase` falls back to
    SCHED_IDLE plus the autogroup's nice; the report says which (`mode`)."""

    V1 = Path("/sys/fs/cgroup/cpu")
    V2 = Path("/sys/fs/cgroup")

    def __init__(self):
        self.bench = self.idle = self.root = None
        self.mode = "sessions (no writable cpu cgroup)"
        self.softirq = SoftirqFirst()

    def setup(self):
        """Makes both groups; False (and sessions) where the machine does not allow it."""
        if (self.V1 / "cpu.shares").exists():
            base, weight_file, weight = self.V1, "cpu.shares", "262144"
        elif "cpu" in self.read(self.V2 / "cgroup.controllers").split():
            base, weight_file, weight = self.V2, "cpu.weight", "10000"
            self.write(self.V2 / "cgroup.subtree_control", "+cpu")
        else:
            return False
        try:
            for name in ("psc-bench", "psc-bench-idle"):
                (base / name).mkdir(exist_ok=True)
            (base / "psc-bench" / weight_file).write_text(weight)
            (base / "psc-bench-idle" / "cpu.idle").write_text("1")
        except OSError as e:
            log(f"cpu cgroups not made ({e}); every process keeps a session of its own")
            return False
        self.root, self.bench, self.idle = base, base / "psc-bench", base / "psc-bench-idle"
        if not self.move(os.getpid(), "bench"):
            log("could not join the psc-bench cgroup; every process keeps a session of its own")
            self.remove()
            return False
        self.mode = f"cgroups ({base}/psc-bench, weight {weight}; idle databases: cpu.idle)"
        if self.softirq.raise_all():
            self.mode += "; ksoftirqd at SCHED_FIFO 1"
        return True

    def move(self, pid, group):
        """Moves every thread of `pid` to `group` ("idle", "bench" or "root"); False if not."""
        path = {"idle": self.idle, "bench": self.bench, "root": self.root}[group]
        return bool(path) and self.write(path / "cgroup.procs", str(pid))

    def remove(self):
        """Takes this driver back to the root group and removes both groups; a group that
        still holds a process stays (and is logged)."""
        self.softirq.restore()
        if self.root:
            self.move(os.getpid(), "root")
        for group in (self.bench, self.idle):
            if group:
                try:
                    group.rmdir()
                except OSError as e:
                    log(f"{group} left in place: {e}")
        self.root = self.bench = self.idle = None

    @staticmethod
    def read(path):
        try:
            return path.read_text()
        except OSError:
            return ""

    @staticmethod
    def write(path, text):
        try:
            path.write_text(text)
            return True
        except OSError:
            return False


CPU_GROUPS = CpuGroups()


class IdleDatabase:
    """`db`'s mariadbd in the `psc-bench-idle` cgroup (cpu.idle) for the `with` block, then
    back in `psc-bench`. Without cgroups (`CpuGroups.setup` False): its threads under
    SCHED_IDLE and its autogroup at nice 19, then SCHED_OTHER and nice 0 again; SCHED_IDLE
    alone is not enough there, for the scheduler weighs autogroups before policies (see
    `CpuGroups`). `as` gives whether it worked (no pid file, no chrt: the runs say so)."""

    def __init__(self, db):
        self.pid = db.pid
        self.autogroup = Path(f"/proc/{self.pid}/autogroup") if self.pid else None

    def __enter__(self):
        self.grouped = bool(self.pid) and CPU_GROUPS.move(self.pid, "idle")
        self.done = self.grouped or (bool(self.pid and shutil.which("chrt"))
                                     and self.chrt("--idle"))
        self.niced = self.done and not self.grouped and self.set_autogroup_nice(19)
        if not self.done:
            log("mariadbd could not be made idle; runs share the CPUs with it")
        return self.done

    def __exit__(self, *exc):
        if self.grouped:
            CPU_GROUPS.move(self.pid, "bench")
        elif self.done:
            self.chrt("--other")
        if self.niced:
            self.set_autogroup_nice(0)

    def chrt(self, policy):
        argv = ["chrt", "-a", policy, "-p", "0", str(self.pid)]
        return subprocess.run(argv, stdout=subprocess.DEVNULL, check=False).returncode == 0

    def set_autogroup_nice(self, nice):
        """False where the kernel has no autogroups (then the policy alone decides)."""
        try:
            self.autogroup.write_text(f"{nice}\n")
            return True
        except OSError:
            return False
