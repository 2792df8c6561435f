"""Fixtures the ec2 driver's unit tests share (test_ec2_driver.py, test_ec2_spot.py)."""
from __future__ import annotations

import pytest

from tests.ec2_endpoint import FAKE_KEYS, Ec2Endpoint


@pytest.fixture(scope="module")
def endpoint():
    """moto's EC2 server over HTTP, behind the fault-injecting proxy."""
    with Ec2Endpoint() as ep:
        yield ep


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """AWS's standard credential chain, pointed away from any real configuration on this machine."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEYS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_KEYS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
