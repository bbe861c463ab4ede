"""The README and docs/ stay true: the README is short and starts with the two commands, every
relative link resolves (to a file, and to a heading where it names one), every `--flag` and
`PIPELINE_*` name they mention exists, the settings' table is what the declarations generate,
every repository path, exit code, state and quoted error they name is real, every table of
figures says where and when it was measured, and the project speaks of itself alone."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

from streaming_pipeline.cli.parser import build_parser
from streaming_pipeline.config import settings
from streaming_pipeline.tools.settings_doc import BEGIN, END, settings_table

from .conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Other programs' flags the pages show in their commands (sbatch, srun, rsync, apptainer, pip,
# pytest, chromium, psql, ffplay, tar, xz, scontrol, the hpc scripts' own sbatch lines).
OTHER_PROGRAMS = {
    "--array", "--dependency", "--signal", "--requeue", "--gres", "--cpus-per-task", "--mem", "--time",
    "--test-only", "--parsable", "--export", "--nv", "--bind", "--fakeroot", "--build-arg", "--from0",
    "--files-from", "--timeout", "--contimeout", "--times", "--recursive", "--chmod", "--dry-run",
    "--out-format", "--8-bit-output", "--no-sandbox", "--headless", "--dump-dom", "--screenshot",
    "--user-data-dir", "--host-resolver-rules", "--proxy-server", "--window-size", "--disable-gpu",
    "--autoplay-policy", "--mute-audio", "--disable-dev-shm-usage", "--daemon", "--no-detach", "--config",
    "--port", "--address", "--strict-markers", "--no-deps", "--disable-pip-version-check", "--slurm",
    "--ntasks", "--nodes", "--partition", "--account", "--job-name", "--output", "--error", "--wrap",
    "--threads", "--format", "--help", "--version", "--verbose", "--partial", "--delete", "--inplace",
}  # fmt: skip
NOT_SETTINGS = {"PIPELINE_CONTAINER_BINDS"}  # read by hpc/process_single_tar_streaming.sh itself


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    found = {s for a in parser._actions for s in a.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _flags(sub)
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_the_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, len(lines)
    assert lines[0] == "```bash" and lines[3] == "```"
    assert lines[1].startswith("scripts/demo.sh ") and lines[2].startswith("scripts/test.sh ")
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in "\n".join(lines), f"the README's contents lack {page.name}"


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path) if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_every_flag_and_variable_they_name_exists() -> None:
    from streaming_pipeline.tools import recordings

    flags = _flags(build_parser()) | _flags(recordings.build_parser())  # scripts/get-test-recordings.sh's
    variables = {s.env for _, s in settings()}
    unknown = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", text)):
            if flag not in flags and flag not in OTHER_PROGRAMS:
                unknown.append(f"{page.name}: {flag}")
        for name in set(re.findall(r"PIPELINE_[A-Z0-9_]*[A-Z0-9]", text)):
            if name not in variables and name not in NOT_SETTINGS and not name.startswith("PIPELINE_TEST_"):
                unknown.append(f"{page.name}: {name}")
    assert not unknown, sorted(unknown)


def test_the_settings_table_is_generated_from_the_declarations() -> None:
    page = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    generated = page.partition(BEGIN)[2].partition(END)[0].strip()
    assert generated == settings_table(), "run: python -m streaming_pipeline.tools.settings_doc"


def test_the_project_speaks_of_itself_alone() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        lowered = text.lower()
        for phrase in ("this machine", "the ci machine", "throwaway", "not available here", "this vm"):
            assert phrase not in lowered, (
                f"{page.name}: {phrase!r} (say what the product is, not how it was made)"
            )
        for phrase in ("../shared", "lent to", "this task", "session that"):
            assert phrase not in text, f"{page.name}: {phrase!r}"


def _source_text() -> str:
    files = [*(REPO / "src" / "streaming_pipeline").rglob("*.py"), *(REPO / "hpc").glob("*.sh")]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def test_each_message_the_troubleshooting_table_quotes_is_in_the_code() -> None:
    """docs/getting-started.md's table: the first cell's `quoted` messages, each of whose parts
    (split where the page writes … for a value) the code prints."""
    page = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    section = page.split("## 7. When something goes wrong", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) >= 10, "the ten failures a site meets first"
    source = _source_text()
    missing = []
    for row in rows:
        first = row.split(" | ", 1)[0]
        for quoted in re.findall(r"`([^`]+)`", first):
            missing += [f"{quoted!r}: {part!r}" for part in quoted.split("…") if part.strip() not in source]
    assert not missing, "\n".join(missing)


# Paths in backticks that name where something is on a cluster or a user's machine, not here.
NOT_REPO_PATHS = re.compile(r"^(/|~|\$|\.\./|https?:)|[<>*{}]|\.\.\.|…")


def test_every_repository_path_they_name_exists() -> None:
    """A `path/with/a/slash.ext` in backticks is a file of the repository: from its root, from the
    package (`stages/asr/vad.py`) or from tests/ (`run/test_worker.py`)."""
    roots = [REPO, REPO / "src" / "streaming_pipeline", REPO / "tests"]
    wrong = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for token in re.findall(
            r"`([\w.\-/]+/[\w.\-]+\.(?:py|sh|md|sql|def|toml|js|css|html|cfg|yaml))`", text
        ):
            if NOT_REPO_PATHS.search(token):
                continue
            if not any((root / token).exists() for root in roots):
                wrong.append(f"{page.name}: {token}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def _exit_codes() -> set[int]:
    import signal

    from streaming_pipeline import errors
    from streaming_pipeline.run.control import EXIT_INTERRUPTED

    classes = [
        c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.PipelineError)
    ]
    return {0, 1, EXIT_INTERRUPTED, *(c.exit_code for c in classes), *(128 + s for s in signal.Signals)}


def test_every_exit_code_and_state_they_name_is_one_the_code_defines() -> None:
    """An `exit N` / `exits N` / `exit status N` of the package (not rsync's, not Slurm's) is one
    it defines; a list of three or more `states` that holds a known one holds only known ones
    (archives', members', days', `status`'s `running?`); operations.md names every archive state."""
    from streaming_pipeline.state.states import ArchiveState, MemberStatus
    from streaming_pipeline.status.day import EXPIRED

    codes = _exit_codes()
    states = {*ArchiveState, *MemberStatus, EXPIRED, "submitted", "incomplete"}
    wrong = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"(\S+ )?exit(?:s| status| code)?(?: is)? (\d+)", text):
            if (m.group(1) or "").strip().lower() not in ("rsync", "ssh", "sbatch") and int(
                m.group(2)
            ) not in codes:
                wrong.append(f"{page.name}: exit {m.group(2)}")
        for listed in re.findall(r"`[\w?]+`(?:, (?:or |and )?`[\w?]+`){2,}", text):
            words = re.findall(r"`([\w?]+)`", listed)
            if len(set(words) & states) >= 2:
                wrong += [f"{page.name}: state {w!r}" for w in words if w not in states]
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    wrong += [f"operations.md lacks `{s}`" for s in ArchiveState if f"`{s}`" not in operations]
    assert not wrong, "\n".join(wrong)


# Tables that describe the product (no measured figure), by page and header row.
DESCRIPTIVE_TABLES = {
    ("README.md", "| page | what is in it |"),
    ("architecture.md", "| folder | role | what is in it |"),
    ("getting-started.md", "| | |"),
    ("getting-started.md", "| destination | `PIPELINE_REMOTE` | how it authenticates |"),
    ("getting-started.md", "| what | where |"),
    ("getting-started.md", "| what you see | why | what to do |"),
    ("operations.md", "| failure | what is recorded | the rerun |"),
    ("settings.md", "| flag | variable | default | for | what |"),
    ("tests.md", "| set | where the tests look | what it is |"),
    ("web.md", "| address | what it shows |"),
    ("web.md", "| flag | variable | default | |"),
}
# The line beside a table of figures: `*Measured 2026-12-02, commit fb5c843, on the 2-core ... VM*`.
MEASURED = re.compile(
    r"^\*(?:\w+ )?[Mm]easured (20\d\d-\d\d-\d\d), commits? [0-9a-f]{7}.*, on (?:the|an?) .+\*$"
)


def _tables(lines: list[str]) -> list[tuple[int, int]]:
    """(first, past-last) line index of each Markdown table."""
    spans, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    return spans


def test_every_table_of_figures_names_machine_date_and_commit() -> None:
    """A table is one of the descriptive ones above, or has a `*Measured DATE, commit HASH, on
    MACHINE*` line just before or after it; each commit it names is in the history."""
    wrong, commits = [], set()
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for first, last in _tables(lines):
            header = lines[first].strip()
            if (page.name, header) in DESCRIPTIVE_TABLES:
                continue
            beside = [line.strip() for line in lines[max(0, first - 3) : first] + lines[last : last + 3]]
            marks = [line for line in beside if MEASURED.match(line)]
            if not marks:
                wrong.append(f"{page.name}:{first + 1}: {header[:60]}")
            for mark in marks:
                commits |= set(re.findall(r"\b[0-9a-f]{7,40}\b", mark.split(", on ", 1)[0]))
    assert not wrong, (
        "tables of figures without a *Measured DATE, commit HASH, on MACHINE* line:\n" + "\n".join(wrong)
    )
    git = shutil.which("git")
    full = (
        git
        and (REPO / ".git").exists()
        and subprocess.run(
            [git, "-C", str(REPO), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True
        ).stdout.strip()
        == "false"
    )
    if full:
        unknown = [
            c
            for c in sorted(commits)
            if subprocess.run([git, "-C", str(REPO), "cat-file", "-e", f"{c}^{{commit}}"]).returncode
        ]
        assert not unknown, f"commits the tables name that the history lacks: {unknown}"
