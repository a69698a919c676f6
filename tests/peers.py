"""Real DICOM peers for the tests: the router as a process, DCMTK tools, port picking.

Every process started here is stopped by its PID. All traffic stays on
127.0.0.1.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent

# DCMTK 3.6.7 leaves Nagle's algorithm on unless this is set.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_worker_number = int(_worker[2:]) if _worker[2:].isdigit() else 0
# Each xdist worker takes its own block of 400 ports from TEST_PORT_BASE on,
# so that test runs started side by side can be given separate ranges.
_base = int(os.environ.get("TEST_PORT_BASE", "30000")) + _worker_number * 400
_ports = itertools.count(_base)


def free_port() -> int:
    """Return a port of this worker's block that nothing listens on."""
    for port in _ports:
        if port >= _base + 400:
            raise RuntimeError("test port block exhausted")
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("unreachable")


def wait_until(predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns a true value; fail with `message` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {message}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((HOST, port)) == 0


def process_running(pid: int) -> bool:
    """Return whether `pid` is a process that has not ended (a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for_end(pids: list[int], when: str) -> None:
    """Wait up to 10 s until none of `pids` is running; `when` completes the failure message."""
    wait_until(lambda: not any(process_running(pid) for pid in pids), 10, f"child processes {pids} ending {when}")


def stop_process(process: subprocess.Popen[Any], timeout: float = 15) -> None:
    """Stop `process` by its PID: SIGTERM, then SIGKILL if it does not exit."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class Sink:
    """A DCMTK storescp that stores every instance it receives in a folder."""

    def __init__(self, folder: Path, ae_title: str = "ARCHIVE", port: int | None = None) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder.parent / f"storescp-{ae_title}-{self.port}.log"

    def start(self, extra: Iterable[str] = ()) -> Sink:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["storescp", "-aet", self.ae_title, "-od", str(self.folder), *extra, str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=DCMTK_ENV,
            )
        wait_until(lambda: port_open(self.port), 10, f"storescp {self.ae_title} listening on {self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def files(self) -> list[Path]:
        """Return the instances storescp has finished writing.

        storescp writes each file in place under its final name, so a file
        that storescp still has open may be incomplete and is left out.
        """
        if not self.folder.exists():
            return []
        writing = self._open_files()
        return sorted(
            p
            for p in self.folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and os.path.realpath(p) not in writing
        )

    def _open_files(self) -> set[str]:
        if self.process is None:
            return set()
        descriptors = Path(f"/proc/{self.process.pid}/fd")
        paths = set()
        try:
            entries = list(descriptors.iterdir())
        except OSError:
            return set()  # the process has ended, so it writes nothing
        for entry in entries:
            try:
                paths.add(os.readlink(entry))
            except OSError:
                continue  # the descriptor was closed meanwhile
        return paths

    def wait_for(self, count: int, timeout: float = 30) -> list[Path]:
        wait_until(
            lambda: len(self.files()) >= count,
            timeout,
            f"{self.ae_title} to hold {count} instance(s); it holds {len(self.files())}",
        )
        return self.files()

    def node(self, **fields: Any) -> dict[str, Any]:
        """Return this sink as a node entry for config.yml."""
        return {"AeTitle": self.ae_title, "HostName": HOST, "Port": self.port, **fields}


def storescu(
    port: int,
    files: Iterable[Path],
    called: str = "CAPACITOR",
    calling: str = "MODALITY",
    extra: Iterable[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Send `files` with DCMTK storescu; return the finished process."""
    return subprocess.run(
        ["storescu", "-aec", called, "-aet", calling, *extra, HOST, str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=timeout,
    )


# Settings of the router's listener ports; start() waits until each enabled one listens.
LISTENER_PORTS = ("scpPort", "findScpPort", "storageCommitScpPort", "queryRetrieveScpPort")


class RouterProcess:
    """``capacitor run`` in a child process, on a data folder made for the test."""

    def __init__(self, root: Path, config: Mapping[str, Any], rules: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = {"bindAddress": HOST, "scpPort": free_port(), "findScpPort": 0,
                       "storageCommitScpPort": 0, "queryRetrieveScpPort": 0,
                       "retryInitialDelaySeconds": 0.5, "retryMaxDelaySeconds": 2,
                       "minFreeSpace": 0, **config}
        self.write_config()
        rules_dir = self.data / "rules"
        rules_dir.mkdir(exist_ok=True)
        for name, text in (rules or {}).items():
            (rules_dir / name).write_text(text, encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "router.log"
        self.env: dict[str, str] = {}
        # The command up to ``run``; a test may start the router through a wrapper.
        self.launcher: list[str] = [sys.executable, "-m", "capacitor"]

    @property
    def port(self) -> int:
        return int(self.config["scpPort"])

    @property
    def cache(self) -> Path:
        return self.data / "cache"

    @property
    def api_port(self) -> int:
        return int(self.config.get("api", {}).get("port", 0))

    def write_config(self) -> None:
        (self.data / "config.yml").write_text(yaml.safe_dump(dict(self.config)), encoding="utf-8")

    def start(self, wait: bool = True) -> RouterProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("CAPACITOR_DATA", None)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.launcher, "run", "--data", str(self.data)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        if wait and self.port:
            wait_until(self._listening, 30, f"router listening on its ports; log:\n{self.log_text()}")
        if wait and self.api_port:
            wait_until(lambda: port_open(self.api_port), 30, f"HTTP endpoint on {self.api_port}")
        return self

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"router exited with {self.process.returncode}; log:\n{self.log_text()}")
        return all(port_open(int(self.config[name])) for name in LISTENER_PORTS if self.config.get(name))

    def stop(self) -> int | None:
        """Stop the router with SIGTERM; its child processes must end with it."""
        if self.process is None:
            return None
        children = self.children()
        stop_process(self.process)
        code = self.process.returncode
        self.process = None
        wait_for_end(children, "with the router")
        return code

    def children(self) -> list[int]:
        """Return the PIDs of the router's child processes (the forwarding process)."""
        if self.process is None or self.process.poll() is not None:
            return []
        found = []
        try:
            tasks = list(Path(f"/proc/{self.process.pid}/task").iterdir())
        except OSError:
            return []  # ended meanwhile
        for task in tasks:
            try:
                found.extend(int(pid) for pid in (task / "children").read_text().split())
            except OSError:
                continue
        return found

    def kill9(self) -> None:
        """Kill the router with SIGKILL and wait until its child processes have ended too."""
        if self.process is not None:
            children = self.children()
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None
            wait_for_end(children, "after the router was killed")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 20, count: int = 1) -> str:
        """Wait until the log contains `text` `count` times; return the log."""
        wait_until(
            lambda: self.log_text().count(text) >= count,
            timeout,
            f"{text!r} {count} time(s) in the router log:\n{self.log_text()}",
        )
        return self.log_text()

    def http_get(self, path: str) -> tuple[int, str]:
        """Return the status and body of GET `path` on the HTTP endpoint."""
        url = f"http://{HOST}:{self.api_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metric(self, name: str, **labels: str) -> float | None:
        """Return the value of the sample `name` with `labels` from /metrics, or None."""
        status, body = self.http_get("/metrics")
        assert status == 200, body
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run another capacitor subcommand on the same data folder."""
        return subprocess.run(
            [sys.executable, "-m", "capacitor", *args, "--data", str(self.data)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )

    def delivery_states(self) -> dict[str, dict[str, int]]:
        """Return {node: {state: count}} read from the spool index."""
        import sqlite3

        path = self.cache / "spool.db"
        if not path.exists():
            return {}
        with sqlite3.connect(path, timeout=30) as db:
            rows = db.execute("SELECT node, state, COUNT(*) FROM deliveries GROUP BY node, state").fetchall()
        states: dict[str, dict[str, int]] = {}
        for node, state, count in rows:
            states.setdefault(node, {})[state] = count
        return states


class Destination:
    """A pynetdicom Storage SCP that records what it receives and answers chosen statuses.

    Parameters
    ----------
    syntaxes : list of str
        Transfer syntaxes it accepts, for every storage SOP class.
    status : callable, optional
        Maps the received dataset to the status (an int, or a Dataset with
        Status and ErrorComment) to answer; 0x0000 when not given.
    """

    def __init__(self, ae_title: str = "ARCHIVE", syntaxes: list[str] | None = None, status: Any = None, maximum_pdu: int | None = None) -> None:
        from pynetdicom import AE, StoragePresentationContexts, evt

        self.ae_title = ae_title
        self.port = free_port()
        self.received: list[dict[str, Any]] = []
        self.status = status
        self.ae = AE(ae_title=ae_title)
        syntaxes = syntaxes or ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
        for context in StoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, syntaxes)
        if maximum_pdu is not None:
            self.ae.maximum_pdu_size = maximum_pdu
        self.server = self.ae.start_server(
            (HOST, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: Any) -> Any:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        self.received.append(
            {
                "uid": str(dataset.SOPInstanceUID),
                "syntax": str(event.context.transfer_syntax),
                "priority": int(event.request.Priority),
                "calling_ae": event.assoc.requestor.ae_title,
                "dataset": dataset,
            }
        )
        return self.status(dataset) if self.status else 0x0000

    def uids(self) -> list[str]:
        return [item["uid"] for item in self.received]

    def node(self, **fields: Any) -> dict[str, Any]:
        return {"AeTitle": self.ae_title, "HostName": HOST, "Port": self.port, **fields}

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
