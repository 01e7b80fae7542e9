"""A test bucket for off-site backups (tests/stack/compose/s3.yaml): its own CA and TLS
certificate, credentials, an age key pair and a point-in-time passphrase; the .env a stack
needs to use it; and ways to look inside it, through the S3 API (rclone), as an operator's
laptop would."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.stack.harness import TEST_DB_IMAGE, Stack

BUCKET = "berth-backups"
PREFIX = "berth"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_tls(directory: Path, host: str) -> None:
    """A CA (ca.crt) and a certificate for `host` signed by it (s3.crt, s3.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("berth test CA"))
        .issuer_name(_name("berth test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "s3.crt").write_bytes(certificate.public_bytes(pem))
    (directory / "s3.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (directory / "s3.key").chmod(0o644)  # read by the proxy's own user


def age_keypair() -> tuple[str, str]:
    """(public key, private key file contents), from the image's own age-keygen."""
    output = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "age-keygen", f"{TEST_DB_IMAGE}:latest"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    public = next(line.split(": ", 1)[1] for line in output.splitlines() if "public key" in line)
    return public.strip(), output


@dataclass
class Bucket:
    root: Path
    user: str = field(default_factory=lambda: f"berth{secrets.token_hex(4)}")
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    passphrase: str = field(default_factory=lambda: secrets.token_urlsafe(36))

    def __post_init__(self) -> None:
        self.tls = self.root / "tls"
        self.data = self.root / "data"
        write_tls(self.tls, "s3")
        (self.data / BUCKET).mkdir(parents=True, exist_ok=True)
        self.recipient, private = age_keypair()
        self.identity = self.root / "berth-backup.key"
        self.identity.write_text(private)

    def settings(self, **overrides: str) -> dict[str, str]:
        """The stack's .env for this bucket."""
        return {
            "S3_TLS_DIR": str(self.tls),
            "S3_DATA_DIR": str(self.data),
            "S3_ROOT_USER": self.user,
            "S3_ROOT_PASSWORD": self.password,
            "BACKUP_S3_ENDPOINT": "https://s3",
            "BACKUP_S3_BUCKET": BUCKET,
            "BACKUP_S3_PREFIX": PREFIX,
            "BACKUP_S3_ACCESS_KEY_ID": self.user,
            "BACKUP_S3_SECRET_ACCESS_KEY": self.password,
            "BACKUP_S3_CA_FILE": str(self.tls / "ca.crt"),
            "BACKUP_AGE_RECIPIENT": self.recipient,
            "BACKUP_PITR_PASSPHRASE": self.passphrase,
            **overrides,
        }

    # -- looking inside, through the S3 API --------------------------------------------
    def rclone(self, stack: Stack, *args: str, input: bytes | None = None) -> bytes:
        """rclone against the bucket from a container on the stack's offsite network (or,
        with "--entrypoint-sh", a shell script using it)."""
        shell = args[:1] == ("--entrypoint-sh",)
        args = ("-c", *args[1:]) if shell else args
        command = [
            "docker", "run", "--rm", "-i", "--network", f"{stack.project}_offsite",
            "-v", f"{self.tls / 'ca.crt'}:/ca.crt:ro", "--entrypoint", "sh" if shell else "rclone",
            "-e", "RCLONE_CONFIG=/dev/null", "-e", "RCLONE_CA_CERT=/ca.crt",
            "-e", "RCLONE_CONFIG_T_TYPE=s3", "-e", "RCLONE_CONFIG_T_PROVIDER=Other",
            "-e", "RCLONE_CONFIG_T_ENDPOINT=https://s3",
            "-e", "RCLONE_CONFIG_T_FORCE_PATH_STYLE=true",
            "-e", f"RCLONE_CONFIG_T_ACCESS_KEY_ID={self.user}",
            "-e", f"RCLONE_CONFIG_T_SECRET_ACCESS_KEY={self.password}",
            f"{TEST_DB_IMAGE}:latest", *args,
        ]  # fmt: skip
        result = subprocess.run(command, input=input, capture_output=True, timeout=120)
        if result.returncode != 0:
            raise AssertionError(f"rclone {' '.join(args)}: {result.stderr.decode()}")
        return result.stdout

    def newest_copy(self, stack: Stack) -> tuple[str, bytes, dict[str, Any]]:
        """The newest encrypted dump in the bucket: (name, bytes, the record beside it).
        Read in one go: retention may prune it as soon as a newer one arrives."""
        dumps = self.remote("dumps")
        script = (
            f'name=$(rclone lsf --include "*.dump.age" {dumps} | sort | tail -n 1) && '
            f'echo "$name" && rclone cat "{dumps}/$name.json" && echo && '
            f'rclone cat "{dumps}/$name" | base64 -w 0'
        )
        for _ in range(5):
            output = self.rclone(stack, "--entrypoint-sh", script).decode().split("\n")
            if len(output) >= 3 and output[1].strip():
                name, record, data = output[0], output[1], output[2]
                return name.removesuffix(".age"), base64.b64decode(data), json.loads(record)
        raise AssertionError(f"no complete copy in the bucket: {output}")

    def remote(self, key: str) -> str:
        return f"t:{BUCKET}/{PREFIX}/{key}"

    def files(self, stack: Stack, under: str) -> dict[str, int]:
        """Object names (relative to `under`) and sizes."""
        listing = self.rclone(stack, "lsjson", "-R", "--files-only", self.remote(under))
        entries: list[dict[str, Any]] = json.loads(listing or b"[]")
        return {entry["Path"]: int(entry["Size"]) for entry in entries}

    def dumps(self, stack: Stack) -> list[str]:
        """Encrypted dump objects, oldest first."""
        return sorted(name for name in self.files(stack, "dumps") if name.endswith(".age"))

    def read(self, stack: Stack, key: str) -> bytes:
        return self.rclone(stack, "cat", self.remote(key))

    def write(self, stack: Stack, key: str, data: bytes) -> None:
        self.rclone(stack, "rcat", self.remote(key), input=data)

    def decrypt(self, data: bytes) -> bytes:
        """age --decrypt with the private key, as on the operator's machine."""
        result = subprocess.run(
            ["docker", "run", "--rm", "-i", "-v", f"{self.identity}:/key:ro",
             "--entrypoint", "age", f"{TEST_DB_IMAGE}:latest", "--decrypt", "-i", "/key"],
            input=data, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"age --decrypt: {result.stderr.decode()}")
        return result.stdout

    def dump_table(self, dump: bytes, table: str) -> str:
        """A table's data as it is inside a (decrypted) dump: COPY text."""
        result = subprocess.run(
            ["docker", "run", "--rm", "-i", "--entrypoint", "sh", f"{TEST_DB_IMAGE}:latest",
             "-c", f"cat > /tmp/dump && pg_restore --data-only --table={table} -f - /tmp/dump"],
            input=dump, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"pg_restore: {result.stderr.decode()}")
        return result.stdout.decode()


def is_pg_dump_archive(data: bytes) -> tuple[bool, str]:
    """pg_restore --list on these bytes: (readable, what it said)."""
    result = subprocess.run(
        ["docker", "run", "--rm", "-i", "--entrypoint", "sh", f"{TEST_DB_IMAGE}:latest",
         "-c", "cat > /tmp/dump && pg_restore --list /tmp/dump"],
        input=data, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    return result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")


def restore_to(
    stack: Stack, target: str, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """backup/restore-to, as an operator runs it from the checkout, against this stack."""
    files = [*stack.files, *(f"tests/stack/compose/{name}" for name in stack.overrides)]
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": stack.project,
        "COMPOSE_FILE": ":".join(files),
        "COMPOSE_ENV_FILES": str(stack.env_file),
    }
    result = subprocess.run(
        [str(stack.root / "backup" / "restore-to"), target], cwd=stack.root, env=env,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"restore-to {target} exited {result.returncode}:\n{result.stderr}")
    return result


def scrape(stack: Stack) -> dict[str, float]:
    """The backup service's metrics, fetched from another container on its network (the
    app's), as a Prometheus there would."""
    script = (
        "import urllib.request as u; print(u.urlopen('http://backup:9102/metrics').read().decode())"
    )
    text = stack.run("exec", "-T", "app", "python", "-c", script).stdout
    samples = re.findall(r"^(berth_backup_\S+) (\S+)$", text, re.MULTILINE)
    return {name: float(value) for name, value in samples}
