"""Where the machine's CPU went during a load run: each service of the stack (its
containers' cgroup CPU time), the load generator (wrk, a child of this process), and the
whole machine (busy and idle, from /proc/stat). On a machine whose cores the clients share
with the stack, this is what shows a limit: a run that leaves no core idle cannot go faster
whatever the stack does."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import docker

from tests.stack.harness import SERVICE_LABEL, Stack

# cgroup v1 (this engine) and v2 places of a container's CPU time.
CGROUP_V1 = "/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage"  # nanoseconds
CGROUP_V2 = "/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat"  # usage_usec
TICKS = os.sysconf("SC_CLK_TCK")


def container_cpu_seconds(container_id: str) -> float | None:
    v1 = Path(CGROUP_V1.format(id=container_id))
    if v1.exists():
        return int(v1.read_text()) / 1e9
    v2 = Path(CGROUP_V2.format(id=container_id))
    if v2.exists():
        for line in v2.read_text().splitlines():
            name, value = line.split()
            if name == "usage_usec":
                return int(value) / 1e6
    return None


def service_cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far, per service, summed over its running containers."""
    totals: dict[str, float] = {}
    client = docker.from_env()
    label = f"com.docker.compose.project={stack.project}"
    for container in client.containers.list(filters={"label": label}):
        seconds = container_cpu_seconds(container.id)
        if seconds is not None:
            service = container.labels.get(SERVICE_LABEL, container.name)
            totals[service] = totals.get(service, 0.0) + seconds
    return totals


def processes_cpu_seconds(name: str) -> float:
    """CPU seconds used so far by the host's processes called `name` (e.g. docker-proxy,
    Docker's userland proxy, which carries every connection to a port published on
    127.0.0.1: the clients' share of the work when they run on the same machine)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] == name:
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_and_idle() -> tuple[float, float]:
    """Seconds of busy and idle CPU time on the machine since boot, all cores together."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / TICKS, idle / TICKS


@dataclass
class CpuUse:
    """Cores used on average over a run (1.0 = one core busy the whole time)."""

    seconds: float = 0.0
    services: dict[str, float] = field(default_factory=dict)
    load_generator: float = 0.0
    docker_proxy: float = 0.0
    machine_busy: float = 0.0
    machine_idle: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "services": {name: round(cores, 2) for name, cores in sorted(self.services.items())},
            "load_generator": round(self.load_generator, 2),
            "docker_proxy": round(self.docker_proxy, 2),
            "machine_busy": round(self.machine_busy, 2),
            "machine_idle": round(self.machine_idle, 2),
        }


@contextmanager
def cpu_use(stack: Stack) -> Iterator[CpuUse]:
    """Fills the yielded CpuUse when the block ends."""
    use = CpuUse()
    services_before = service_cpu_seconds(stack)
    children_before = children_cpu_seconds()
    proxy_before = processes_cpu_seconds("docker-proxy")
    busy_before, idle_before = machine_busy_and_idle()
    started = time.monotonic()
    yield use
    elapsed = time.monotonic() - started
    services_after = service_cpu_seconds(stack)
    busy_after, idle_after = machine_busy_and_idle()
    use.seconds = elapsed
    use.services = {
        name: (seconds - services_before.get(name, seconds)) / elapsed
        for name, seconds in services_after.items()
    }
    use.load_generator = (children_cpu_seconds() - children_before) / elapsed
    use.docker_proxy = (processes_cpu_seconds("docker-proxy") - proxy_before) / elapsed
    use.machine_busy = (busy_after - busy_before) / elapsed
    use.machine_idle = (idle_after - idle_before) / elapsed
