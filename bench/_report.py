"""The results table: as text for the terminal, as Markdown for docs/benchmarks.md."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Final

from ._harness import ROOT, Config, Row, Section, fmt_range, fmt_stat

HEADERS = (
    "#",
    "case",
    "median",
    "min-max",
    "baseline",
    "ratio",
    "ratio min-max",
    "target",
    "verdict",
)


def _proc_field(path: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as source:
            for line in source:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return "unknown"


def machine() -> dict[str, str]:
    """Describe the machine and the software the figures came from."""
    mem_kb = _proc_field("/proc/meminfo", "MemTotal").split()[0]
    ram = f"{int(mem_kb) / 1024 / 1024:.1f} GiB" if mem_kb.isdigit() else "unknown"

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cores": str(os.cpu_count()),
        "cpu": _proc_field("/proc/cpuinfo", "model name"),
        "ram": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "trio": version("trio"),
        "msgspec": version("msgspec"),
        "hephaestus-trio": version("hephaestus-trio"),
        "commit": commit or "unknown",
    }


def _cells(row: Row) -> list[str]:
    return [
        row.scenario,
        row.case,
        fmt_stat(row.value, row.unit),
        fmt_range(row.value),
        fmt_stat(row.baseline, row.unit),
        fmt_stat(row.ratio, "x"),
        fmt_range(row.ratio),
        row.target,
        row.verdict,
    ]


def render_text(sections: Sequence[Section], cfg: Config, elapsed: float) -> str:
    """Return the table as aligned plain text."""
    lines: list[str] = []
    for section in sections:
        lines.append("")
        lines.append(f"{section.title}  [{section.seconds:.0f} s]")
        table = [list(HEADERS)] + [_cells(row) for row in section.rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(HEADERS))]
        for cells in table:
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        lines.extend(f"  * {note}" for note in section.notes)
    mode = "SMOKE (figures mean nothing)" if cfg.smoke else f"{cfg.repeats} runs per figure"
    lines.append(f"\n{mode}; total {elapsed:.0f} s")
    return "\n".join(lines)


def markdown_section(section: Section, level: int = 2) -> str:
    """Return one section: heading, table, ratio legend, notes, time taken."""
    out = [f"{'#' * level} {section.title}", ""]
    if section.method.strip():
        out += [
            "<details><summary>How it is measured</summary>",
            "",
            section.method.strip(),
            "",
            "</details>",
            "",
        ]
    if section.rows:
        out.append("| " + " | ".join(HEADERS) + " |")
        out.append("|" + "|".join("---" for _ in HEADERS) + "|")
        for row in section.rows:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |")
        labels = sorted({row.ratio_label for row in section.rows if row.ratio_label})
        if labels:
            out += ["", "Ratio: " + "; ".join(labels) + "."]
    if section.notes:
        out.append("")
        out += [f"- {note}" for note in section.notes]
    out += ["", f"_Section time: {section.seconds:.0f} s._"]
    return "\n".join(out)


def peers_block(report: Path) -> str | None:
    """Return the peers block of an existing report (kept across re-runs), if any."""
    from .peers import PEERS_BEGIN, PEERS_END

    if not report.exists():
        return None
    text = report.read_text(encoding="utf-8")
    begin, end = text.find(PEERS_BEGIN), text.find(PEERS_END)
    return text[begin : end + len(PEERS_END)] if 0 <= begin < end else None


def earlier_sections(report: Path) -> tuple[str, list[str]]:
    """Return the run lines of an existing report's header and its ``## `` sections, in order.

    An ``--only`` run keeps the sections it did not run from the report it
    rewrites (:func:`render_markdown`'s ``kept``); the peers block is kept apart.
    """
    from .peers import PEERS_BEGIN

    if not report.exists():
        return "", []
    text = report.read_text(encoding="utf-8")
    peers = text.find(PEERS_BEGIN)
    if peers >= 0:
        text = text[:peers]
    header, _, body = text.partition("\n## ")
    run = "; ".join(
        line[2:].strip()
        for line in header.splitlines()
        if line.startswith(("- Command:", "- Date:", "- Python"))
    )
    blocks = ["## " + block.rstrip() for block in body.split("\n## ")] if body else []
    return run, blocks


KEPT: Final = "*Kept from an earlier run: "


def _kept(block: str, run: str) -> str:
    """``block`` marked as kept from ``run``, unless an older run's mark already says whence.

    A section kept through several ``--only`` runs still names the run that
    measured it (the last mark, for reports whose marks stacked up before).
    """
    title, _, rest = block.partition("\n")
    lines = rest.split("\n")
    marks = [line for line in lines if line.startswith(KEPT)]
    body = "\n".join(line for line in lines if not line.startswith(KEPT)).lstrip("\n")
    mark = marks[-1] if marks else f"{KEPT}{run}.*"
    return f"{title}\n\n{mark}\n\n{body}"


def render_markdown(
    sections: Sequence[Section],
    cfg: Config,
    elapsed: float,
    command: str,
    peers_block: str | None = None,
    kept: tuple[str, list[str]] | None = None,
) -> str:
    """Return docs/benchmarks.md, with ``peers_block`` (from ``bench.peers``) kept at the end.

    ``kept`` (:func:`earlier_sections` of the report being replaced) gives the
    sections of an earlier run: each one whose title no new section has stays,
    in its place, marked as coming from that run.
    """
    info = machine()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Benchmarks",
        "",
        "Generated by `bench/` (do not edit by hand; re-run it). Every figure is the median "
        f"of {cfg.repeats} run(s) after a warm-up, with the min-max range; every ratio is "
        "against a baseline measured in the same run, on the same machine, alternating "
        "with the engine run where the baseline is a run of its own.",
        "",
        f"- Command: `{command}` (or `nox -s bench`), from the repository root",
        f"- Date: {now}; whole run {elapsed / 60:.1f} min",
        f"- Machine: {info['cores']} cores, {info['cpu']}, {info['ram']} RAM, {info['os']} "
        "(shared: expect noise, read the ratios)",
        f"- Python {info['python']}, trio {info['trio']}, msgspec {info['msgspec']}, "
        f"hephaestus-trio {info['hephaestus-trio']} at `{info['commit']}`",
    ]
    if cfg.smoke:
        out += ["", "**SMOKE RUN: tiny N, one run; the figures mean nothing.**"]
    out += [
        "",
        "Ratio column: what it divides is said in each section. Verdicts compare the "
        "median ratio with the targets of the design document (Performance targets).",
    ]
    fresh = [markdown_section(section) for section in sections]
    if kept is not None and kept[1]:
        run, blocks = kept
        by_title = {block.split("\n", 1)[0]: block for block in fresh}
        merged: list[str] = []
        for block in blocks:
            title = block.split("\n", 1)[0]
            if title in by_title:
                merged.append(by_title.pop(title))
            else:
                merged.append(_kept(block, run))
        fresh = [*merged, *by_title.values()]
    for block in fresh:
        out += ["", block]
    if peers_block:
        out += ["", peers_block]
    out.append("")
    return "\n".join(out)


def write_report(
    output: Path,
    sections: Sequence[Section],
    cfg: Config,
    elapsed: float,
    command: str,
    *,
    only: bool,
) -> None:
    """Write ``sections`` into the report at ``output``, keeping its peers block.

    ``only``: the run covered some groups only, so every other section of
    the report being replaced stays, marked as kept from its earlier run.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    kept = peers_block(output)
    earlier = earlier_sections(output) if only else None
    output.write_text(
        render_markdown(sections, cfg, elapsed, command, kept, earlier), encoding="utf-8"
    )
