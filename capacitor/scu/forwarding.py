"""Entry point of the forwarding process: ``python -m capacitor.scu.forwarding FD``.

FD is the child's end of the socket pair to the main process. SIGTERM,
SIGINT and SIGHUP are ignored before anything slow is imported. A signal
sent to every process of the router then leaves this one running, and
the main process stops it in order.
"""

import signal
import sys

if __name__ == "__main__":
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)

    from multiprocessing.connection import Connection

    from capacitor.scu.process import run_forwarder

    run_forwarder(Connection(int(sys.argv[1])))
