"""The container image, run without a container engine.

The Dockerfile's ENTRYPOINT, CMD, ENV and HEALTHCHECK are read from the file
and run here as they would run in the image, with /data and /cache mapped to
temporary folders.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.peers import HOST, REPO, free_port, port_open, wait_until

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile's (INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            pairs.append((keyword.upper(), arguments.strip()))
    return pairs


def last(keyword: str) -> str:
    return [arguments for name, arguments in instructions() if name == keyword][-1]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, arguments in instructions():
        if name == "ENV":
            for item in shlex.split(arguments):
                name, _, value = item.partition("=")
                env[name] = value
    return env


class Image:
    """The image's commands and environment with /data and /cache in `root`."""

    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.cache = root / "cache"
        self.data.mkdir()
        self.cache.mkdir()

    def path(self, text: str) -> str:
        return text.replace("/data", str(self.data)).replace("/cache", str(self.cache))

    def command(self, exec_form: list[str]) -> list[str]:
        assert exec_form[0] == "capacitor", exec_form
        return [sys.executable, "-m", "capacitor", *(self.path(a) for a in exec_form[1:])]

    def env(self, **settings: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CAPACITOR_")}
        return {**base, **{k: self.path(v) for k, v in image_env().items()}, **settings}

    def entry_point(self) -> list[str]:
        return self.command([*json.loads(last("ENTRYPOINT")), *json.loads(last("CMD"))])

    def healthcheck(self) -> list[str]:
        arguments = last("HEALTHCHECK")
        return self.command(json.loads(arguments[arguments.index("CMD") + 3 :]))


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return Image(tmp_path)


def start(image: Image, log: Path, **settings: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(image.entry_point(), stdout=output, stderr=subprocess.STDOUT, env=image.env(**settings), cwd=REPO)


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def test_image_facts():
    assert last("FROM").startswith("python:3.11-slim")
    assert last("USER") == "1000:1000"
    assert json.loads(last("VOLUME")) == ["/data", "/cache"]
    assert last("EXPOSE").split() == ["1040", "1041", "1042", "2763"]
    assert image_env()["CAPACITOR_DATA"] == "/data"
    assert "--write-defaults" in json.loads(last("CMD"))


def test_entry_point_on_empty_data_folder(image, tmp_path):
    port, api_port = free_port(), free_port()
    settings = {
        "CAPACITOR_SCP_PORT": str(port),
        "CAPACITOR_BIND_ADDRESS": HOST,
        "CAPACITOR_MY_AE_TITLE": "CONTAINER",
        "CAPACITOR_API_PORT": str(api_port),
        "CAPACITOR_FIND_SCP_PORT": "0",
        # Not the default ports, which a router started beside the tests may hold.
        "CAPACITOR_STORAGE_COMMIT_SCP_PORT": str(free_port()),
        "CAPACITOR_QUERY_RETRIEVE_SCP_PORT": str(free_port()),
        "CAPACITOR_LOG_FORMAT": "json",
    }
    log = tmp_path / "entry.log"
    process = start(image, log, **settings)
    try:
        wait_until(lambda: port_open(port) or process.poll() is not None, 30, "router listening")
        assert process.poll() is None, log.read_text()

        shipped_rules = sorted(p.name for p in (REPO / "rules").glob("*.rules"))
        assert (image.data / "config.yml").read_text() == (REPO / "config.yml").read_text()
        assert sorted(p.name for p in (image.data / "rules").iterdir()) == shipped_rules
        assert (image.cache / "spool.db").is_file()
        assert not (image.data / "cache").exists()
        # The HTTP endpoint starts after the Store SCP.
        wait_until(lambda: port_open(api_port), 30, "HTTP endpoint listening")

        health = subprocess.run(image.healthcheck(), capture_output=True, text=True, env=image.env(**settings), timeout=60, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        assert f"C-ECHO to CONTAINER at 127.0.0.1:{port}: success" in health.stdout
    finally:
        code = stop(process)

    assert code == 0
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(json.loads(line)["message"].startswith("Capacitor started") for line in lines)


def test_healthcheck_fails_when_router_is_down(image):
    port = free_port()
    settings = {"CAPACITOR_SCP_PORT": str(port), "CAPACITOR_BIND_ADDRESS": HOST}

    health = subprocess.run(image.healthcheck(), capture_output=True, text=True, env=image.env(**settings), timeout=60, check=False)

    assert health.returncode == 1
    assert f"C-ECHO to CAPACITOR at {HOST}:{port}: cannot connect: [Errno 111] Connection refused" in health.stdout


def test_existing_configuration_is_kept(image, tmp_path):
    port = free_port()
    config = {
        "scpPort": port,
        "bindAddress": HOST,
        "findScpPort": 0,
        "storageCommitScpPort": 0,
        "queryRetrieveScpPort": 0,
        "myAeTitle": "MINE",
        "nodes": [],
    }
    (image.data / "config.yml").write_text(yaml.safe_dump(config))
    process = start(image, tmp_path / "entry.log")
    try:
        wait_until(lambda: port_open(port) or process.poll() is not None, 30, "router listening")
        assert process.poll() is None
    finally:
        stop(process)

    assert yaml.safe_load((image.data / "config.yml").read_text()) == config
    assert not (image.data / "rules").exists()


def test_environment_overrides_show_their_source(image):
    env = image.env(CAPACITOR_MY_AE_TITLE="FROM_ENV", CAPACITOR_API_PORT="9100", CAPACITOR_SUPPRESS_LOG_AE_TITLES="HEALTHCHECK,PROBE")
    command = image.command(["capacitor", "config", "show", "--format", "json"])

    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    settings = {row["key"]: row for row in json.loads(result.stdout)["settings"]}
    assert settings["myAeTitle"]["value"] == "FROM_ENV"
    assert settings["myAeTitle"]["source"] == "CAPACITOR_MY_AE_TITLE"
    assert settings["api.port"]["value"] == 9100
    assert settings["api.port"]["source"] == "CAPACITOR_API_PORT"
    assert settings["suppressLogAeTitles"]["value"] == ["HEALTHCHECK", "PROBE"]


def test_misspelt_variable_stops_entry_point(image, tmp_path):
    log = tmp_path / "entry.log"
    process = start(image, log, CAPACITOR_API_PROT="9100")

    code = process.wait(timeout=60)

    assert code == 1
    assert "CAPACITOR_API_PROT names no setting; did you mean CAPACITOR_API_PORT?" in log.read_text()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_unwritable_data_folder_is_reported(image, tmp_path):
    image.data.chmod(0o500)
    log = tmp_path / "entry.log"
    try:
        code = start(image, log).wait(timeout=60)
    finally:
        image.data.chmod(0o700)

    assert code == 1
    assert f"cannot write the default configuration to {image.data}" in log.read_text()
