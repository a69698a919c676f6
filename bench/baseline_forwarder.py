"""A bare pynetdicom receive-then-forward process: the baseline Capacitor is compared with.

It stores each received dataset in a temporary file (no fsync, no index, no
rules) and a single thread forwards the files, unparsed, over one reused
association with TCP_NODELAY set and pynetdicom's reactor race closed.

    python bench/baseline_forwarder.py LISTEN_PORT SINK_PORT [SINK_AE]
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import tempfile
import threading
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, _config, evt

from capacitor.netutil import set_nodelay
from capacitor.scu.gate import install_gate

_config.STORE_RECV_CHUNKED_DATASET = True
_config.STORE_SEND_CHUNKED_DATASET = True

SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
work: queue.Queue[tuple[Path, str] | None] = queue.Queue()
folder = Path(tempfile.mkdtemp(prefix="baseline-"))


def handle_store(event: evt.Event) -> int:
    # pynetdicom deletes its temporary file after the handler, so keep a link.
    target = folder / f"{event.request.AffectedSOPInstanceUID}.dcm"
    os.link(event.dataset_path, target)
    work.put((target, str(event.request.AffectedSOPClassUID)))
    return 0x0000


def forward(sink_port: int, sink_ae: str) -> None:
    ae = AE(ae_title="BASELINE")
    assoc = None
    proposed: set[str] = set()
    while True:
        item = work.get()
        if item is None:
            break
        path, sop_class = item
        if assoc is None or not assoc.is_established or sop_class not in proposed:
            if assoc is not None and assoc.is_established:
                assoc.release()
            proposed.add(sop_class)
            ae.requested_contexts = []
            for uid in proposed:
                for syntax in SYNTAXES:
                    # One context per syntax, so the file goes out exactly as received.
                    ae.add_requested_context(uid, [syntax])
            assoc = ae.associate(
                "127.0.0.1", sink_port, ae_title=sink_ae, evt_handlers=[(evt.EVT_CONN_OPEN, install_gate)]
            )
        assoc.send_c_store(path)
        path.unlink()
    if assoc is not None and assoc.is_established:
        assoc.release()


def main() -> None:
    listen_port, sink_port = int(sys.argv[1]), int(sys.argv[2])
    sink_ae = sys.argv[3] if len(sys.argv) > 3 else "SINK"
    ae = AE(ae_title="BASELINE")
    ae.maximum_associations = 50
    ae.maximum_pdu_size = 262144
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, SYNTAXES)
    forwarder = threading.Thread(target=forward, args=(sink_port, sink_ae), daemon=True)
    forwarder.start()
    server = ae.start_server(
        ("127.0.0.1", listen_port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, handle_store), (evt.EVT_CONN_OPEN, set_nodelay)],
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    work.put(None)
    forwarder.join(10)


if __name__ == "__main__":
    main()
