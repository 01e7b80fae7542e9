"""berth/drain.py: after SIGTERM the server keeps running for --seconds, then gets SIGTERM;
SIGINT passes at once; the wrapper exits with the server's status."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# A stand-in server: says when it is up, and when (and which) signal reached it.
SERVER = """
import signal, sys, time
def stop(number, frame):
    print(f"got {number} at {time.time()}", flush=True)
    sys.exit(int(sys.argv[1]))
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
print("up", flush=True)
while True:
    time.sleep(0.05)
"""


def start(tmp_path: Path, seconds: float, exit_code: int = 0) -> subprocess.Popen[str]:
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "berth.drain", f"--seconds={seconds}", "--",
         sys.executable, str(server), str(exit_code)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert wrapper.stdout is not None
    assert wrapper.stdout.readline().strip() == "up"
    return wrapper


def signalled_at(output: str) -> tuple[int, float]:
    number, at = output.strip().removeprefix("got ").split(" at ")
    return int(number), float(at)


def test_sigterm_reaches_the_server_only_after_the_drain(tmp_path: Path) -> None:
    wrapper = start(tmp_path, seconds=1.5)
    sent = time.time()
    wrapper.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert wrapper.poll() is None  # still serving
    wrapper.send_signal(signal.SIGTERM)  # a second SIGTERM does not cut the drain short
    stdout, stderr = wrapper.communicate(timeout=10)

    number, at = signalled_at(stdout)
    assert number == signal.SIGTERM
    assert at - sent >= 1.5
    assert wrapper.returncode == 0
    assert "serving 1.5 s more" in stderr


def test_sigint_passes_at_once(tmp_path: Path) -> None:
    wrapper = start(tmp_path, seconds=30)
    sent = time.time()
    wrapper.send_signal(signal.SIGINT)
    stdout, _ = wrapper.communicate(timeout=10)

    number, at = signalled_at(stdout)
    assert number == signal.SIGINT
    assert at - sent < 5


def test_the_servers_exit_status_is_the_wrappers(tmp_path: Path) -> None:
    wrapper = start(tmp_path, seconds=0, exit_code=3)
    wrapper.send_signal(signal.SIGTERM)
    wrapper.communicate(timeout=10)
    assert wrapper.returncode == 3


def test_a_server_killed_by_a_signal_is_reported_as_a_shell_would() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "berth.drain", "--seconds=0", "--",
         sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 128 + signal.SIGKILL


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--seconds=5"], "no command given"),
        (["--seconds=-1", "--", "true"], "--seconds must be between 0 and 300"),
        (["--", "true"], "--seconds"),
    ],
)
def test_bad_arguments_give_one_line(arguments: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "berth.drain", *arguments],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_a_command_that_cannot_start_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "berth.drain", "--seconds=0", "--", "/nonexistent/server"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 127
    expected = "drain: cannot start /nonexistent/server: No such file or directory"
    assert result.stderr.strip() == expected
