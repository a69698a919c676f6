"""Locate the files that ship beside the package: grammar, schemas, defaults.

An installed package carries them as package data (``capacitor.grammar``,
``capacitor.schemas``, ``capacitor.defaults``). A source checkout keeps them
at the top of the repository, one level above this package.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT_DIR = _PACKAGE_DIR.parent

# Installed subpackage name -> folder name in a source checkout.
_LOCATIONS = {
    "grammar": "grammar",
    "schemas": "schemas",
    "defaults": ".",
    "default_rules": "rules",
}
_INSTALLED = {
    "grammar": "grammar",
    "schemas": "schemas",
    "defaults": "defaults",
    "default_rules": "defaults/rules",
}


def resource_dir(kind: str) -> Path:
    """Return the folder that holds the shipped files of `kind`.

    Raises
    ------
    FileNotFoundError
        If neither the installed package nor a checkout has the folder.
    """
    installed = _PACKAGE_DIR / _INSTALLED[kind]
    if installed.is_dir():
        return installed
    checkout = _CHECKOUT_DIR / _LOCATIONS[kind]
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"shipped {kind} files not found in {installed} or {checkout}; "
        "reinstall the package"
    )


def resource_path(kind: str, name: str) -> Path:
    """Return the path of the shipped file `name` of `kind`."""
    path = resource_dir(kind) / name
    if not path.is_file():
        raise FileNotFoundError(f"shipped file {path} is missing; reinstall the package")
    return path
