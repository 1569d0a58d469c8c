"""What the repository ships cites only what a reader can open: papers, upstream code, files in this
repository. No citation of the team's internal specs (the protocol spec, the design and style notes),
which are not shipped, and no path of the machine the code was written on."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# "PROTOCOLS.md", "PROTOCOLS §2", "protocols.md": the unshipped spec. The bare name PROTOCOLS is also a
# Python constant (franca.ablate.evaluate.PROTOCOLS), which is not a citation.
SPEC = re.compile(r"(?i:\bprotocols\.md\b)|\bPROTOCOLS\s*§|\bPROTOCOLS\s+section\b|\b(?:DESIGN|STYLE|HELPERS)\.md\b")
MACHINE = re.compile(r"/work/|/root/")

# Files allowed to cite the spec (none: every shipped file cites the paper, upstream code or a shipped doc).
ALLOWED_SPEC: set[str] = set()


def _documentation() -> list[Path]:
    """Code, configs and prose a user reads: the package, README, docs, benchmarks, hub entry points."""
    files = [
        *(ROOT / "franca").rglob("*.py"),
        *(ROOT / "franca").rglob("*.yaml"),
        *(ROOT / "docs").rglob("*.md"),
        *(p for p in (ROOT / "benchmarks").rglob("*") if p.is_file()),
        ROOT / "README.md",
        ROOT / "hubconf.py",
        ROOT / "Makefile",
        ROOT / "configs" / "README.md",
    ]
    return sorted({p for p in files if p.is_file() and "__pycache__" not in p.parts})


def _shipped_text() -> list[Path]:
    """Every text file outside tests/ that the repository ships (data reports and scripts included)."""
    roots = [ROOT / d for d in ("franca", "docs", "benchmarks", "configs", ".ci")]
    files = [p for r in roots if r.is_dir() for p in r.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += [ROOT / n for n in ("README.md", "hubconf.py", "Makefile", "pyproject.toml") if (ROOT / n).is_file()]
    out = []
    for p in sorted(set(files)):
        try:
            p.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # images
            continue
        out.append(p)
    return out


def _hits(pattern: re.Pattern[str], files: list[Path]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for p in files:
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.setdefault(p.relative_to(ROOT).as_posix(), []).append(
                    f"{p.relative_to(ROOT).as_posix()}:{i}: {line.strip()[:100]}"
                )
    return found


def test_scan_covers_the_shipped_files():
    rel = {p.relative_to(ROOT).as_posix() for p in _documentation()}
    for expected in (
        "README.md",
        "hubconf.py",
        "franca/models/heads.py",
        "franca/configs/vitb14-in21k.yaml",
        "docs/training.md",
        "benchmarks/train_step.py",
    ):
        assert expected in rel, expected
    assert len(rel) > 150


def test_the_patterns_catch_citations_not_the_constant():
    for cited in ("see PROTOCOLS.md §1.7", "(PROTOCOLS §2)", "protocols.md", "PROTOCOLS section 5", "DESIGN.md"):
        assert SPEC.search(cited), cited
    for fine in (
        "from franca.ablate.evaluate import PROTOCOLS",
        "choices=PROTOCOLS,",
        'PROTOCOLS = ("knn",',
        "', '.join(PROTOCOLS)",
        "docs/architecture.md",
        "the protocols of the paper",
    ):
        assert not SPEC.search(fine), fine
    assert MACHINE.search("/work/main/x.py") and MACHINE.search("cd /root/data")
    assert not MACHINE.search("work/ and root/ relative") and not MACHINE.search("/data/work")


def test_no_citation_of_unshipped_specs():
    hits = _hits(SPEC, _documentation())
    bad = [line for f, lines in hits.items() if f not in ALLOWED_SPEC for line in lines]
    assert not bad, "cite the paper, the upstream code or a shipped doc instead:\n" + "\n".join(bad)


def test_allow_list_is_exact():
    assert all(f.startswith(("franca/eval/", "franca/commands/", "franca/ablate/")) for f in ALLOWED_SPEC)
    hits = _hits(SPEC, _documentation())
    stale = sorted(ALLOWED_SPEC - set(hits))
    assert not stale, f"no longer cite the spec, remove them from ALLOWED_SPEC: {stale}"


def test_nothing_shipped_names_a_machine_path():
    bad = [line for lines in _hits(MACHINE, _shipped_text()).values() for line in lines]
    assert not bad, "\n".join(bad)
