"""CIS Docker Benchmark checks for the stack's containers, and the exceptions, each with why.

One checker reads two sources: a container's `docker inspect` (what really runs) and a
service from `docker compose config` (what every compose file declares, including services
no test starts). Both become a `Hardening`, and `violations` names what breaks an item.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

# CIS Docker Benchmark 1.6 items checked here (section 4: images, 5: container runtime).
ITEMS = {
    "4.1": "runs as a non-root user",
    "5.3": "drops every capability, adding back only what it needs",
    "5.4": "is not privileged",
    "5.5": "mounts no sensitive host directory",
    "5.9": "does not share the host's network namespace",
    "5.10": "has a memory limit",
    "5.12": "has a read-only root filesystem",
    "5.15": "does not share the host's process namespace",
    "5.16": "does not share the host's IPC namespace",
    "5.25": "cannot gain privileges (no-new-privileges)",
    "5.28": "has a pids limit",
    "5.31": "does not mount the Docker socket",
}

# Where an item does not hold, and why. An exception that is no longer needed is reported
# too, so this table never outlives its reasons.
# Not exceptions, because no item here is broken: the dev overlay's bind mounts of the service,
# berth/ and migrations/ (project code, not a sensitive host directory), and the ports the
# dev and bench overlays publish on 127.0.0.1 only (bound to one interface, as 5.13 asks).
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("socket-proxy", "4.1"): (
        "root with no capabilities: the Docker socket is root:docker 0660, and the docker "
        "group's id differs from host to host"
    ),
    ("socket-proxy", "5.31"): (
        "the one container with the socket (read-only mount), on a network only Traefik "
        "joins, passing GET and HEAD of containers, events, ping and version only"
    ),
    ("acme-owner", "4.1"): (
        "one-shot with CHOWN only and no network: hands the certificate volume (root's when "
        "new, or from a Traefik that ran as root) to Traefik's user, then exits"
    ),
    ("secrets-owner", "4.1"): (
        "run only by `make secrets` (profile tools), with no network: gives each secret "
        "file to the user that reads it, which only root can do"
    ),
    ("pebble", "4.1"): "test-only ACME server: its image keeps its TLS key readable by root only",
}

# Test overlays' services that stand in for the world outside the server, not part of the
# stack a user runs, so not held to its hardening.
OUTSIDE_THE_STACK: dict[str, str] = {
    "s3": "tests/stack/compose/s3.yaml: the TLS front of a test bucket, standing in for AWS S3",
    "s3-store": "tests/stack/compose/s3.yaml: the test bucket's object store (MinIO's contract)",
}

# 5.3: the capabilities a service may add back after dropping all, and why.
ADDED_CAPABILITIES: dict[str, frozenset[str]] = {
    "acme-owner": frozenset({"CHOWN"}),
    # chmod and chown files the operator owns, inside a 0700 directory
    "secrets-owner": frozenset({"CHOWN", "FOWNER", "DAC_READ_SEARCH"}),
}

# Linux capability numbers, for reading a live process's effective set.
CAPABILITY_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3,
                   "SETGID": 6, "SETUID": 7, "NET_BIND_SERVICE": 10}  # fmt: skip

# 5.5: host directories no container may mount (or anything under them).
SENSITIVE_HOST_PATHS = ("/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sys", "/usr")
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


@dataclass(frozen=True)
class Hardening:
    """The settings the CIS items look at, from either source."""

    user: str | None  # None: not known from this source (compose left it to the image)
    cap_drop: frozenset[str]
    cap_add: frozenset[str]
    privileged: bool
    binds: tuple[tuple[str, bool], ...]  # (host source, read-only)
    network_mode: str
    pid_mode: str
    ipc_mode: str
    memory_bytes: int
    pids_limit: int
    read_only: bool
    no_new_privileges: bool

    @classmethod
    def from_inspect(cls, attrs: Mapping[str, Any]) -> Hardening:
        host = attrs["HostConfig"]
        binds = tuple(
            (mount["Source"], not mount["RW"])
            for mount in attrs.get("Mounts") or []
            if mount["Type"] == "bind"
        )
        return cls(
            user=attrs["Config"].get("User") or "",
            cap_drop=_capabilities(host.get("CapDrop")),
            cap_add=_capabilities(host.get("CapAdd")),
            privileged=bool(host.get("Privileged")),
            binds=binds,
            network_mode=host.get("NetworkMode") or "",
            pid_mode=host.get("PidMode") or "",
            ipc_mode=host.get("IpcMode") or "",
            memory_bytes=int(host.get("Memory") or 0),
            pids_limit=int(host.get("PidsLimit") or 0),
            read_only=bool(host.get("ReadonlyRootfs")),
            no_new_privileges=_no_new_privileges(host.get("SecurityOpt")),
        )

    @classmethod
    def from_config(cls, service: Mapping[str, Any], image_user: str | None) -> Hardening:
        """`image_user`: the user the service's image runs as when compose sets none
        (None if unknown)."""
        limits = (service.get("deploy") or {}).get("resources", {}).get("limits") or {}
        binds = tuple(
            (volume["source"], bool(volume.get("read_only")))
            for volume in service.get("volumes") or []
            if volume.get("type") == "bind"
        )
        return cls(
            user=service.get("user", image_user),
            cap_drop=_capabilities(service.get("cap_drop")),
            cap_add=_capabilities(service.get("cap_add")),
            privileged=bool(service.get("privileged")),
            binds=binds,
            network_mode=service.get("network_mode") or "",
            pid_mode=service.get("pid") or "",
            ipc_mode=service.get("ipc") or "",
            memory_bytes=_bytes(limits.get("memory") or service.get("mem_limit") or 0),
            pids_limit=int(limits.get("pids") or service.get("pids_limit") or 0),
            read_only=bool(service.get("read_only")),
            no_new_privileges=_no_new_privileges(service.get("security_opt")),
        )


def violations(service: str, hardening: Hardening) -> list[str]:
    """Each CIS item this service breaks without an exception, and each exception it no
    longer needs: '<item> <service>: <what>'."""
    problems = []
    failed = failures(service, hardening)
    for item, what in failed.items():
        if (service, item) not in EXCEPTIONS:
            problems.append(f"{item} {service}: {what}")
        elif item == "5.31" and not _sockets_read_only(hardening):
            problems.append(f"5.31 {service}: the Docker socket must be mounted read-only")
    for excepted_service, item in EXCEPTIONS:
        unknown = item == "4.1" and hardening.user is None
        if excepted_service == service and item not in failed and not unknown:
            problems.append(f"{item} {service}: exception no longer needed; remove it")
    if service in ADDED_CAPABILITIES and not hardening.cap_add:
        problems.append(f"5.3 {service}: adds no capability back; remove its entry")
    return problems


def failures(service: str, hardening: Hardening) -> dict[str, str]:
    """CIS item -> how this service breaks it, exceptions aside."""
    failed: dict[str, str] = {}
    if hardening.user is not None and is_root(hardening.user):
        failed["4.1"] = f"runs as {hardening.user or 'the image default, root'}"
    allowed = ADDED_CAPABILITIES.get(service, frozenset())
    if "ALL" not in hardening.cap_drop:
        failed["5.3"] = f"drops {sorted(hardening.cap_drop)}, not ALL"
    elif not hardening.cap_add <= allowed:
        failed["5.3"] = f"adds {sorted(hardening.cap_add - allowed)} back, beyond {sorted(allowed)}"
    if hardening.privileged:
        failed["5.4"] = "is privileged"
    sensitive = [source for source, _ in hardening.binds if _is_sensitive(source)]
    if sensitive:
        failed["5.5"] = f"mounts {sensitive}"
    if hardening.network_mode == "host":
        failed["5.9"] = "uses the host's network"
    if hardening.memory_bytes <= 0:
        failed["5.10"] = "has no memory limit"
    if not hardening.read_only:
        failed["5.12"] = "has a writable root filesystem"
    if hardening.pid_mode == "host":
        failed["5.15"] = "uses the host's pid namespace"
    if hardening.ipc_mode == "host":
        failed["5.16"] = "uses the host's ipc namespace"
    if not hardening.no_new_privileges:
        failed["5.25"] = "lacks no-new-privileges"
    if hardening.pids_limit <= 0:
        failed["5.28"] = "has no pids limit"
    sockets = [source for source, _ in hardening.binds if _is_docker_socket(source)]
    if sockets:
        failed["5.31"] = f"mounts the Docker socket ({', '.join(sockets)})"
    return failed


def live_process_violations(service: str, status: str) -> list[str]:
    """What PID 1 of a running container really has, from /proc/<pid>/status: its uid
    (4.1) and its effective capabilities (5.3)."""
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    problems = []
    real_uid = int(fields["Uid"].split()[0])
    if real_uid == 0 and (service, "4.1") not in EXCEPTIONS:
        problems.append(f"4.1 {service}: PID 1 runs as uid 0")
    effective = int(fields["CapEff"].strip(), 16)
    allowed = sum(1 << CAPABILITY_BITS[name] for name in ADDED_CAPABILITIES.get(service, ()))
    if effective & ~allowed:
        held = f"{effective:#x}, beyond {allowed:#x}"
        problems.append(f"5.3 {service}: PID 1 holds capabilities {held}")
    return problems


def is_root(user: str) -> bool:
    name = user.split(":", 1)[0]
    return name in ("", "0", "root")


def _is_sensitive(source: str) -> bool:
    path = PurePosixPath(source)
    return str(path) == "/" or any(path.is_relative_to(root) for root in SENSITIVE_HOST_PATHS)


def _sockets_read_only(hardening: Hardening) -> bool:
    return all(ro for source, ro in hardening.binds if _is_docker_socket(source))


def _is_docker_socket(source: str) -> bool:
    return source in DOCKER_SOCKETS or source.endswith("/docker.sock")


def _capabilities(values: list[str] | None) -> frozenset[str]:
    return frozenset(value.upper().removeprefix("CAP_") for value in values or [])


def _no_new_privileges(options: list[str] | None) -> bool:
    accepted = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
    return any(option in accepted for option in options or [])


def _bytes(value: str | int) -> int:
    if isinstance(value, int):
        return value
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    number, unit = value.lower().rstrip("b") or "0", "b"
    if number[-1] in units:
        number, unit = number[:-1], number[-1]
    return int(float(number) * units[unit])
