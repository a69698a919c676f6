"""The spool: received files in the cache folder plus their SQLite index.

Layout of the cache folder::

    spool.db            the index (WAL mode)
    incoming/           files still being received; emptied at start-up
    objects/ab/<id>.dcm instances, named by a random id, never by a received value
    outgoing/           per-destination copies that rules changed; emptied at start-up

An instance is acknowledged only after its content is on stable storage
and its index row is committed:

* An instance of up to JOURNAL_MAX_BYTES is renamed into objects/ without a
  flush, and its content is written with its index row, in the same
  committed transaction, to the index's journal table. One flush of the
  SQLite write-ahead log then makes both durable. A flusher thread
  flushes the file system about once a second and then deletes the
  journal rows of the files it covered. At start-up, any journaled file is
  written again from the journal, so a file lost in a crash is restored.
* A larger instance's file is flushed (fsync) and renamed, and its folder
  is flushed before its row is committed.

Instances that arrive together are committed in one transaction (group
commit): the first thread to reach the commit writes the rows of every
instance waiting at that moment, so concurrent associations share the cost
of each flush, and a lone sender waits for no other thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from capacitor.errors import SpoolError
from capacitor.spool.index import InstanceRecord, SpoolIndex

LOGGER = logging.getLogger(__name__)

INDEX_FILE = "spool.db"
INCOMING = "incoming"
OBJECTS = "objects"
OUTGOING = "outgoing"

# Most instance rows written in one group commit.
_MAX_GROUP = 256
# Largest instance made durable through the journal rather than its own flush.
JOURNAL_MAX_BYTES = 64 << 10
# Seconds between file system flushes that empty the journal.
_FLUSH_SECONDS = 1.0


def sync_file_system(path: Path) -> None:
    """Flush every file of the file system holding `path` (Linux syncfs; else sync)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if syncfs(descriptor) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(path))
    finally:
        os.close(descriptor)


