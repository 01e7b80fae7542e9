"""Off-site copies: each verified dump, encrypted on this server with age to a public key,
then uploaded with rclone to S3-compatible storage (AWS S3, Backblaze B2, MinIO...).

Why these tools: age (Debian's package) encrypts to a public key, so the key that decrypts
never has to be on the server, and its format is authenticated (a flipped byte fails to
decrypt rather than restoring garbage). rclone is the maintained, widely used client for
every S3 flavour (signing, multipart uploads, retries); its binary comes from the official
rclone image (RCLONE_IMAGE). Neither needs a Python package.

Layout in the bucket, under BACKUP_S3_PREFIX:
  dumps/<db>-<time>.dump.age        the encrypted dump
  dumps/<db>-<time>.dump.age.json   its Alembic revision, size and SHA-256 (not secret)
  dumps/last-verified.json          the copy last verified good: retention keeps it
  keys/pitr-passphrase.age          pgBackRest's passphrase, encrypted to the same key
  pitr/                             pgBackRest's repository (WAL and base backups)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from backup.config import S3
from backup.errors import BackupError
from backup.tools import one_line, run

SUFFIX = ".age"
VERIFIED_KEY = "dumps/last-verified.json"
CHUNK = 1 << 20
# Fail fast and let the service's own backoff retry: rclone's defaults wait minutes.
RCLONE_FLAGS = (
    "--contimeout=10s",
    "--timeout=60s",
    "--low-level-retries=2",
    "--retries=1",
    "-q",
)


def rclone_env(s3: S3) -> dict[str, str]:
    """rclone's remote `offsite`, configured entirely from the environment (no config file
    with secrets on disk)."""
    env = {
        **os.environ,
        "RCLONE_CONFIG": "/dev/null",
        "RCLONE_CONFIG_OFFSITE_TYPE": "s3",
        "RCLONE_CONFIG_OFFSITE_PROVIDER": "Other",
        "RCLONE_CONFIG_OFFSITE_ENDPOINT": s3.endpoint,
        "RCLONE_CONFIG_OFFSITE_REGION": s3.region,
        "RCLONE_CONFIG_OFFSITE_ACCESS_KEY_ID": s3.access_key_id,
        "RCLONE_CONFIG_OFFSITE_SECRET_ACCESS_KEY": s3.secret_access_key,
        "RCLONE_CONFIG_OFFSITE_FORCE_PATH_STYLE": "true" if s3.path_style else "false",
        # The bucket is the operator's: never try to create it.
        "RCLONE_CONFIG_OFFSITE_NO_CHECK_BUCKET": "true",
    }
    if s3.ca_file:
        env["RCLONE_CA_CERT"] = s3.ca_file
    return env


class Offsite:
    def __init__(self, s3: S3, recipient: str) -> None:
        self.s3 = s3
        self.recipient = recipient
        self.env = rclone_env(s3)
        self.root = f"offsite:{s3.bucket}/{s3.prefix}"

    @property
    def where(self) -> str:
        return f"s3://{self.s3.bucket}/{self.s3.prefix}/dumps"

    def remote(self, key: str) -> str:
        return f"{self.root}/{key}"

    def rclone(self, *args: str, input: str | None = None, timeout: float = 300) -> str:
        return run(
            ["rclone", *RCLONE_FLAGS, *args],
            env=self.env,
            what="rclone",
            input=input,
            timeout=timeout,
        )

    # -- uploads -------------------------------------------------------------------
    def upload(self, path: Path, name: str, revision: str) -> dict[str, Any]:
        """Encrypt `path` and stream it to dumps/<name>.age; returns what was uploaded."""
        key = f"dumps/{name}{SUFFIX}"
        with path.open("rb") as plain:
            age = subprocess.Popen(
                ["age", "--encrypt", "--recipient", self.recipient],
                stdin=plain,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert age.stdout is not None
            digest, size = self._stream_to(age.stdout, key, producer=age, what="age")
        listed = self.stat(key)
        if listed is None or listed["Size"] != size:
            raise BackupError(f"rclone: {key} is not in the bucket after its upload")
        record = {"revision": revision, "sha256": digest, "bytes": size, "object": key}
        self.rclone("rcat", self.remote(f"{key}.json"), input=json.dumps(record))
        return record

    def _stream_to(
        self, source: IO[bytes], key: str, *, producer: subprocess.Popen[bytes], what: str
    ) -> tuple[str, int]:
        """Copy `source` into the object `key` with `rclone rcat`, hashing on the way."""
        upload = subprocess.Popen(
            ["rclone", *RCLONE_FLAGS, "rcat", self.remote(key)],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert upload.stdin is not None
        digest = hashlib.sha256()
        size = 0
        try:
            try:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    upload.stdin.write(chunk)
                upload.stdin.close()
            except BrokenPipeError:
                pass  # rclone gave up; its stderr says why
            producer_status = producer.wait()
            upload_status = upload.wait(timeout=600)
        finally:
            for process in (producer, upload):
                if process.poll() is None:
                    process.kill()
                    process.wait()
        if producer_status != 0:
            raise BackupError(f"{what}: {_stderr(producer)}")
        if upload_status != 0:
            raise BackupError(f"rclone: {_stderr(upload)}")
        return digest.hexdigest(), size

    def put_secret(self, key: str, text: str) -> None:
        """`text`, encrypted to the recipient, as the object `key`."""
        encrypted = subprocess.run(
            ["age", "--encrypt", "--recipient", self.recipient],
            input=text.encode(),
            capture_output=True,
            check=False,
        )
        if encrypted.returncode != 0:
            raise BackupError(f"age: {one_line(encrypted.stderr.decode(errors='replace'))}")
        upload = subprocess.run(
            ["rclone", *RCLONE_FLAGS, "rcat", self.remote(key)],
            env=self.env,
            input=encrypted.stdout,
            capture_output=True,
            check=False,
            timeout=120,
        )
        if upload.returncode != 0:
            raise BackupError(f"rclone: {one_line(upload.stderr.decode(errors='replace'))}")

    # -- reading -------------------------------------------------------------------
    def stat(self, key: str) -> dict[str, Any] | None:
        entries = self._lsjson(key)
        return entries[0] if entries else None

    def _lsjson(self, key: str) -> list[dict[str, Any]]:
        try:
            listing = self.rclone("lsjson", "--files-only", self.remote(key))
        except BackupError as error:
            if "directory not found" in str(error) or "object not found" in str(error):
                return []
            raise
        entries = json.loads(listing or "[]")
        return entries if isinstance(entries, list) else []

    def dumps(self) -> dict[str, datetime]:
        """Dump names in the bucket (without the .age), with their upload times."""
        found = {}
        for entry in self._lsjson("dumps/"):
            name = str(entry.get("Name", ""))
            if name.endswith(".dump" + SUFFIX):
                modified = str(entry.get("ModTime", ""))
                found[name.removesuffix(SUFFIX)] = _parse_time(modified)
        return found

    def record(self, name: str) -> dict[str, Any]:
        """The JSON written beside an object at upload; empty if there is none."""
        try:
            data = json.loads(self.rclone("cat", self.remote(f"dumps/{name}{SUFFIX}.json")))
        except (BackupError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def checksum(self, name: str) -> tuple[str, int]:
        """SHA-256 and size of the object's bytes as the bucket serves them now."""
        download = subprocess.Popen(
            ["rclone", *RCLONE_FLAGS, "cat", self.remote(f"dumps/{name}{SUFFIX}")],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert download.stdout is not None
        digest = hashlib.sha256()
        size = 0
        try:
            while chunk := download.stdout.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
            status = download.wait(timeout=600)
        finally:
            if download.poll() is None:
                download.kill()
                download.wait()
        if status != 0:
            raise BackupError(f"rclone: {_stderr(download)}")
        return digest.hexdigest(), size

    def download(self, key: str, identity: Path, destination: Path) -> None:
        """Fetch `key` and decrypt it with the private key in `identity` into
        `destination`."""
        download = subprocess.Popen(
            ["rclone", *RCLONE_FLAGS, "cat", self.remote(key)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            decrypted = subprocess.run(
                ["age", "--decrypt", "--identity", str(identity), "--output", str(destination)],
                stdin=download.stdout,
                capture_output=True,
                check=False,
            )
            status = download.wait(timeout=600)
        finally:
            if download.poll() is None:
                download.kill()
                download.wait()
        if status != 0:
            raise BackupError(f"rclone: {_stderr(download)}")
        if decrypted.returncode != 0:
            raise BackupError(f"age: {one_line(decrypted.stderr.decode(errors='replace'))}")

    def delete(self, name: str) -> None:
        key = f"dumps/{name}{SUFFIX}"
        self.rclone("deletefile", self.remote(key))
        # An object can lack its record (an upload interrupted between the two).
        with contextlib.suppress(BackupError):
            self.rclone("deletefile", self.remote(f"{key}.json"))

    def mark_verified(self, name: str, at: float) -> None:
        """Record in the bucket which copy was last verified good, so retention keeps it
        even when run by a new server that has none of this one's records."""
        self.rclone("rcat", self.remote(VERIFIED_KEY), input=json.dumps({"name": name, "at": at}))

    def last_verified(self) -> str | None:
        try:
            data = json.loads(self.rclone("cat", self.remote(VERIFIED_KEY)) or "{}")
        except (BackupError, ValueError):
            return None
        name = data.get("name") if isinstance(data, dict) else None
        return name if isinstance(name, str) and name else None

    def probe(self) -> None:
        """Reach the bucket with these credentials, or a BackupError saying why not."""
        self.rclone("lsf", "--max-depth=1", f"offsite:{self.s3.bucket}/", timeout=60)


def _stderr(process: subprocess.Popen[bytes]) -> str:
    assert process.stderr is not None
    text = process.stderr.read().decode(errors="replace")
    return one_line(text) or f"exit status {process.returncode}"


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return datetime.fromtimestamp(0, UTC)


def age_recipient_works(recipient: str, env: Mapping[str, str] | None = None) -> None:
    """age refuses a malformed public key: find out at start, not at the first upload."""
    result = subprocess.run(
        ["age", "--encrypt", "--recipient", recipient],
        input=b"check",
        capture_output=True,
        check=False,
        env=env,
    )
    if result.returncode != 0:
        detail = one_line(result.stderr.decode(errors="replace"))
        raise BackupError(f"BACKUP_AGE_RECIPIENT is not a usable age public key: {detail}")
