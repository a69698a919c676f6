"""The route filter: checks at load time and destinations at intake."""

from __future__ import annotations

from pathlib import Path

import pytest

from capacitor.errors import RuleError
from capacitor.rules.engine import load_rules
from capacitor.rules.values import RuleContext
from capacitor.synthetic import make_image

NODES = ["ARCHIVE", "CT_PACS", "CONTRAST_WS", "PACS_A", "REPORTS", "WS1"]


def rules_from(tmp_path: Path, text: str):
    path = tmp_path / "test.rules"
    path.write_text(text, encoding="utf-8")
    return load_rules([path], NODES)


def route(rules, dataset, original=None, calling_ae="MOD"):
    return rules.route(dataset, RuleContext(calling_ae, "CAPACITOR", "127.0.0.1"), original)


class TestFallback:
    RULES = (
        'route "ct" { when Modality == "CT" forward to CT_PACS }\n'
        'route "fallback" otherwise { forward to ARCHIVE }\n'
    )

    def test_fallback_skipped_when_a_rule_matched(self, tmp_path):
        rules = rules_from(tmp_path, self.RULES)

        result = route(rules, make_image(modality="CT"))

        assert result.destinations == ["CT_PACS"]
        assert result.matched == ["ct"]

    def test_fallback_fires_when_nothing_matched(self, tmp_path):
        rules = rules_from(tmp_path, self.RULES)

        result = route(rules, make_image(modality="MR"))

        assert result.destinations == ["ARCHIVE"]
        assert result.matched == ["fallback"]

    def test_all_matching_rules_fire_in_order(self, tmp_path):
        rules = rules_from(
            tmp_path,
            self.RULES + 'route "ct again" { when Modality == "CT" forward to WS1 }\n',
        )

        result = route(rules, make_image(modality="CT"))

        assert result.destinations == ["CT_PACS", "WS1"]
        assert result.matched == ["ct", "ct again"]


class TestAbsentAndEmpty:
    RULES = (
        'route "contrast" { when ContrastBolusAgent contains "IOHEX" forward to CONTRAST_WS }\n'
        'route "fallback" otherwise { forward to PACS_A }\n'
    )

    @pytest.mark.parametrize(
        ("extra", "expected"),
        [({}, ["PACS_A"]), ({"ContrastBolusAgent": ""}, ["PACS_A"]), ({"ContrastBolusAgent": "IOHEXOL 350"}, ["CONTRAST_WS"])],
        ids=["absent", "empty", "present"],
    )
    def test_contains_on_absent_empty_and_present(self, tmp_path, extra, expected):
        rules = rules_from(tmp_path, self.RULES)

        result = route(rules, make_image(extra=extra))

        assert result.destinations == expected

    def test_misspelt_keyword_is_rejected_at_load(self, tmp_path):
        with pytest.raises(RuleError) as caught:
            rules_from(tmp_path, self.RULES.replace("ContrastBolusAgent", "ContrastBolusAgnet"))

        assert [str(f) for f in caught.value.findings] == [
            f"{tmp_path / 'test.rules'}:1:25: error: unknown keyword 'ContrastBolusAgnet'; "
            "did you mean 'ContrastBolusAgent'?"
        ]


class TestActions:
    def test_drop_original_removes_the_called_node(self, tmp_path):
        rules = rules_from(
            tmp_path,
            'route "dose" { when Modality == "SR" forward to REPORTS drop original }\n',
        )

        result = route(rules, make_image(modality="SR"), original="PACS_A")

        assert result.destinations == ["REPORTS"]

    def test_called_node_kept_without_rules(self, tmp_path):
        rules = rules_from(tmp_path, "")

        result = route(rules, make_image(), original="PACS_A")

        assert result.destinations == ["PACS_A"]

    def test_drop_discards_whatever_follows(self, tmp_path):
        rules = rules_from(
            tmp_path,
            'route "junk" { when PatientName like "TEST^*" drop }\n'
            'route "all" { forward to ARCHIVE }\n',
        )

        result = route(rules, make_image(patient_name="TEST^PHANTOM"), original="PACS_A")

        assert result.dropped_by == "junk"
        assert result.destinations == []

    def test_for_limits_a_route_rule_to_those_destinations(self, tmp_path):
        rules = rules_from(tmp_path, 'route "copy" for PACS_A { forward to WS1 }\n')

        to_pacs = route(rules, make_image(), original="PACS_A")
        to_archive = route(rules, make_image(), original="ARCHIVE")

        assert to_pacs.destinations == ["PACS_A", "WS1"]
        assert to_archive.destinations == ["ARCHIVE"]

    def test_association_context_can_be_tested(self, tmp_path):
        rules = rules_from(tmp_path, 'route "from ct" { when calling_ae == "CT1" forward to CT_PACS }\n')

        assert route(rules, make_image(), calling_ae="CT1").destinations == ["CT_PACS"]
        assert route(rules, make_image(), calling_ae="MR1").destinations == []


class TestLoadErrors:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ('route "a" { forward to NOWHERE }', "1:24: error: unknown destination node 'NOWHERE'"),
            ('route "a" { when Modality matches /(/ forward to WS1 }', "1:18: error: invalid regex /(/"),
            ('route "a" { when (0010,001G) exists forward to WS1 }', "1:18: error: malformed tag (0010,001G)"),
            ('route "a" { when Modality = "CT" }', "1:27: error: syntax error: unexpected '='"),
            ('route "a" {}\nroute "a" {}', "2:1: error: duplicate rule name 'a'"),
            ('route "a" { set PatientID = "x" }', "1:13: error: 'set' belongs in a mutate rule"),
            ('route "a" { when StudyDate > "last week" forward to WS1 }', "1:18: error: StudyDate has VR DA"),
        ],
    )
    def test_error_names_position_and_problem(self, tmp_path, text, message):
        with pytest.raises(RuleError) as caught:
            rules_from(tmp_path, text)

        assert any(str(f).startswith(f"{tmp_path / 'test.rules'}:{message}") for f in caught.value.findings), [
            str(f) for f in caught.value.findings
        ]

