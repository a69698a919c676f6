"""Hot reload: watch config.yml, nodes.yml and the rule files, and apply a change whole.

A change is loaded, validated and compiled completely into a new
RouterState before anything else happens. A change with errors is
rejected: the state in force stays and each error is logged as
``FILE:LINE:COL: error: MESSAGE``. A valid one replaces the state in one
assignment. The Store SCP and the forwarder read the state once per
instance and per batch, so each instance is routed wholly by the old rules
or wholly by the new.

watchfiles reports changes within about a second. The contents of the
files are also compared every few seconds, for file systems that send no
change events (some network and container bind mounts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from watchfiles import Change, watch

from capacitor import logs, metrics
from capacitor.config.loader import CONFIG_FILE, NODES_FILE, Config
from capacitor.errors import FindingsError
from capacitor.rules.engine import RULE_SUFFIX, rule_files
from capacitor.state import RouterState

if TYPE_CHECKING:
    from capacitor.router import Router

LOGGER = logging.getLogger(__name__)

# Settings that a running router cannot change: the spool is open at its
# path with its flush mode, and the watcher runs or not from the start.
RESTART_ONLY = ("cachePath", "syncWrites", "reloadOnChange")
# Settings every listener reads when it starts listening; a change restarts
# the Store SCP and the service listeners.
LISTENER_SETTINGS = (
    "bindAddress",
    "scpPort",
    "myAeTitle",
    "maxAssociations",
    "maxPduSize",
    "acseTimeoutSeconds",
    "dimseTimeoutSeconds",
    "networkTimeoutSeconds",
    "tls.enabled",
    "tls.certificate",
    "tls.privateKey",
    "tls.caCertificates",
    "tls.requireClientCertificate",
)
LOGGING_SETTINGS = ("logLevel", "logFormat", "redactedLogging", "suppressLogAeTitles", "aeTitleCaseSensitive")
API_SETTINGS = ("api.port", "api.host")

# Kubernetes swaps a mounted ConfigMap by renaming this link in the folder.
_CONFIGMAP_LINK = "..data"
# watchfiles reports a batch once the files have been quiet this long (ms),
# so that an editor's truncate-then-write arrives as one change.
_QUIET_MS = 300
_MAX_BATCH_MS = 3000
# Interval of the content comparison that backs up the change events (ms).
_CHECK_INTERVAL_MS = 5000

Fingerprint = tuple[tuple[str, str | None], ...]


def watched_files(config: Config) -> list[Path]:
    files = [config.data_dir / CONFIG_FILE, config.data_dir / NODES_FILE]
    if config.rules_dir.is_dir():
        files += rule_files([config.rules_dir])
    return files


def fingerprint(config: Config) -> Fingerprint:
    """Return each file that the configuration is read from, with a hash of its contents."""
    result = []
    for path in watched_files(config):
        try:
            digest: str | None = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            digest = None
        result.append((str(path), digest))
    return tuple(result)


def changed_settings(old: Config, new: Config) -> list[str]:
    keys = sorted((set(old.settings) | set(new.settings)) - {"nodes"})
    return [key for key in keys if old.settings.get(key) != new.settings.get(key)]


def keep_restart_only(old: RouterState, new: RouterState) -> tuple[RouterState, list[str]]:
    """Return `new` with the values of RESTART_ONLY settings from `old`, and those that differ."""
    pending = [key for key in RESTART_ONLY if old.config.settings[key] != new.config.settings[key]]
    if not pending and old.config.cache_dir == new.config.cache_dir:
        return new, []
    settings = dict(new.config.settings)
    sources = dict(new.config.sources)
    for key in RESTART_ONLY:
        settings[key] = old.config.settings[key]
        sources[key] = old.config.sources.get(key, "default")
    config = dataclasses.replace(
        new.config, cache_dir=old.config.cache_dir, settings=settings, sources=sources
    )
    for key in pending:
        LOGGER.warning(
            "%s changed from %r to %r; the running router keeps %r until it is restarted",
            key,
            old.config.settings[key],
            new.config.settings[key],
            old.config.settings[key],
        )
    return RouterState(config, new.rules), pending


def describe_changes(old: RouterState, new: RouterState, settings: list[str]) -> str:
    old_nodes = {node.ae_title: node for node in old.config.nodes}
    new_nodes = {node.ae_title: node for node in new.config.nodes}
    parts = []
    if settings:
        parts.append(f"settings changed: {', '.join(settings)}")
    for label, names in (
        ("nodes added", sorted(set(new_nodes) - set(old_nodes))),
        ("nodes removed", sorted(set(old_nodes) - set(new_nodes))),
        ("nodes changed", sorted(n for n in set(old_nodes) & set(new_nodes) if old_nodes[n] != new_nodes[n])),
    ):
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    rules = new.rules
    parts.append(f"{len(rules.rules)} rule(s) from {len(rules.files)} file(s)")
    return "; ".join(parts)


def apply_state(router: Router, new: RouterState) -> None:
    """Make `new` the state in force and restart the parts whose settings changed."""
    old = router.state()
    new, _ = keep_restart_only(old, new)
    changed = changed_settings(old.config, new.config)
    router.replace_state(new)
    if logs.is_configured() and set(changed) & set(LOGGING_SETTINGS):
        logs.configure(logs.LogSettings.from_settings(new.config.settings))
    if set(changed) & set(LISTENER_SETTINGS):
        router.restart_store_scp()
    router.services.restart(set(changed), set(LISTENER_SETTINGS) - {"scpPort"})
    if set(changed) & set(API_SETTINGS):
        router.restart_api()
    LOGGER.info("Configuration reloaded: %s", describe_changes(old, new, changed))


class ConfigWatcher:
    """Reload the configuration when its files change, from a thread of its own."""

    def __init__(self, router: Router, loader: Callable[[], RouterState]) -> None:
        self.router = router
        self.loader = loader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reload_lock = threading.Lock()
        self._last = fingerprint(router.state().config)

    def start(self) -> None:
        # _last stays as computed at construction, right after the state was
        # loaded, so a change made while the router starts is applied by the
        # first check.
        self._thread = threading.Thread(target=self._run, name="config-watch", daemon=True)
        self._thread.start()
        LOGGER.info("Watching %s for configuration changes", ", ".join(map(str, self._paths())))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def check(self) -> bool:
        """Reload when the files differ from the last ones loaded; return whether a change was applied."""
        current = fingerprint(self.router.state().config)
        if current == self._last:
            return False
        return self.reload(current)

    def reload(self, current: Fingerprint | None = None) -> bool:
        """Load the files and apply them; return False when they were rejected."""
        with self._reload_lock:
            old = self.router.state()
            self._last = current if current is not None else fingerprint(old.config)
            try:
                new = self.loader()
            except FindingsError as exc:
                self._reject([str(f) for f in exc.findings if f.severity == "error"])
                return False
            except OSError as exc:
                self._reject([f"cannot read the configuration: {exc}"])
                return False
            apply_state(self.router, new)
            metrics.count_reload(applied=True)
            if new.config.rules_dir != old.config.rules_dir:
                self._last = fingerprint(self.router.state().config)
            return True

    def _reject(self, errors: list[str]) -> None:
        for error in errors:
            LOGGER.error("Configuration change rejected, the one in force stays: %s", error)
        metrics.count_reload(applied=False, errors=errors)

    # watching

    def _paths(self) -> list[Path]:
        config = self.router.state().config
        paths = [config.data_dir]
        if config.rules_dir.is_dir() and config.rules_dir != config.data_dir:
            paths.append(config.rules_dir)
        return paths

    def _relevant(self, change: Change, path: str) -> bool:
        config = self.router.state().config
        changed = Path(os.path.normpath(path))
        folder = changed.parent
        if folder == Path(os.path.normpath(config.data_dir)):
            if changed.name in (CONFIG_FILE, NODES_FILE, _CONFIGMAP_LINK):
                return True
            if changed == Path(os.path.normpath(config.rules_dir)):
                return True
        if folder == Path(os.path.normpath(config.rules_dir)):
            return changed.suffix == RULE_SUFFIX or changed.name == _CONFIGMAP_LINK
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            paths = self._paths()
            try:
                self._watch(paths)
            except (OSError, RuntimeError) as exc:
                LOGGER.warning("Watching %s failed: %s; trying again in 5 s", ", ".join(map(str, paths)), exc)
                self._stop.wait(5)
                self._check_safely()

    def _watch(self, paths: list[Path]) -> None:
        """Check the files after each batch of changes and every few seconds, until the folders change."""
        for _changes in watch(
            *paths,
            watch_filter=self._relevant,
            debounce=_MAX_BATCH_MS,
            step=_QUIET_MS,
            stop_event=self._stop,
            rust_timeout=_CHECK_INTERVAL_MS,
            yield_on_timeout=True,
            recursive=False,
            raise_interrupt=False,
        ):
            self._check_safely()
            if self._paths() != paths:
                return

    def _check_safely(self) -> None:
        try:
            self.check()
        except Exception:  # the watcher must outlive any one failed reload
            LOGGER.exception("Applying a configuration change failed")
