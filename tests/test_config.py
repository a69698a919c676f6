"""Configuration: defaults, files, overrides, precedence and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from capacitor.config.loader import load_config, parse_size
from capacitor.config.schema import convert_text, env_name, setting_schemas
from capacitor.config.yamlfile import load_yaml
from capacitor.errors import ConfigError
from tests.peers import REPO


def write_config(folder: Path, text: str, name: str = "config.yml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def messages(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(f) for f in exc.value.findings]


def test_defaults_apply_without_config_file(tmp_path):
    config = load_config(tmp_path, environ={})

    assert config["myAeTitle"] == "CAPACITOR"
    assert config["scpPort"] == 1040
    assert config["findScpPort"] == 1041
    assert config["storageCommitScpPort"] == 1042
    assert config["queryRetrieveScpPort"] == 2763
    assert config.sources["scpPort"] == "default"
    assert config.cache_dir == tmp_path / "cache"


def flat_settings(data: dict, prefix: str = "") -> dict:
    """Return `data` keyed by dotted setting names, nested mappings flattened."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_shipped_config_matches_built_in_defaults():
    shipped = flat_settings(yaml.safe_load((REPO / "config.yml").read_text()))
    schemas = setting_schemas()

    documented = set(shipped)
    assert documented == set(schemas), "config.yml must list every setting"
    for key, value in shipped.items():
        if key != "nodes":
            assert value == schemas[key]["default"], key


def test_every_setting_is_documented_in_shipped_config():
    document = load_yaml(REPO / "config.yml")
    lines = document.path.read_text().splitlines()
    for key in setting_schemas():
        parts = key.split(".")
        commented = False
        # A nested setting may be documented above itself or above a parent key.
        for depth in range(len(parts), 0, -1):
            line, _ = document.position((*parts[:depth], "<key>"))
            above = [lines[line - 2].strip(), lines[line - 3].strip()]
            commented = commented or above[0].startswith("#") or above[1].startswith("#")
        assert commented, key


@pytest.mark.parametrize(
    ("setting", "variable"),
    [
        ("myAeTitle", "CAPACITOR_MY_AE_TITLE"),
        ("redactedCFindLogging", "CAPACITOR_REDACTED_C_FIND_LOGGING"),
        ("api.port", "CAPACITOR_API_PORT"),
        ("scpPort", "CAPACITOR_SCP_PORT"),
    ],
)
def test_environment_variable_names(setting, variable):
    assert env_name(setting) == variable


def test_precedence_command_line_over_environment_over_file(tmp_path):
    write_config(tmp_path, "scpPort: 2000\n")

    from_file = load_config(tmp_path, environ={})
    from_env = load_config(tmp_path, environ={"CAPACITOR_SCP_PORT": "3000"})
    from_cli = load_config(tmp_path, cli_overrides={"scpPort": "4000"}, environ={"CAPACITOR_SCP_PORT": "3000"})

    assert (from_file["scpPort"], from_file.sources["scpPort"]) == (2000, f"{tmp_path / 'config.yml'}:1")
    assert (from_env["scpPort"], from_env.sources["scpPort"]) == (3000, "CAPACITOR_SCP_PORT")
    assert (from_cli["scpPort"], from_cli.sources["scpPort"]) == (4000, "--config.scpPort")


class TestNestedSettings:
    def test_file_value_and_its_line(self, tmp_path):
        write_config(tmp_path, "scpPort: 2000\napi:\n  host: 0.0.0.0\n  port: 8080\n")

        config = load_config(tmp_path, environ={})

        assert config["api.port"] == 8080
        assert config["api.host"] == "0.0.0.0"
        assert config.sources["api.port"] == f"{tmp_path / 'config.yml'}:4"
        assert config.sources["api.host"] == f"{tmp_path / 'config.yml'}:3"

    def test_environment_and_command_line(self, tmp_path):
        write_config(tmp_path, "api:\n  port: 8080\n")

        from_env = load_config(tmp_path, environ={"CAPACITOR_API_PORT": "9090", "CAPACITOR_API_HOST": "::"})
        from_cli = load_config(tmp_path, cli_overrides={"api.port": "9191"}, environ={"CAPACITOR_API_PORT": "9090"})

        assert (from_env["api.port"], from_env.sources["api.port"]) == (9090, "CAPACITOR_API_PORT")
        assert (from_env["api.host"], from_env.sources["api.host"]) == ("::", "CAPACITOR_API_HOST")
        assert (from_cli["api.port"], from_cli.sources["api.port"]) == (9191, "--config.api.port")

    def test_defaults_keep_endpoint_off_and_local(self, tmp_path):
        config = load_config(tmp_path, environ={})

        assert config["api.port"] == 0
        assert config["api.host"] == "127.0.0.1"

    def test_unknown_nested_key_suggests_setting(self, tmp_path):
        write_config(tmp_path, "api:\n  prot: 8080\n")

        with pytest.raises(ConfigError) as exc:
            load_config(tmp_path, environ={})

        assert messages(exc) == [f"{tmp_path / 'config.yml'}:2:3: error: unknown setting 'api.prot'; did you mean 'port'?"]

    def test_out_of_range_environment_value_names_variable(self, tmp_path):
        with pytest.raises(ConfigError) as exc:
            load_config(tmp_path, environ={"CAPACITOR_API_PORT": "70000"})

        assert "CAPACITOR_API_PORT" in messages(exc)[0]
        assert "api.port" in messages(exc)[0]

    def test_unknown_environment_variable_suggests_nested_one(self, tmp_path):
        with pytest.raises(ConfigError) as exc:
            load_config(tmp_path, environ={"CAPACITOR_API_PROT": "8080"})

        assert "did you mean CAPACITOR_API_PORT?" in messages(exc)[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("yes", True), ("No", False), ("1", True), ("0", False), ("true", True), ("off", False)],
)
def test_boolean_overrides(tmp_path, text, expected):
    config = load_config(tmp_path, environ={"CAPACITOR_SYNC_WRITES": text})

    assert config["syncWrites"] is expected