def fsync_path(path: Path) -> None:
    """Flush a file or folder to stable storage."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass
class _Pending:
    record: InstanceRecord
    nodes: Sequence[str]
    folder: Path | None  # a folder to flush before the commit, if any
    future: Future[int]
    journal: bytes | None = None


class Spool:
    """Durable storage of received instances and their delivery queue."""

    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = root
        self.durable = durable
        self.incoming = root / INCOMING
        self.objects = root / OBJECTS
        self.outgoing = root / OUTGOING
        for folder in (root, self.incoming, self.objects, self.outgoing):
            folder.mkdir(parents=True, exist_ok=True)
        self.index = SpoolIndex(root / INDEX_FILE, durable)
        self._waiting: list[_Pending] = []
        self._waiting_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._stopping = threading.Event()
        self.on_commit: Callable[[Sequence[str]], None] | None = None

    # life cycle

    def start(self) -> None:
        """Recover from an unclean stop and start the group committer."""
        for folder in (self.incoming, self.outgoing):
            leftovers = list(folder.iterdir())
            for leftover in leftovers:
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
            if leftovers:
                LOGGER.info("Removed %d partial file(s) from %s", len(leftovers), folder)
        requeued = self.index.recover()
        if requeued:
            LOGGER.info("Returned %d interrupted delivery(ies) to the queue", requeued)
        self._restore_journaled()
        self._remove_orphans()
        self._stopping.clear()
        self._flusher = threading.Thread(target=self._flush_loop, name="spool-flush", daemon=True)
        self._flusher.start()

    def stop(self) -> None:
        if self._flusher is not None:
            self._stopping.set()
            self._flusher.join(timeout=30)
            self._flusher = None
        self.flush_journal()
        self.index.close()

    def _restore_journaled(self) -> None:
        """Write journaled instances to their files again; the crash may have lost them."""
        entries = self.index.journal_entries()
        restored = 0
        for _, relative, data in entries:
            if relative is None:
                continue
            path = self.absolute(relative)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            restored += 1
        if entries:
            sync_file_system(self.root)
            self.index.clear_journal([instance_id for instance_id, _, _ in entries])
        if restored:
            LOGGER.info("Rewrote %d instance file(s) from the spool journal", restored)

    def flush_journal(self) -> None:
        """Flush the file system, then drop the journal rows of the files written before."""
        ids = self.index.journal_ids()
        if not ids:
            return
        sync_file_system(self.root)
        self.index.clear_journal(ids)

    def _flush_loop(self) -> None:
        while not self._stopping.wait(_FLUSH_SECONDS):
            try:
                self.flush_journal()
            except Exception as exc:  # noqa: BLE001 - the journal keeps the data until a flush succeeds
                LOGGER.warning("Flushing the spool journal failed: %s", exc)

    def _remove_orphans(self) -> None:
        """Delete object files that no index row names (renamed, then the process died)."""
        known = self.index.known_files()
        removed = 0
        for shard in self.objects.iterdir():
            if not shard.is_dir():
                continue
            for path in shard.iterdir():
                if str(path.relative_to(self.root)) not in known:
                    path.unlink(missing_ok=True)
                    removed += 1
        if removed:
            LOGGER.info("Removed %d unacknowledged file(s) from %s", removed, self.objects)

    # intake

    def new_object_path(self) -> Path:
        """Return a fresh path in objects/, named by a random id."""
        name = uuid.uuid4().hex
        folder = self.objects / name[:2]
        folder.mkdir(exist_ok=True)
        return folder / f"{name}.dcm"

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def store(self, received: Path, record_fields: dict[str, object], nodes: Sequence[str]) -> int:
        """Move a received file into objects/ and index it durably; return its id.

        Raises
        ------
        SpoolError
            If the file could not be flushed, moved or indexed; nothing stays queued.
        OSError
            Passed through from the flush or rename, for the caller to map to a status.
        """
        target = self.new_object_path()
        folder: Path | None = None
        journal: bytes | None = None
        if self.durable and received.stat().st_size <= JOURNAL_MAX_BYTES:
            os.rename(received, target)
            journal = target.read_bytes()
        else:
            if self.durable:
                fsync_path(received)
                folder = target.parent
            os.rename(received, target)
        record = InstanceRecord(file=self.relative(target), **record_fields)  # type: ignore[arg-type]
        pending = _Pending(record, list(nodes), folder, Future(), journal)
        with self._waiting_lock:
            self._waiting.append(pending)
        try:
            while not pending.future.done():
                with self._commit_lock:
                    with self._waiting_lock:
                        group = self._waiting[:_MAX_GROUP]
                        del self._waiting[:_MAX_GROUP]
                    if group:
                        self._commit_group(group)
            return pending.future.result()
        except BaseException as exc:
            target.unlink(missing_ok=True)
            raise SpoolError(f"could not index the received instance: {exc}") from exc

    def _commit_group(self, group: list[_Pending]) -> None:
        try:
            for folder in {p.folder for p in group if p.folder is not None}:
                fsync_path(folder)
            ids = []
            with self.index.intake_transaction() as db:
                for pending in group:
                    ids.append(self.index.insert_instance(db, pending.record, pending.nodes, pending.journal))
        except Exception as exc:  # noqa: BLE001 - every waiter must hear of the failure
            LOGGER.error("Spool commit of %d instance(s) failed: %s", len(group), exc)
            for pending in group:
                pending.future.set_exception(exc)
            return
        for pending, instance_id in zip(group, ids):
            pending.future.set_result(instance_id)
        if self.on_commit is not None:
            nodes = sorted({node for pending in group for node in pending.nodes})
            if nodes:
                self.on_commit(nodes)

    # after delivery

    def discard_delivered(self, instance_ids: Sequence[int]) -> None:
        """Delete the files of instances that every destination has received."""
        finished = self.index.finished_files(instance_ids)
        if not finished:
            return
        self.index.forget_files([instance_id for instance_id, _ in finished])
        for _, relative in finished:
            (self.root / relative).unlink(missing_ok=True)

    def free_bytes(self) -> int:
        usage = shutil.disk_usage(self.root)
        return usage.free
