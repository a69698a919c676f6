# Shared by scripts/start and scripts/test: run as root, and create .venv.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

ensure_venv() {
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "Capacitor needs Python 3.11 or newer; python3 is $(python3 --version 2>&1)" >&2
        exit 1
    fi
    if [ ! -x .venv/bin/python ]; then
        if ! python3 -m venv .venv 2>/dev/null; then
            # Debian and Ubuntu ship venv support in a package of its own.
            rm -rf .venv
            echo "Installing python3-venv from Debian's packages ..."
            as_root apt-get update -qq
            DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv .venv
        fi
    fi
}
