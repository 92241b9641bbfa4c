"""moto's S3 server (`python -m moto.server`) in a child process on a free loopback port, for S3 and OBS tests.

A child process rather than moto's in-process ThreadedMotoServer: turning on moto's request authentication is a
process-wide setting, and it must not leak into other tests running in the pytest process.

Credentials: data is written while moto authenticates nothing; `enforce_auth(True)` then makes moto check every
request's SigV4 signature against its IAM users (`reader`, allowed s3:*), as S3 does: a wrong secret gets 403
SignatureDoesNotMatch, an unknown key 403 InvalidAccessKeyId.

Known differences from S3 that matter here: moto verifies SigV4 only (no V2); it canonicalizes the query string
as received, so a client that sends `prefix=a/` unescaped but signs `prefix=a%2F` (the OBS SDK does; S3 itself
accepts it) fails moto's check; it has no way to inject 5xx faults (tests use `faults.py` for those).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import boto3
import httpx
from botocore.config import Config

ADMIN = ("admin-ak", "admin-sk")  # any key works while authentication is off
REGION = "us-east-1"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.reader: tuple[str, str] = ("", "")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._process.returncode}")
            try:
                if httpx.get(f"{self.url}/moto-api/", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("moto server did not start in time")
            time.sleep(0.1)  # polling a child process's socket: there is no event to wait on
        self.reader = self.create_user("reader", ["s3:*"])

    def create_user(self, name: str, actions: list[str]) -> tuple[str, str]:
        """An IAM user allowed `actions` on every resource; returns its (access key, secret key)."""
        if "s3:ListBucket" in actions:
            # moto (5.2) authorizes ListObjectsV2 as "s3:ListObjectsV2", an action AWS does not have (AWS asks for
            # s3:ListBucket): grant moto's name too, so a policy means here what it means on AWS.
            actions = [*actions, "s3:ListObjectsV2"]
        iam = self.client("iam", ADMIN)
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
        iam.put_user_policy(UserName=name, PolicyName="allowed", PolicyDocument=json.dumps(policy))
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def client(self, service: str, creds: tuple[str, str]):  # type: ignore[no-untyped-def]
        return boto3.session.Session().client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=creds[0],
            aws_secret_access_key=creds[1],
            config=Config(s3={"addressing_style": "path"}),
        )

    def seed(self, bucket: str, files: dict[str, bytes]) -> None:
        """Create `bucket` holding `files` (each uploaded in one part, so its ETag is its MD5)."""
        s3 = self.client("s3", ADMIN)
        s3.create_bucket(Bucket=bucket)
        for key, data in files.items():
            s3.put_object(Bucket=bucket, Key=key, Body=data)

    def enforce_auth(self, on: bool) -> None:
        # moto's own control endpoint: the number of requests to let through before authenticating.
        response = httpx.post(f"{self.url}/moto-api/reset-auth", content=b"0" if on else b"inf", timeout=5.0)
        response.raise_for_status()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
