"""Throughput of Capacitor against DCMTK storescp, Orthanc and a bare pynetdicom forwarder.

Sends two corpora with DCMTK storescu (1 and 4 parallel senders) to:

* ``storescp``: DCMTK storescp receiving directly (no forwarding)
* ``capacitor``: Capacitor forwarding to a DCMTK storescp sink
* ``orthanc``: Orthanc (Debian package) auto-routing each stored instance to
  the same sink with a Lua script
* ``pynetdicom``: bench/baseline_forwarder.py forwarding to the same sink
* ``relay-bound``: no forwarder. storescu sends each instance both to a
  storescp receiver and to the sink, so the machine does the network and
  file work of a forwarder that stores each instance (one receive, one
  send), in DCMTK's code and without flushes. A forwarder that stores
  instances on disk cannot be faster here.

End-to-end time runs from the first storescu start until the sink holds
every instance. CPU seconds and peak memory (VmHWM) are those of the
receiving process and its child processes, read from /proc; storescp direct is run with --fork, so
its figures cover the parent only. Every DCMTK and Orthanc process runs
with TCP_NODELAY=1, because DCMTK 3.6.7 leaves Nagle's algorithm on
otherwise.

    .venv/bin/python bench/throughput.py [--small 2000] [--ct 300] [--senders 1,4] [--repeat 3]
        [--targets storescp,relay-bound,capacitor,orthanc,pynetdicom] [--json results.json]

Each corpus and sender count is measured in --repeat rounds, each round
taking every target in turn; the table shows each target's median round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from capacitor.synthetic import make_image, write  # noqa: E402

HOST = "127.0.0.1"
ENV = {**os.environ, "TCP_NODELAY": "1"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Extra Capacitor settings from --setting KEY=VALUE, for experiments.
EXTRA_SETTINGS: dict[str, object] = {}
ROUTE_RULES = """\
route "dose reports" { when SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.67" forward to SINK }
route "mammography" { when Modality == "MG" forward to SINK }
route "from the test scanner" { when calling_ae == "TESTSCANNER" drop }
route "everything to the sink" otherwise { forward to SINK }
"""
ORTHANC_LUA = """\
function OnStoredInstance(instanceId, tags, metadata, origin)
   Delete(SendToModality(instanceId, 'sink'))
end
"""


@dataclass
class Result:
    corpus: str
    senders: int
    target: str
    instances: int
    megabytes: float
    seconds: float
    cpu_seconds: float
    peak_mb: float

    @property
    def rate(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_rate(self) -> float:
        return self.megabytes / self.seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def make_corpus(folder: Path, small: int, ct: int) -> dict[str, list[Path]]:
    corpora = {"small": folder / f"small-{small}", "ct": folder / f"ct-{ct}"}
    if not corpora["small"].exists():
        for number in range(small):
            dataset = make_image(study=f"small-{number % 20}", series="s", number=number, rows=32, columns=32)
            write(dataset, corpora["small"] / f"{number:05d}.dcm")
    if not corpora["ct"].exists():
        for number in range(ct):
            dataset = make_image(study=f"ct-{number % 3}", series="ct", number=number, rows=512, columns=512)
            write(dataset, corpora["ct"] / f"{number:05d}.dcm")
    return {name: sorted(path.iterdir()) for name, path in corpora.items()}


def descendants(pid: int) -> list[int]:
    """Return the live descendants of `pid`, from /proc/<pid>/task/<tid>/children."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found  # ended while being read, like storescp's forked children
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            found.extend(descendants(child))
    return found


def proc_usage(pid: int) -> tuple[float, float]:
    """Return CPU seconds and peak resident MB of a running process and its live descendants.

    CPU seconds include children already reaped; peak memory is the sum
    of each process's own peak, so it may add peaks that did not overlap.
    """
    seconds = 0.0
    peak = 0.0
    for member in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue  # ended while being read
        seconds += sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
        for line in status:
            if line.startswith("VmHWM:"):
                peak += int(line.split()[1]) / 1024
    return seconds, peak


class Sink:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True)
        self.process = subprocess.Popen(
            ["storescp", "--fork", "-aet", "SINK", "-od", str(folder), "+uf", str(self.port)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def count(self) -> int:
        return sum(1 for _ in os.scandir(self.folder))

    def stop(self) -> None:
        stop(self.process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_target(target: str, work: Path, sink: Sink) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start the receiver under test; return its process, port and AE title to call."""
    port = free_port()
    log = (work / f"{target}.log").open("wb")
    if target in ("storescp", "relay-bound"):
        folder = work / "direct"
        folder.mkdir()
        command = ["storescp", "--fork", "-aet", "DIRECT", "-od", str(folder), "+uf", str(port)]
        process = subprocess.Popen(command, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        return process, port, "DIRECT"
    if target == "capacitor":
        data = work / "capacitor"
        (data / "rules").mkdir(parents=True)
        (data / "rules" / "10-route.rules").write_text(ROUTE_RULES)
        config = {
            "bindAddress": HOST,
            "scpPort": port,
            "findScpPort": 0,
            "storageCommitScpPort": 0,
            "queryRetrieveScpPort": 0,
            "logLevel": "WARNING",
            "nodes": [{"AeTitle": "SINK", "HostName": HOST, "Port": sink.port}],
            **EXTRA_SETTINGS,
        }
        (data / "config.yml").write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "capacitor", "run", "--data", str(data)]
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        return process, port, "CAPACITOR"
    if target == "pynetdicom":
        command = [sys.executable, str(ROOT / "bench" / "baseline_forwarder.py"), str(port), str(sink.port)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return process, port, "BASELINE"
    if target == "orthanc":
        folder = work / "orthanc"
        folder.mkdir()
        (folder / "route.lua").write_text(ORTHANC_LUA)
        config = {
            "Name": "bench",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "DicomAet": "ORTHANC",
            "DicomPort": port,
            "HttpPort": free_port(),
            "RemoteAccessAllowed": False,
            "DicomCheckCalledAet": False,
            "DicomModalities": {"sink": ["SINK", HOST, sink.port]},
            "LuaScripts": [str(folder / "route.lua")],
            "Plugins": [],
            # Each SendToModality is a job. With the defaults Orthanc writes its
            # job registry to its database after every one, and its rate falls
            # as the run goes on (93 small instances/s over 300, 16/s over 2,000).
            "SaveJobs": False,
            "JobsHistorySize": 0,
            "LogExportedResources": False,
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], env=ENV, stdout=log, stderr=subprocess.STDOUT)
        return process, port, "ORTHANC"
    raise ValueError(f"unknown target {target}")


def send(files: list[Path], receivers: list[tuple[int, str]], senders: int) -> None:
    """Send every file to each receiver (port, called AE title), on `senders` storescu processes per receiver."""
    failures = []

    def run(port: int, called: str, part: list[Path]) -> None:
        result = subprocess.run(
            ["storescu", "-aec", called, "-aet", "BENCH", HOST, str(port), *map(str, part)],
            env=ENV,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            failures.append(result.stderr[-500:])

    threads = [
        threading.Thread(target=run, args=(port, called, files[i::senders]))
        for port, called in receivers
        for i in range(senders)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"storescu failed: {failures[0]}")


def measure(target: str, corpus: str, files: list[Path], senders: int, scratch: Path) -> Result:
    # Earlier targets' files are flushed first, so their write-back does not
    # slow down this target's own flushes.
    os.sync()
    work = Path(tempfile.mkdtemp(prefix=f"{target}-", dir=scratch))
    sink = Sink(work / "sink")
    process, port, called = start_target(target, work, sink)
    try:
        wait_port(port)
        started = time.monotonic()
        receivers = [(port, called)]
        if target == "relay-bound":
            receivers.append((sink.port, "SINK"))
        send(files, receivers, senders)
        if target in ("storescp", "relay-bound"):
            folder = work / "direct"
            while sum(1 for _ in os.scandir(folder)) < len(files) or (
                target == "relay-bound" and sink.count() < len(files)
            ):
                time.sleep(0.01)
        else:
            while sink.count() < len(files):
                if process.poll() is not None:
                    raise RuntimeError(f"{target} exited; see {work}/{target}.log")
                time.sleep(0.01)
        seconds = time.monotonic() - started
        cpu, peak = proc_usage(process.pid)
    finally:
        stop(process)
        sink.stop()
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    shutil.rmtree(work, ignore_errors=True)
    return Result(corpus, senders, target, len(files), megabytes, seconds, cpu, peak)


def measure_once_more_on_failure(target: str, corpus: str, files: list[Path], senders: int, scratch: Path) -> Result:
    """Measure a target; a comparison target whose round fails is measured once more.

    Orthanc 1.10.1 once aborted an association in this benchmark after
    logging ``boost::filesystem::create_directory: No such file or
    directory`` for a folder of its storage area, while its Lua script
    deleted forwarded instances. A failure of Capacitor is never retried.
    """
    try:
        return measure(target, corpus, files, senders, scratch)
    except RuntimeError as exc:
        if target == "capacitor":
            raise
        print(f"{corpus} x{senders} {target}: round failed ({exc}); measuring it once more", flush=True)
        return measure(target, corpus, files, senders, scratch)


def median(results: list[Result]) -> Result:
    """Return the result with the median rate (the lower middle one of an even count)."""
    ordered = sorted(results, key=lambda r: r.rate)
    return ordered[(len(ordered) - 1) // 2]


def report(results: list[Result]) -> str:
    lines = [
        "| corpus | senders | target | instances/s | MB/s | CPU s | peak MB | Capacitor ratio |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        mine = next(
            (r for r in results if r.target == "capacitor" and (r.corpus, r.senders) == (result.corpus, result.senders)),
            None,
        )
        ratio = f"{mine.rate / result.rate:.2f}" if mine and result.target != "capacitor" else "-"
        lines.append(
            f"| {result.corpus} | {result.senders} | {result.target} | {result.rate:.0f} | {result.mb_rate:.1f} "
            f"| {result.cpu_seconds:.1f} | {result.peak_mb:.0f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000, help="instances in the small corpus")
    parser.add_argument("--ct", type=int, default=300, help="instances in the CT corpus")
    parser.add_argument("--senders", default="1,4", help="parallel storescu counts, comma-separated")
    parser.add_argument("--targets", default="storescp,relay-bound,capacitor,orthanc,pynetdicom")
    parser.add_argument("--corpora", default="small,ct")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per corpus and sender count; the median is reported")
    parser.add_argument("--json", type=Path, help="also write every round's results as JSON")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="KEY=VALUE",
        help="extra Capacitor setting (YAML value), for experiments; may repeat",
    )
    args = parser.parse_args()
    for item in args.setting:
        key, value = item.split("=", 1)
        EXTRA_SETTINGS[key] = yaml.safe_load(value)
    scratch = ROOT / "bench" / ".work"
    scratch.mkdir(exist_ok=True)
    corpora = make_corpus(scratch, args.small, args.ct)
    results = []
    every = []
    for corpus in args.corpora.split(","):
        for senders in (int(s) for s in args.senders.split(",")):
            trials: dict[str, list[Result]] = {target: [] for target in args.targets.split(",")}
            # Rounds take every target in turn, so a slow spell of the machine
            # lands on all of them rather than on one.
            for _ in range(args.repeat):
                for target, measured in trials.items():
                    result = measure_once_more_on_failure(target, corpus, corpora[corpus], senders, scratch)
                    print(
                        f"{corpus} x{senders} {target}: {result.rate:.0f} instances/s, {result.mb_rate:.1f} MB/s, "
                        f"CPU {result.cpu_seconds:.1f} s, peak {result.peak_mb:.0f} MB",
                        flush=True,
                    )
                    measured.append(result)
            every.extend(r for measured in trials.values() for r in measured)
            results.extend(median(measured) for measured in trials.values())
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in every], indent=2))


if __name__ == "__main__":
    main()
