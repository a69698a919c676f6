"""Configuration error messages: repeated keys, YAML hints, value sources, limits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from capacitor.config.loader import load_config, parse_size
from capacitor.config.yamlfile import load_yaml
from capacitor.errors import ConfigError
from tests.test_config import messages, run_cli, write_config

NODE = "nodes:\n  - AeTitle: ARCHIVE\n    HostName: 127.0.0.1\n    Port: 11112\n"


def load_errors(folder: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(folder, environ=environ or {})
    return messages(caught)


class TestRepeatedKeys:
    def test_setting_set_twice(self, tmp_path):
        write_config(tmp_path, "scpPort: 1040\nmyAeTitle: ROUTER\nscpPort: 1050\n")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'config.yml'}:3:1: error: scpPort is set twice (first on line 1); remove one"
        ]

    def test_nested_setting_names_dotted_path(self, tmp_path):
        write_config(tmp_path, "api:\n  port: 9100\n  host: 127.0.0.1\n  port: 9200\n")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'config.yml'}:4:3: error: api.port is set twice (first on line 2); remove one"
        ]

    def test_setting_set_three_times(self, tmp_path):
        write_config(tmp_path, "scpPort: 1\nscpPort: 2\nscpPort: 3\n")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'config.yml'}:2:1: error: scpPort is set twice (first on line 1); remove one",
            f"{tmp_path / 'config.yml'}:3:1: error: scpPort is set 3 times (first on line 1); keep one",
        ]

    def test_node_field_in_config_file(self, tmp_path):
        write_config(tmp_path, NODE + "    Port: 11113\n")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'config.yml'}:5:5: error: nodes[0].Port is set twice (first on line 4); remove one"
        ]

    def test_node_field_in_nodes_file(self, tmp_path):
        write_config(tmp_path, "- AeTitle: PACS\n  HostName: 127.0.0.1\n  HostName: 10.0.0.1\n  Port: 104\n", "nodes.yml")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'nodes.yml'}:3:3: error: [0].HostName is set twice (first on line 2); remove one"
        ]

    def test_nodes_list_in_nodes_file(self, tmp_path):
        write_config(tmp_path, "nodes: []\nnodes: []\n", "nodes.yml")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'nodes.yml'}:2:1: error: nodes is set twice (first on line 1); remove one"
        ]

    def test_merge_key_value_may_be_replaced(self, tmp_path):
        path = write_config(tmp_path, "base: &base {Port: 104, HostName: a}\nnode:\n  <<: *base\n  Port: 105\n", "x.yml")

        assert load_yaml(path).data["node"] == {"Port": 105, "HostName": "a"}


INDENTATION_HINT = "check the indentation of this line and the one before it"


class TestYamlHints:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                "tls:\n  enabled: false\n certificate: a.pem\n",
                "config.yml:3:2: error: invalid YAML: expected <block end>, but found "
                f"'<block mapping start>'; {INDENTATION_HINT}",
            ),
            (
                "scpPort: 1040\n  myAeTitle: ROUTER\n",
                "config.yml:2:12: error: invalid YAML: mapping values are not allowed here; "
                f"{INDENTATION_HINT}, and quote a value that contains ': '",
            ),
            (
                "tls:\n\tenabled: true\n",
                "config.yml:2:1: error: invalid YAML: found character '\\t' that cannot start any token; "
                "indent with spaces: YAML does not allow tabs in indentation",
            ),
        ],
        ids=["block-end", "mapping-values", "tab"],
    )
    def test_indentation_error_has_hint(self, tmp_path, text, expected):
        write_config(tmp_path, text)

        assert load_errors(tmp_path) == [f"{tmp_path / expected}"]

    def test_unclosed_list_has_no_hint(self, tmp_path):
        write_config(tmp_path, "scpPort: [1040\n")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'config.yml'}:2:1: error: invalid YAML: expected ',' or ']', but got '<stream end>'"
        ]


class TestValueSources:
    @pytest.mark.parametrize(
        ("variable", "value", "expected"),
        [
            (
                "CAPACITOR_SECURITY_STORE_ALLOWED_NETWORKS",
                "10.0.0.0/8,10.0.0.0/33",
                "security.store.allowedNetworks: invalid network '10.0.0.0/33': expected an IPv4 or IPv6 "
                "address, or a network in CIDR form such as 10.1.0.0/16",
            ),
            (
                "CAPACITOR_PROCESS_SCHEDULE",
                "Mon-Fri 19:00-31:00",
                "processSchedule: invalid end time '31:00' in schedule 'Mon-Fri 19:00-31:00': "
                "use HH:MM from 00:00 to 24:00",
            ),
            (
                "CAPACITOR_DEFAULT_TRANSFER_SYNTAX",
                "1.2.3",
                "defaultTransferSyntax: 1.2.3 is not a transfer syntax UID pydicom knows, "
                "such as 1.2.840.10008.1.2.1",
            ),
            ("CAPACITOR_TLS_ENABLED", "true", "tls.enabled needs tls.certificate and tls.privateKey"),
        ],
        ids=["network", "schedule", "syntax", "tls"],
    )
    def test_environment_value_names_variable(self, tmp_path, variable, value, expected):
        write_config(tmp_path, "tls:\n  certificate: ''\n")

        assert load_errors(tmp_path, {variable: value}) == [
            f"<environment>: error: {variable}={value!r}: {expected}"
        ]

    def test_command_line_value_names_option(self, tmp_path):
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path, cli_overrides={"processSchedule": "Sat 25:00-26:00"}, environ={})

        assert messages(caught) == [
            "<command line>: error: --config.processSchedule='Sat 25:00-26:00': processSchedule: invalid "
            "start time '25:00' in schedule 'Sat 25:00-26:00': use HH:MM from 00:00 to 24:00"
        ]

    def test_file_value_points_at_list_item(self, tmp_path):
        write_config(tmp_path, "security:\n  store:\n    allowedNetworks:\n      - 10.0.0.0/8\n      - 300.1.1.1\n")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'config.yml'}:5:9: error: security.store.allowedNetworks: invalid network "
            "'300.1.1.1': expected an IPv4 or IPv6 address, or a network in CIDR form such as 10.1.0.0/16"
        ]

    def test_tls_error_points_at_enabling_line(self, tmp_path):
        write_config(tmp_path, "tls:\n  certificate: ''\n  enabled: true\n")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'config.yml'}:3:12: error: tls.enabled needs tls.certificate and tls.privateKey"
        ]

    def test_node_schedule_points_at_field(self, tmp_path):
        write_config(tmp_path, NODE + "    ProcessSchedule: Sat 25:00-26:00\n")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'config.yml'}:5:22: error: node ARCHIVE: invalid start time '25:00' in schedule "
            "'Sat 25:00-26:00': use HH:MM from 00:00 to 24:00"
        ]


class TestRepeatedMessages:
    LONG_TITLE = {"CAPACITOR_MY_AE_TITLE": "THIS_IS_A_VERY_LONG_AE_TITLE"}

    def test_long_ae_title_reported_once(self, tmp_path):
        assert len(load_errors(tmp_path, self.LONG_TITLE)) == 1

    def test_long_ae_title_in_file_reported_once(self, tmp_path):
        write_config(tmp_path, "myAeTitle: THIS_IS_A_VERY_LONG_AE_TITLE\n")

        assert len(load_errors(tmp_path)) == 1

    def test_run_prints_error_once(self, tmp_path):
        result = run_cli("run", "--data", str(tmp_path), env=self.LONG_TITLE)

        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            "<environment>: error: CAPACITOR_MY_AE_TITLE: invalid value 'THIS_IS_A_VERY_LONG_AE_TITLE' "
            "for myAeTitle: expected 1 to 16 printable ASCII characters, no backslash; "
            "leading and trailing spaces are ignored"
        ]


class TestAeTitlePrefix:
    def test_prefix_names_longest_node(self, tmp_path):
        write_config(tmp_path, NODE + "  - {AeTitle: CT, HostName: 127.0.0.1, Port: 104}\n")

        assert load_errors(tmp_path, {"CAPACITOR_AE_TITLE_PREFIX": "ROUTER_TO_"}) == [
            "<environment>: error: CAPACITOR_AE_TITLE_PREFIX='ROUTER_TO_': aeTitlePrefix 'ROUTER_TO_' with "
            "node ARCHIVE makes 'ROUTER_TO_ARCHIVE', 17 characters; the prefix plus the longest node "
            "AeTitle must fit in 16 characters, so shorten the prefix to at most 9 characters"
        ]

    def test_prefix_that_fits_is_accepted(self, tmp_path):
        write_config(tmp_path, NODE)

        config = load_config(tmp_path, environ={"CAPACITOR_AE_TITLE_PREFIX": "ROUTER_TO"})

        assert config.nodes.find("ROUTER_TOARCHIVE")[0].ae_title == "ARCHIVE"

    def test_prefix_without_nodes_states_limit(self, tmp_path):
        write_config(tmp_path, "aeTitlePrefix: THIS_IS_A_VERY_LONG_PREFIX\n")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'config.yml'}:1:16: error: aeTitlePrefix 'THIS_IS_A_VERY_LONG_PREFIX' is 26 "
            "characters; the prefix plus a node's AeTitle must fit in 16 characters, so shorten the "
            "prefix to at most 15 characters"
        ]


class TestListenerPorts:
    def test_environment_port_used_twice(self, tmp_path):
        assert load_errors(tmp_path, {"CAPACITOR_SCP_PORT": "1041"}) == [
            "<environment>: error: CAPACITOR_SCP_PORT='1041': scpPort: port 1041 is already used by "
            "findScpPort (its default); give each listener its own port, or set one to 0 to turn it off"
        ]

    @pytest.mark.parametrize(
        "setting",
        ["findScpPort", "storageCommitScpPort", "queryRetrieveScpPort", "api.port"],
    )
    def test_file_port_same_as_scp_port(self, tmp_path, setting):
        parent, _, name = setting.rpartition(".")
        text = f"{parent}:\n  {name}: 1040\n" if parent else f"{name}: 1040\n"
        write_config(tmp_path, text)

        errors = load_errors(tmp_path)

        assert len(errors) == 1
        assert f"{setting}: port 1040 is already used by scpPort (its default)" in errors[0]

    def test_later_file_line_is_blamed(self, tmp_path):
        write_config(tmp_path, "findScpPort: 2000\nscpPort: 2000\n")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'config.yml'}:2:10: error: scpPort: port 2000 is already used by findScpPort "
            f"(set in {tmp_path / 'config.yml'}:1); give each listener its own port, or set one to 0 to turn it off"
        ]

    def test_disabled_listeners_may_share_zero(self, tmp_path):
        write_config(tmp_path, "findScpPort: 0\nstorageCommitScpPort: 0\nqueryRetrieveScpPort: 0\n")

        config = load_config(tmp_path, environ={})

        assert config["findScpPort"] == 0

    def test_lint_config_rejects_shared_port(self, tmp_path):
        result = run_cli("lint", "config", "--data", str(tmp_path), env={"CAPACITOR_SCP_PORT": "1041"})

        assert result.returncode == 1
        assert "port 1041 is already used by findScpPort" in result.stderr


class TestDuplicateNodeTitle:
    def test_second_node_has_position(self, tmp_path):
        write_config(tmp_path, NODE + "  - {AeTitle: ARCHIVE, HostName: 127.0.0.1, Port: 104}\n")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'config.yml'}:5:15: error: node ARCHIVE: AE title 'ARCHIVE' is already used by "
            f"node ARCHIVE ({tmp_path / 'config.yml'}:2); give each node its own AeTitle and Aliases"
        ]

    def test_alias_in_nodes_file_has_position(self, tmp_path):
        write_config(tmp_path, NODE)
        write_config(tmp_path, "- AeTitle: PACS\n  Aliases: [CT, ARCHIVE]\n  HostName: 127.0.0.1\n  Port: 104\n", "nodes.yml")

        assert load_errors(tmp_path) == [
            f"{tmp_path / 'nodes.yml'}:2:17: error: node PACS: AE title 'ARCHIVE' is already used by "
            f"node ARCHIVE ({tmp_path / 'config.yml'}:2); give each node its own AeTitle and Aliases"
        ]


class TestPduSize:
    def test_tiny_pdu_size_rejected(self, tmp_path):
        assert load_errors(tmp_path, {"CAPACITOR_MAX_PDU_SIZE": "5"}) == [
            "<environment>: error: CAPACITOR_MAX_PDU_SIZE='5': maxPduSize: 5 bytes is too small for peers "
            "to send data in; use 0 (no limit) or at least 4096"
        ]

    @pytest.mark.parametrize("size", [0, 4096])
    def test_no_limit_and_smallest_accepted(self, tmp_path, size):
        config = load_config(tmp_path, environ={"CAPACITOR_MAX_PDU_SIZE": str(size)})

        assert config["maxPduSize"] == size


class TestSizeUnits:
    def test_message_lists_binary_units(self, tmp_path):
        errors = load_errors(tmp_path, {"CAPACITOR_MIN_FREE_SPACE": "lots"})

        assert len(errors) == 1
        assert "B, KB, MB, GB or TB (powers of 1000) or KiB, MiB, GiB or TiB (powers of 1024)" in errors[0]

    def test_every_listed_unit_is_accepted(self, tmp_path):
        message = load_errors(tmp_path, {"CAPACITOR_MIN_FREE_SPACE": "lots"})[0]
        units = re.findall(r"\b(?:[KMGT]i?B|B)\b", message.split("expected", 1)[1])

        assert len(units) == 9
        for unit in units:
            config = load_config(tmp_path, environ={"CAPACITOR_MIN_FREE_SPACE": f"2{unit}"})
            assert parse_size(config["minFreeSpace"]) >= 2, unit
