#!/usr/bin/env python3
"""Which modules of the package a setting passes through: every module whose code names it as an
attribute (`config.timestamps`, `options.timestamps`), a keyword (`timestamps=...`) or a parameter.

    python3 scripts/setting-path.py timestamps
    python3 scripts/setting-path.py --decode-options

`--decode-options` counts the modules that touch any of the decoding settings (the fields of
`DecodeOptions` that come from the settings) or the options record itself. The count is the
figure a refactoring that decides each setting once should shrink.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "streaming_pipeline"
DECODE_SETTINGS = (
    "beam_size",
    "temperatures",
    "vad",
    "timestamps",
    "max_new_tokens",
    "decode_batch_size",
    "DecodeOptions",
    "decode_options",
)


def names_in(tree: ast.AST) -> set[str]:
    """Attribute names, keyword names, parameter names and bare names used in `tree`."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif (isinstance(node, ast.keyword) and node.arg) or isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.alias):
            found.add(node.asname or node.name.rsplit(".", 1)[-1])
    return found


SETTINGS_NAMES = {"config", "settings", "cfg"}


def read_from_settings(tree: ast.AST) -> set[str]:
    """Attribute names read off the settings themselves (`config.vad`, `self.config.vad`), not
    off a record made from them (`options.vad`)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            name = (
                owner.id
                if isinstance(owner, ast.Name)
                else owner.attr
                if isinstance(owner, ast.Attribute)
                else ""
            )
            if name in SETTINGS_NAMES:
                found.add(node.attr)
    return found


def modules_naming(wanted: set[str], *, from_settings: bool = False) -> list[str]:
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if wanted & (read_from_settings(tree) if from_settings else names_in(tree)):
            hits.append(str(path.relative_to(PACKAGE.parent)))
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="setting or attribute names")
    parser.add_argument("--decode-options", action="store_true", help="the decoding settings together")
    parser.add_argument("--list", action="store_true", help="print the modules, not only their count")
    parser.add_argument(
        "--from-settings", action="store_true", help="only modules that read them off the settings object"
    )
    args = parser.parse_args()
    wanted = set(args.names) | (set(DECODE_SETTINGS) if args.decode_options else set())
    if not wanted:
        parser.error("name a setting, or --decode-options")
    hits = modules_naming(wanted, from_settings=args.from_settings)
    if args.list:
        print("\n".join(hits))
    verb = "read off the settings" if args.from_settings else "name"
    print(f"{len(hits)} modules {verb} {', '.join(sorted(wanted))}")


if __name__ == "__main__":
    main()
