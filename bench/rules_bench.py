"""Benchmark of rule evaluation: route with and without the equality index, and mutate.

Run from the repository root:

    PYTHONPATH=. python bench/rules_bench.py [--datasets 10000] [--files 1000]

It prints one line per measurement. Figures depend on the machine; record
them with its description in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset

from capacitor.rules.engine import RuleSet, compile_text
from capacitor.rules.rewrite import mutated_copy
from capacitor.rules.routeindex import RouteIndex
from capacitor.rules.values import RuleContext
from capacitor.synthetic import make_image, write

MODALITIES = ["CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "XA", "SR", "OT", "RF"]
CALLED = [f"NODE{n}" for n in range(40)]
NODES = ["ARCHIVE", "RESEARCH"] + [f"DEST{n}" for n in range(50)]
MUTATIONS = """
mutate "clean up for research" for RESEARCH {
    when PatientID exists and not (Modality in ["SR", "PR"])
    set PatientID = hash(PatientID, 10)
    set StudyDescription = "RESEARCH {StudyDescription}"
    replace InstitutionName /^example.*/i with "St Mary"
    delete PatientBirthDate
    delete (0009,"ACME 1.1",10)
    delete private
}
"""


def route_rules(count: int) -> str:
    """Return `count` route rules; most test equality on Modality, SOPClassUID or called_ae."""
    lines = []
    for number in range(count):
        modality = MODALITIES[number % len(MODALITIES)]
        node = NODES[2 + number % 50]
        if number % 10 == 9:
            condition = f'StudyDescription contains "{modality}{number}"'
        elif number % 3 == 0:
            condition = f'Modality == "{modality}" and called_ae == "{CALLED[number % 40]}"'
        elif number % 3 == 1:
            condition = f'SOPClassUID == "1.2.840.10008.5.1.4.1.1.{number}"'
        else:
            condition = f'called_ae in ["{CALLED[number % 40]}", "OTHER{number}"] and InstanceNumber > 3'
        lines.append(f'route "rule {number}" {{ when {condition}\n forward to {node} }}')
    lines.append('route "fallback" otherwise { forward to ARCHIVE }')
    return "\n".join(lines) + "\n"


def datasets(count: int) -> list[tuple[Dataset, RuleContext]]:
    items = []
    for number in range(count):
        dataset = make_image(
            number=number % 50 + 1,
            series=f"series-{number // 50}",
            modality=MODALITIES[number % len(MODALITIES)],
            rows=8,
            columns=8,
        )
        context = RuleContext("MODALITY", CALLED[number % 40], "127.0.0.1")
        items.append((dataset, context))
    return items


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def without_index(rule_set: RuleSet) -> RuleSet:
    """Return a copy of `rule_set` whose route rules are all evaluated, as before the index."""
    plain = RuleSet(rule_set.rules)
    rules = [r for r in plain.of_kind("route") if not r.otherwise]
    plain.__dict__["_route_index"] = RouteIndex(rules, always=list(range(len(rules))))
    return plain


def bench_route(items: list[tuple[Dataset, RuleContext]]) -> None:
    for count in (10, 100, 1000):
        rule_set = compile_text(route_rules(count), NODES)
        for label, candidate in (("indexed", rule_set), ("full scan", without_index(rule_set))):
            seconds = timed(lambda rules=candidate: [rules.route(d, c, None) for d, c in items])
            print(
                f"route  {count:5d} rules, {label:9s}: {seconds:7.2f} s for {len(items)} datasets, "
                f"{seconds / len(items) * 1e6:8.1f} us per dataset"
            )


def bench_mutate(items: list[tuple[Dataset, RuleContext]], files: int) -> None:
    rule_set = compile_text(MUTATIONS, NODES)
    copies = [copy.deepcopy(d) for d, _ in items]
    seconds = timed(lambda: [rule_set.mutate(d, c, destination="RESEARCH") for d, (_, c) in zip(copies, items)])
    print(f"mutate in memory: {seconds:7.2f} s for {len(items)} datasets, {seconds / len(items) * 1e6:8.1f} us per dataset")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        paths = [write(make_image(number=n, rows=256, columns=256), root / "in" / f"{n}.dcm") for n in range(files)]
        context = RuleContext("MODALITY", "CAPACITOR", "127.0.0.1")
        seconds = timed(lambda: [mutated_copy(rule_set, p, context, "RESEARCH", root / "out") for p in paths])
        print(
            f"mutated copy on disk (read, mutate, write; 128 KiB pixel data): {seconds:7.2f} s "
            f"for {files} files, {seconds / files * 1e3:6.2f} ms per file"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=10_000, help="datasets routed per rule set size")
    parser.add_argument("--files", type=int, default=1_000, help="files for the on-disk mutate measurement")
    args = parser.parse_args()
    print(f"Python {platform.python_version()} on {platform.machine()}, {platform.processor() or 'unknown CPU'}")
    items = datasets(args.datasets)
    bench_route(items)
    bench_mutate(items, args.files)


if __name__ == "__main__":
    main()