def test_list_and_number_overrides(tmp_path):
    config = load_config(
        tmp_path,
        environ={"CAPACITOR_REJECT_ABSTRACT_SYNTAXES": "1.2.3, 1.2.4", "CAPACITOR_DIMSE_TIMEOUT_SECONDS": "2.5"},
    )

    assert config["rejectAbstractSyntaxes"] == ["1.2.3", "1.2.4"]
    assert config["dimseTimeoutSeconds"] == 2.5


def test_bad_environment_value_names_variable_value_and_expectation(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={"CAPACITOR_SCP_PORT": "eleven"})

    assert messages(caught) == [
        "<environment>: error: CAPACITOR_SCP_PORT='eleven': invalid value for scpPort: expected an integer"
    ]


def test_out_of_range_override_is_checked_after_merge(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={"CAPACITOR_SCP_PORT": "70000"})

    assert messages(caught) == [
        "<environment>: error: CAPACITOR_SCP_PORT: invalid value 70000 for scpPort: "
        "expected an integer from 0 to 65535"
    ]


def test_unknown_environment_variable_suggests_setting(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={"CAPACITOR_MY_AE_TITEL": "ROUTER"})

    assert messages(caught) == [
        "<environment>: error: CAPACITOR_MY_AE_TITEL names no setting; did you mean CAPACITOR_MY_AE_TITLE?"
    ]


def test_data_variable_is_not_a_setting(tmp_path):
    config = load_config(tmp_path, environ={"CAPACITOR_DATA": "/somewhere"})

    assert config["myAeTitle"] == "CAPACITOR"


def test_unknown_command_line_setting_suggests_setting(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, cli_overrides={"scpprot": "1"}, environ={})

    assert "--config.scpprot names no setting; did you mean --config.scpPort?" in messages(caught)[0]


def test_bad_file_value_points_at_line_and_column(tmp_path):
    write_config(tmp_path, "myAeTitle: ROUTER\nscpPort: abc\n")

    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={})

    assert messages(caught) == [
        f"{tmp_path / 'config.yml'}:2:10: error: scpPort: invalid value 'abc': expected an integer"
    ]


def test_unknown_file_key_suggests_setting(tmp_path):
    write_config(tmp_path, "scpPrt: 104\n")

    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={})

    assert messages(caught) == [
        f"{tmp_path / 'config.yml'}:1:1: error: unknown setting 'scpPrt'; did you mean 'scpPort'?"
    ]


def test_invalid_ae_title_is_explained(tmp_path):
    write_config(tmp_path, 'myAeTitle: "BAD\\\\TITLE"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={})

    assert "myAeTitle: invalid value 'BAD\\\\TITLE': expected 1 to 16 printable ASCII characters" in messages(caught)[0]


def test_yaml_syntax_error_has_position(tmp_path):
    write_config(tmp_path, "scpPort: [1040\n")

    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={})

    assert messages(caught)[0].startswith(f"{tmp_path / 'config.yml'}:2:1: error: invalid YAML")


