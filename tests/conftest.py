"""Shared fixtures: synthetic instances, DCMTK sinks and router processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capacitor.synthetic import make_image, write
from tests.peers import Destination, RouterProcess, Sink


@pytest.fixture
def make_files(tmp_path: Path) -> Callable[..., list[Path]]:
    """Write `count` synthetic instances of one series and return their paths."""
    counter = iter(range(1_000_000))

    def factory(count: int = 1, folder: str = "send", **kwargs: Any) -> list[Path]:
        batch = next(counter)
        paths = []
        for number in range(1, count + 1):
            dataset = make_image(number=number, **kwargs)
            paths.append(write(dataset, tmp_path / folder / f"{batch}-{number}.dcm"))
        return paths

    return factory


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[Callable[..., Sink]]:
    """Start DCMTK storescp sinks; every one is stopped after the test."""
    started: list[Sink] = []

    def start(ae_title: str = "ARCHIVE", start: bool = True, extra: tuple[str, ...] = ()) -> Sink:
        sink = Sink(tmp_path / f"sink-{ae_title}-{len(started)}", ae_title)
        if start:
            sink.start(extra)
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Callable[..., RouterProcess]]:
    """Make router processes on their own data folders; each is stopped after the test."""
    routers: list[RouterProcess] = []

    def create(config: dict[str, Any] | None = None, rules: dict[str, str] | None = None, start: bool = True) -> RouterProcess:
        process = RouterProcess(tmp_path / f"router-{len(routers)}", config or {}, rules)
        routers.append(process)
        if start:
            process.start()
        return process

    yield create
    for process in routers:
        process.stop()


@pytest.fixture
def destinations() -> Iterator[Callable[..., Destination]]:
    """Start pynetdicom Storage SCPs that record what they receive; each is stopped after the test."""
    started: list[Destination] = []

    def start(ae_title: str = "ARCHIVE", **kwargs: Any) -> Destination:
        destination = Destination(ae_title, **kwargs)
        started.append(destination)
        return destination

    yield start
    for destination in started:
        destination.stop()
