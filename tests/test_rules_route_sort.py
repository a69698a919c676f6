"""Route rule order, otherwise, drop, the equality index, and sort keys."""

from __future__ import annotations

import random

import pytest
from pydicom.dataset import Dataset

from capacitor.rules.engine import RuleSet, compile_text
from capacitor.rules.values import RuleContext
from capacitor.synthetic import make_image

NODES = ["ARCHIVE", "CT_PACS", "MR_PACS", "REPORTS", "PACS_A", "CONTRAST_WS", "WS1", "MG_WS"]
CONTEXT = RuleContext("MODALITY", "CAPACITOR", "127.0.0.1")


def route(text: str, dataset: Dataset, original: str | None = None, context: RuleContext = CONTEXT) -> list[str]:
    return compile_text(text, NODES).route(dataset, context, original).destinations


FALLBACK = (
    'route "ct" { when Modality == "CT" forward to CT_PACS }\n'
    'route "fallback" otherwise { forward to ARCHIVE }\n'
)


def test_fallback_only_when_nothing_else_matched():
    assert route(FALLBACK, make_image(modality="CT")) == ["CT_PACS"]
    assert route(FALLBACK, make_image(modality="MR")) == ["ARCHIVE"]


def test_all_matches_fire_without_fallback():
    text = (
        'route "ct" { when Modality == "CT" forward to CT_PACS }\n'
        'route "fallback" otherwise { forward to ARCHIVE }\n'
        'route "doe" { when PatientName == "DOE^JANE" forward to WS1 }\n'
    )
    assert route(text, make_image(modality="CT")) == ["CT_PACS", "WS1"]


def test_drop_original_and_drop():
    text = (
        'route "reports" { when SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"\n'
        "  forward to REPORTS\n  drop original\n}\n"
        'route "discard" { when Modality == "OT"\n drop }\n'
        'route "later" { forward to ARCHIVE }\n'
    )
    secondary = make_image(sop_class="1.2.840.10008.5.1.4.1.1.7", modality="SC")
    result = compile_text(text, NODES).route(secondary, CONTEXT, "WS1")
    dropped = compile_text(text, NODES).route(make_image(modality="OT"), CONTEXT, "WS1")

    assert result.destinations == ["REPORTS", "ARCHIVE"]
    assert dropped.destinations == []
    assert dropped.dropped_by == "discard"


def test_save_template_fills_placeholders():
    text = 'route "keep" { save to "/archive/{PatientID}/{Modality}-{InstanceNumber}.dcm" }\n'
    result = compile_text(text, NODES).route(make_image(number=7), CONTEXT, None)
    assert result.saves == ["/archive/FAKE0001/CT-7.dcm"]


def _many_rules(count: int) -> str:
    modalities = ["CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "XA", "SR"]
    lines = []
    for number in range(count):
        modality = modalities[number % len(modalities)]
        if number % 3 == 0:
            condition = f'Modality == "{modality}" and InstanceNumber > {number % 5}'
        elif number % 3 == 1:
            condition = f'called_ae == "NODE{number % 7}" and Modality in ["{modality}", "OT"]'
        else:
            condition = f'StudyDescription contains "{modality}"'
        node = NODES[number % len(NODES)]
        lines.append(f'route "rule {number}" {{ when {condition}\n forward to {node} }}')
    lines.append('route "fallback" otherwise { forward to ARCHIVE }')
    return "\n".join(lines) + "\n"


def _unindexed_route(rule_set: RuleSet, dataset: Dataset, context: RuleContext) -> list[str]:
    """Route by evaluating every rule: the reference the index must agree with."""
    from capacitor.rules.conditions import Subject

    matched = []
    for rule in rule_set.of_kind("route"):
        if not rule.otherwise and rule.condition.holds(Subject(dataset, context)):
            matched.append(rule.name)
    return matched or ["fallback"]


def test_index_agrees_with_full_scan():
    rule_set = compile_text(_many_rules(300), NODES)
    generator = random.Random(7)
    for number in range(200):
        modality = generator.choice(["CT", "MR", "US", "OT", "SR", "XX"])
        dataset = make_image(modality=modality, number=generator.randint(1, 9))
        context = RuleContext("MOD", f"NODE{generator.randint(0, 8)}", "127.0.0.1")
        result = rule_set.route(dataset, context, None)
        assert result.matched == _unindexed_route(rule_set, dataset, context), number


# sort


SORT_RULES = (
    'sort "mammo views" for MG_WS { when Modality == "MG"\n'
    "  sort by InstanceNumber as integer ascending then by SeriesDescription descending }\n"
    'sort "newest first" { sort by AcquisitionDateTime as string descending }\n'
)


def _mammo(number: int, series: str) -> Dataset:
    return make_image(modality="MG", number=number, extra={"SeriesDescription": series})


def test_sort_keys_order_a_batch():
    rule_set = compile_text(SORT_RULES, NODES)
    batch = [_mammo(10, "A"), _mammo(2, "A"), _mammo(2, "B"), _mammo(1, "Z")]
    batch[1].InstanceNumber = "2"
    del batch[3].InstanceNumber
    order = rule_set.order(batch, [CONTEXT] * len(batch), "MG_WS")
    assert order == [2, 1, 0, 3]


def test_integer_sort_is_numeric_not_text():
    rule_set = compile_text(SORT_RULES, NODES)
    batch = [_mammo(number, "A") for number in (10, 9, 100, 1)]
    order = rule_set.order(batch, [CONTEXT] * 4, "MG_WS")
    assert [batch[i].InstanceNumber for i in order] == [1, 9, 10, 100]


def test_for_list_and_second_rule_decide_the_key():
    rule_set = compile_text(SORT_RULES, NODES)
    batch = [make_image(extra={"AcquisitionDateTime": stamp}) for stamp in ("20240101", "20250101", "20230101")]
    order = rule_set.order(batch, [CONTEXT] * 3, "ARCHIVE")
    assert order == [1, 0, 2]


@pytest.mark.parametrize("destination", ["MG_WS", "ARCHIVE"])
def test_unmatched_instances_sort_last_in_arrival_order(destination):
    rule_set = compile_text('sort "ct" { when Modality == "CT"\n sort by InstanceNumber as integer }\n', NODES)
    batch = [make_image(modality="MR", number=1), make_image(modality="CT", number=5), make_image(modality="MR", number=0)]
    assert rule_set.order(batch, [CONTEXT] * 3, destination) == [1, 0, 2]