@pytest.mark.parametrize(
    "text",
    [
        "- AeTitle: PACS\n  HostName: 127.0.0.1\n  Port: 104\n",
        "nodes:\n  - AeTitle: PACS\n    HostName: 127.0.0.1\n    Port: 104\n",
    ],
    ids=["list", "mapping"],
)
def test_nodes_file_is_read_beside_config(tmp_path, text):
    write_config(tmp_path, "nodes:\n  - AeTitle: ARCHIVE\n    HostName: 127.0.0.1\n    Port: 11112\n")
    write_config(tmp_path, text, "nodes.yml")

    config = load_config(tmp_path, environ={})

    assert [n.ae_title for n in config.nodes] == ["ARCHIVE", "PACS"]


def test_nodes_file_error_points_into_it(tmp_path):
    write_config(tmp_path, "- AeTitle: PACS\n  HostName: 127.0.0.1\n  Port: zero\n", "nodes.yml")

    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={})

    assert messages(caught) == [
        f"{tmp_path / 'nodes.yml'}:3:9: error: [0].Port: invalid value 'zero': expected an integer"
    ]


def test_duplicate_node_title_is_an_error(tmp_path):
    write_config(
        tmp_path,
        "nodes:\n"
        "  - {AeTitle: PACS, HostName: 127.0.0.1, Port: 104}\n"
        "  - {AeTitle: WS, Aliases: [PACS], HostName: 127.0.0.1, Port: 105}\n",
    )

    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={})

    assert "AE title 'PACS' is already used by node PACS" in messages(caught)[0]


def test_storage_node_needs_an_address(tmp_path):
    write_config(tmp_path, "nodes:\n  - AeTitle: PACS\n")

    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={})

    assert "node PACS: missing HostName and Port" in messages(caught)[0]


@pytest.mark.parametrize(
    ("text", "size"),
    [(0, 0), ("500MB", 500_000_000), ("2GiB", 2 * 1024**3), ("1.5 GB", 1_500_000_000), ("10", 10)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


def test_text_conversion_rejects_non_numbers():
    with pytest.raises(ValueError, match="expected an integer"):
        convert_text("ten", {"type": "integer"})


def run_cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith("CAPACITOR_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "capacitor", *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=60
    )


class TestCommands:
    def test_lint_config_passes_on_shipped_defaults(self):
        result = run_cli("lint", "config", "--data", str(REPO))

        assert result.returncode == 0, result.stderr
        assert "configuration is valid" in result.stdout

    def test_lint_config_fails_with_one_line_per_problem(self, tmp_path):
        write_config(tmp_path, "scpPort: abc\nmyAeTitle: ''\n")

        result = run_cli("lint", "config", "--data", str(tmp_path))

        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 2

    def test_config_show_names_each_source(self, tmp_path):
        write_config(tmp_path, "scpPort: 2000\n")

        result = run_cli(
            "config", "show", "--data", str(tmp_path), "--config.myAeTitle=ROUTER",
            env={"CAPACITOR_FIND_SCP_PORT": "3001"},
        )

        assert result.returncode == 0, result.stderr
        lines = {line.split()[0]: line for line in result.stdout.splitlines() if line and not line.startswith("node")}
        assert lines["scpPort"].endswith(f"({tmp_path / 'config.yml'}:1)")
        assert lines["findScpPort"].endswith("(CAPACITOR_FIND_SCP_PORT)")
        assert lines["myAeTitle"].endswith("(--config.myAeTitle)")
        assert lines["dimseTimeoutSeconds"].endswith("(default)")

    def test_config_show_lists_nested_settings(self, tmp_path):
        write_config(tmp_path, "api:\n  port: 8080\n")

        result = run_cli("config", "show", "--data", str(tmp_path), env={"CAPACITOR_API_HOST": "0.0.0.0"})

        assert result.returncode == 0, result.stderr
        lines = {line.split()[0]: line for line in result.stdout.splitlines() if line and not line.startswith("node")}
        assert lines["api.port"].split() == ["api.port", "8080", f"({tmp_path / 'config.yml'}:2)"]
        assert lines["api.host"].endswith('"0.0.0.0"  (CAPACITOR_API_HOST)')

    def test_data_folder_from_environment(self, tmp_path):
        write_config(tmp_path, "myAeTitle: FROM_ENV_DATA\n")

        result = run_cli("config", "show", "--format", "json", env={"CAPACITOR_DATA": str(tmp_path)})

        assert result.returncode == 0, result.stderr
        assert '"FROM_ENV_DATA"' in result.stdout

    def test_missing_subcommand_is_a_usage_error(self):
        assert run_cli("lint").returncode == 2
        assert run_cli().returncode == 2

    def test_override_without_key_is_a_usage_error(self):
        result = run_cli("config", "show", "--config.=1")

        assert result.returncode == 2
        assert "names no setting" in result.stderr


def test_readme_lists_every_setting():
    readme = (REPO / "README.md").read_text()

    missing = [key for key in setting_schemas() if key != "nodes" and f"| `{key}` |" not in readme]
    assert missing == []
