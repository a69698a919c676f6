"""Exception tree shared by configuration, rules, spool and delivery."""

from __future__ import annotations

from dataclasses import dataclass


class CapacitorError(Exception):
    """Base class of every error that Capacitor reports to its user."""


@dataclass(frozen=True)
class Finding:
    """One problem found in a file, printed as ``FILE:LINE:COL: SEVERITY: MESSAGE``."""

    file: str
    line: int
    column: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        if self.line <= 0:
            # Findings in the environment or on the command line have no position.
            return f"{self.file}: {self.severity}: {self.message}"
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "severity": self.severity,
            "message": self.message,
        }


class FindingsError(CapacitorError):
    """Raised when a check finds at least one error; carries every finding."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        errors = [f for f in findings if f.severity == "error"]
        super().__init__("\n".join(str(f) for f in errors))


class ConfigError(FindingsError):
    """Invalid configuration: a setting, a node or an override."""


class RuleError(FindingsError):
    """Invalid rule file: syntax, schema or semantic errors."""


class SpoolError(CapacitorError):
    """The spool could not store or index an instance."""


class ListenError(OSError):
    """Raised when a listener cannot bind its address; names the listener and its port setting."""

    def __init__(self, listener: str, setting: str, host: str, port: int, cause: OSError) -> None:
        reason = cause.strerror or str(cause)
        super().__init__(
            cause.errno,
            f"{listener} cannot listen on {host}:{port} ({setting}): {reason}; "
            f"stop the program that holds the port or change {setting}",
        )
        self.listener = listener
        self.setting = setting

    def __str__(self) -> str:
        return str(self.strerror)
