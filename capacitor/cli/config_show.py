"""``capacitor config show``: each effective setting and where it came from."""

from __future__ import annotations

import argparse
import json

from capacitor.cli.common import load_config_or_report, print_json


def command(args: argparse.Namespace) -> int:
    config = load_config_or_report(args)
    if config is None:
        return 1
    rows = [
        {"key": key, "value": config.settings[key], "source": config.sources.get(key, "default")}
        for key in sorted(config.settings)
        if key != "nodes"
    ]
    nodes = [
        {
            "AeTitle": node.ae_title,
            "Aliases": list(node.aliases),
            "HostName": node.host,
            "Port": node.port,
            "NodeRole": sorted(node.roles),
        }
        for node in config.nodes
    ]
    if args.format == "json":
        print_json({"settings": rows, "nodes": nodes, "cache": str(config.cache_dir)})
        return 0
    width = max(len(row["key"]) for row in rows)
    for row in rows:
        value = json.dumps(row["value"])
        print(f"{row['key']:<{width}}  {value}  ({row['source']})")
    print(f"{'cache folder':<{width}}  {json.dumps(str(config.cache_dir))}")
    for node in nodes:
        aliases = f" aliases {', '.join(node['Aliases'])}" if node["Aliases"] else ""
        print(f"node {node['AeTitle']}: {node['HostName']}:{node['Port']} {'/'.join(node['NodeRole'])}{aliases}")
    return 0
