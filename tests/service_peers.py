"""Upstream and downstream peers for the service tests: DCMTK servers and pynetdicom peers.

DCMTK wlmscpfs serves a worklist from a folder of files, and dcmqrscp
serves an archive. pynetdicom peers play the parts that no DCMTK tool
offers: recording the bytes of an identifier, failing one C-STORE, and
storage commitment. Every process is stopped by its PID, and all traffic
stays on 127.0.0.1.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.transport import ThreadedAssociationServer

from tests.peers import DCMTK_ENV, HOST, free_port, port_open, stop_process, wait_until

WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
UNCOMPRESSED = [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]


def worklist_item(
    patient_name: str,
    patient_id: str,
    accession: str,
    modality: str = "CT",
    date: str = "20250301",
    station: str = "MOD_CT",
) -> Dataset:
    """Return one Modality Worklist entry with fake patient data."""
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = date
    step.ScheduledProcedureStepStartTime = "090000"
    step.ScheduledPerformingPhysicianName = ""
    step.ScheduledProcedureStepDescription = f"{modality} exam"
    step.ScheduledProcedureStepID = f"SPS{accession}"
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 100"
    item.AccessionNumber = accession
    item.PatientName = patient_name
    item.PatientID = patient_id
    item.PatientBirthDate = "19700101"
    item.PatientSex = "O"
    item.StudyInstanceUID = f"2.25.{abs(hash(accession)) % 10**20}"
    item.RequestedProcedureID = f"RP{accession}"
    item.RequestedProcedureDescription = f"{modality} procedure"
    item.ScheduledProcedureStepSequence = [step]
    return item


class WorklistServer:
    """DCMTK wlmscpfs serving the entries written into its folder."""

    def __init__(self, root: Path, ae_title: str = "RIS") -> None:
        self.root = root
        self.ae_title = ae_title
        self.folder = root / ae_title
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "lockfile").touch()
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / f"wlmscpfs-{self.port}.log"

    def add(self, name: str, item: Dataset) -> None:
        item.file_meta = FileMetaDataset()
        item.file_meta.MediaStorageSOPClassUID = WORKLIST_FIND
        item.file_meta.MediaStorageSOPInstanceUID = "2.25.1"
        item.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        item.save_as(self.folder / f"{name}.wl", enforce_file_format=True)

    def start(self) -> WorklistServer:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["wlmscpfs", "-dfp", str(self.root), str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=DCMTK_ENV,
            )
        wait_until(
            lambda: port_open(self.port), 10, f"wlmscpfs listening on {self.port}"
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def node(self, **fields: Any) -> dict[str, Any]:
        return {
            "AeTitle": self.ae_title,
            "HostName": HOST,
            "Port": self.port,
            "NodeRole": "Worklist",
            **fields,
        }


class Archive:
    """DCMTK dcmqrscp holding the instances given to it, with a table of move destinations."""

    def __init__(
        self, root: Path, ae_title: str = "PACS", hosts: dict[str, int] | None = None
    ) -> None:
        self.root = root
        self.ae_title = ae_title
        self.db = root / "db"
        self.db.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.hosts = dict(hosts or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / f"dcmqrscp-{self.port}.log"

    def add(self, paths: Iterable[Path]) -> None:
        """Index `paths` into the archive's database with dcmqridx."""
        for path in paths:
            target = self.db / path.name
            target.write_bytes(path.read_bytes())
            subprocess.run(
                ["dcmqridx", str(self.db), str(target)], check=True, capture_output=True
            )

    def start(self) -> Archive:
        entries = "\n".join(
            f"h{number} = ({title}, {HOST}, {port})"
            for number, (title, port) in enumerate(self.hosts.items())
        )
        config = self.root / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            f"HostTable BEGIN\n{entries}\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{self.ae_title} {self.db} RW (200, 1024mb) ANY\nAETable END\n",
            encoding="ascii",
        )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "dcmqrscp",
                    "-c",
                    str(config),
                    "--disable-host-lookup",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=DCMTK_ENV,
            )
        wait_until(
            lambda: port_open(self.port), 10, f"dcmqrscp listening on {self.port}"
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def node(self, **fields: Any) -> dict[str, Any]:
        return {
            "AeTitle": self.ae_title,
            "HostName": HOST,
            "Port": self.port,
            "NodeRole": "QueryRetrieve",
            **fields,
        }


@dataclass
class FindResult:
    """What findscu printed and the responses it wrote."""

    returncode: int
    output: str
    responses: list[Dataset]
    files: list[Path]

    @property
    def status(self) -> int | None:
        """Return the status of the last response findscu logged, if any."""
        found = re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", self.output)
        return int(found[-1], 16) if found else None


def findscu(
    port: int,
    called: str,
    keys: Iterable[str],
    folder: Path,
    model: str = "-W",
    calling: str = "MOD_CT",
    extra: Iterable[str] = (),
) -> FindResult:
    """Run DCMTK findscu with `keys` (``-k`` values); return its output and responses."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("rsp*.dcm"):
        old.unlink()
    args = [
        "findscu",
        "-d",
        model,
        "-aet",
        calling,
        "-aec",
        called,
        "-X",
        "-od",
        str(folder),
        *extra,
    ]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run(
        [*args, HOST, str(port)],
        check=False,
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=120,
    )
    files = sorted(folder.glob("rsp*.dcm"))
    return FindResult(
        done.returncode,
        done.stdout + done.stderr,
        [pydicom.dcmread(f) for f in files],
        files,
    )


def dcmtk(
    tool: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool against 127.0.0.1; return the finished process."""
    return subprocess.run(
        [tool, *args],
        check=False,
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=timeout,
    )


class PynetdicomPeer:
    """A pynetdicom listener with the given contexts and handlers, stopped after the test."""

    def __init__(
        self,
        ae_title: str,
        contexts: list[Any],
        handlers: list[tuple[Any, Callable[..., Any]]],
    ) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.ae = AE(ae_title=ae_title)
        for context in contexts:
            self.ae.add_supported_context(
                context.abstract_syntax,
                context.transfer_syntax,
                scu_role=context.scu_role,
                scp_role=context.scp_role,
            )
        self.ae.require_called_aet = False
        self.handlers = handlers
        self.server: ThreadedAssociationServer | None = None

    def start(self) -> PynetdicomPeer:
        self.server = self.ae.start_server(
            (HOST, self.port), block=False, evt_handlers=self.handlers
        )
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def node(self, role: str, **fields: Any) -> dict[str, Any]:
        return {
            "AeTitle": self.ae_title,
            "HostName": HOST,
            "Port": self.port,
            "NodeRole": role,
            **fields,
        }


def context(
    uid: str, scu_role: bool | None = None, scp_role: bool | None = None
) -> Any:
    cx = build_context(uid, UNCOMPRESSED)
    cx.scu_role = scu_role
    cx.scp_role = scp_role
    return cx


@dataclass
class RecordingFindSCP:
    """A C-FIND SCP that records each raw identifier and returns fixed rows."""

    rows: list[Dataset] = field(default_factory=list)
    final_status: int = 0x0000
    identifiers: list[bytes] = field(default_factory=list)
    implicit: list[bool] = field(default_factory=list)
    calling_titles: list[str] = field(default_factory=list)

    def handle(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        self.identifiers.append(event.request.Identifier.getvalue())
        self.implicit.append(event.context.transfer_syntax.is_implicit_VR)
        self.calling_titles.append(event.assoc.requestor.ae_title.strip())
        for row in self.rows:
            yield 0xFF00, row
        yield self.final_status, None


def background(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `target` in a thread; the list receives its return value."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(target()), daemon=True)
    thread.start()
    return thread, box


def service_router(
    router: Callable[..., Any],
    setting: str,
    config: dict[str, Any],
    rules: dict[str, str] | None = None,
) -> Any:
    """Start a router with the listener `setting` on a free port."""
    return router({setting: free_port(), **config}, rules)
