"""Keep serving after SIGTERM until the proxy has stopped routing here, then stop gracefully.

    python -m berth.drain --seconds 10 -- uvicorn <service>.main:create_app --factory ...

Under Docker Swarm a task leaves Traefik's routing only when Traefik next polls the manager
(`providers.swarm.refreshSeconds`), but Swarm sends the task SIGTERM at once. uvicorn, on
SIGTERM, stops accepting connections straight away, so every request Traefik routed here in
between would fail (traefik/traefik#11252). This wrapper runs the server as its child and,
on SIGTERM, lets it serve as usual for `--seconds` (Traefik's poll interval plus its
throttle plus a margin, see compose.swarm.yaml), then forwards SIGTERM: requests still in
flight then finish under uvicorn's own graceful shutdown. SIGINT (Ctrl-C) is forwarded at
once. It exits with the server's exit status.

Run it in exec form as the container's PID 1, so SIGTERM reaches it.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType


def log(message: str) -> None:
    # Plain stderr: the wrapper runs before (and after) the server's JSON logging exists.
    print(f"drain: {message}", file=sys.stderr, flush=True)


class Drainer:
    """Runs `command`; SIGTERM starts the drain, which forwards SIGTERM after `seconds`."""

    def __init__(self, command: Sequence[str], seconds: float) -> None:
        self.command = list(command)
        self.seconds = seconds
        self.child: subprocess.Popen[bytes] | None = None
        self.draining = threading.Event()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self.child = subprocess.Popen(self.command)  # noqa: S603 - the container's own command
        except OSError as exc:
            log(f"cannot start {self.command[0]}: {exc.strerror}")
            return 127
        status = self.child.wait()
        # Killed by a signal: report it the way a shell would (128 + its number).
        return 128 - status if status < 0 else status

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.draining.is_set():
            return  # a second SIGTERM changes nothing: the drain is already under way
        self.draining.set()
        log(f"SIGTERM: serving {self.seconds:g} s more while the proxy stops routing here")
        threading.Thread(target=self._forward_later, daemon=True).start()

    def _forward_later(self) -> None:
        time.sleep(self.seconds)
        log("drained: stopping the server gracefully")
        self._forward(signal.SIGTERM)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self._forward(signal.SIGINT)

    def _forward(self, signum: int) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)


def parse(argv: Sequence[str]) -> tuple[float, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m berth.drain", description=__doc__)
    parser.add_argument("--seconds", type=float, required=True, help="how long to keep serving")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the server command")
    arguments = parser.parse_args(argv)
    command = arguments.command[1:] if arguments.command[:1] == ["--"] else arguments.command
    if not command:
        parser.error("no command given (put it after --)")
    if not 0 <= arguments.seconds <= 300:
        parser.error(f"--seconds must be between 0 and 300 (got {arguments.seconds:g})")
    return arguments.seconds, command


def main(argv: Sequence[str] | None = None) -> int:
    seconds, command = parse(sys.argv[1:] if argv is None else argv)
    return Drainer(command, seconds).run()


if __name__ == "__main__":
    sys.exit(main())
