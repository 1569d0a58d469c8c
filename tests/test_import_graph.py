"""The import graph of franca/ follows the seams docs/architecture.md states (parsed with ast, every
import, lazy ones inside functions included): the command layer is imported by nobody but itself, and
every import points down the documented dependency direction."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "franca"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every `franca…` import in one file; `from franca import x` counts
    as importing `franca.x` when x is a submodule, else `franca` (the package's public API)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "franca"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "franca":
                for a in node.names:
                    sub = PACKAGE / a.name
                    out.append(
                        (
                            node.lineno,
                            f"franca.{a.name}" if sub.is_dir() or sub.with_suffix(".py").exists() else "franca",
                        )
                    )
            elif node.module.split(".")[0] == "franca":
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; the graph check expects absolute ones")
    return out


def _unit(module: str) -> str:
    """The unit a module belongs to: its subpackage or top-level module (`franca` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "franca"


def _documented_layers() -> dict[str, float]:
    """Units → rank from the 'Dependency direction:' line of docs/architecture.md (higher imports lower)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    m = re.search(r"Dependency direction: `([^`]+)`", text)
    assert m, f"{ARCHITECTURE} has no 'Dependency direction: `…`' line"
    layers = [re.split(r"[,/]\s*", level.strip()) for level in m.group(1).split("→")]
    return {unit.strip(): len(layers) - 1 - i for i, level in enumerate(layers) for unit in level}


EDGES = [(_module_name(p), line, target) for p in sorted(PACKAGE.rglob("*.py")) for line, target in _project_imports(p)]


def test_graph_was_read():
    assert len(EDGES) > 100 and any(t.startswith("franca.commands") for _, _, t in EDGES)


def test_only_the_command_layer_imports_commands_and_only_main_imports_cli():
    bad = [
        f"{m}:{line} imports {t}"
        for m, line, t in EDGES
        if t.startswith("franca.commands") and not (m == "franca.cli" or m.startswith("franca.commands"))
    ]
    bad += [f"{m}:{line} imports {t}" for m, line, t in EDGES if t.startswith("franca.cli") and m != "franca.__main__"]
    assert not bad, "imports against the seams:\n" + "\n".join(bad)


def test_every_import_points_down_the_documented_direction():
    layers = _documented_layers()
    # the package's own __init__ is the public API, a lazy facade over models (just above them);
    # __main__ runs the cli
    layers.setdefault("franca", layers["models"] + 0.5)
    layers.setdefault("__main__", max(layers.values()) + 1)
    units = {_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    missing = sorted(units - set(layers))
    assert not missing, f"units not placed in docs/architecture.md's dependency direction: {missing}"
    bad = []
    for m, line, t in EDGES:
        src, dst = _unit(m), _unit(t)
        if src == dst:
            continue
        if layers[dst] >= layers[src]:
            bad.append(f"{m}:{line} imports {t} ({src} rank {layers[src]} → {dst} rank {layers[dst]})")
    assert not bad, "imports that do not point down the documented direction:\n" + "\n".join(bad)


def _command_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in one file, `from franca.commands import x` read as `franca.commands.x`."""
    out = _project_imports(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "franca.commands":
            out += [(node.lineno, f"franca.commands.{a.name}") for a in node.names]
    return out


def _is_command(module: str) -> bool:
    """A sub-command's module (`franca.commands.eval_knn`), not a shared one (`franca.commands._common`)."""
    parts = module.split(".")
    return len(parts) == 3 and parts[:2] == ["franca", "commands"] and not parts[2].startswith("_")


def test_no_command_imports_another_command():
    """What two commands share lives in a shared module of the command layer (`_common`, `_flags`, `_training`)."""
    commands = [p for p in sorted((PACKAGE / "commands").glob("*.py")) if _is_command(_module_name(p))]
    assert len(commands) > 10
    bad = [
        f"{_module_name(p)}:{line} imports {t}"
        for p in commands
        for line, t in _command_imports(p)
        if _is_command(t) and t != _module_name(p)
    ]
    assert not bad, "commands that import another command:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "snippet,bad",
    [
        ("from franca.commands.pretrain import print_summary\n", True),
        ("def f():\n    from franca.commands import viz_attention\n", True),
        ("from franca.commands._training import print_summary\n", False),
    ],
)
def test_the_command_check_sees_both_import_forms(tmp_path, snippet, bad):
    f = tmp_path / "m.py"
    f.write_text(snippet)
    assert any(_is_command(t) for _, t in _command_imports(f)) is bad


def test_models_import_nothing_of_the_project_but_utils():
    bad = [
        f"{m}:{line} imports {t}"
        for m, line, t in EDGES
        if _unit(m) == "models" and _unit(t) not in ("models", "utils")
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "snippet,expected",
    [
        ("from franca.commands._common import mean_std\n", ["franca.commands._common"]),
        ("def f():\n    import franca.train.loop as loop\n", ["franca.train.loop"]),
        ("from franca import eval\n", ["franca.eval"]),
        ("import numpy, franca\n", ["franca"]),
    ],
)
def test_parser_finds_lazy_and_package_imports(tmp_path, snippet, expected):
    f = tmp_path / "m.py"
    f.write_text(snippet)
    assert [t for _, t in _project_imports(f)] == expected


def test_package_names_are_lazy_and_resolve():
    """`import franca` / `import franca.models` import no torch; each public name resolves on first use
    (franca.utils.lazy.lazy_exports, the one shim both packages use); unknown names say which package."""
    import subprocess
    import sys

    code = (
        "import sys, franca, franca.models; assert 'torch' not in sys.modules, 'torch imported';"
        "import franca.models.api as api, franca.models.backbone as bb;"
        "assert franca.load_backbone is api.load_backbone and franca.models.build_backbone is api.build_backbone;"
        "assert franca.models.DinoVisionTransformer is bb.DinoVisionTransformer and callable(franca.releases)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
    import franca.models

    with pytest.raises(AttributeError, match="module 'franca.models' has no attribute 'nope'"):
        franca.models.nope  # noqa: B018


def test_no_module_uses_another_modules_private_names():
    """`from franca.x import _y` and `module._y` on an imported franca module: a private name stays in its module
    (e.g. the linear probe uses franca.eval.features.batch_features, not its _forward)."""
    import ast

    root = Path(__file__).resolve().parent.parent / "franca"
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        modules = set()  # local names bound to franca modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("franca"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        where = f"{path.relative_to(root.parent)}:{node.lineno}"
                        found.append(f"{where} from {node.module} import {alias.name}")
                    elif alias.name.islower():
                        modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                modules |= {a.asname for a in node.names if a.name.startswith("franca") and a.asname}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not found, "\n".join(found)


def test_no_unsafe_deserialisation_in_the_package():
    """No pickle.load/loads/Unpickler, no torch.load without weights_only=True, no allow_pickle=True."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for pattern in (
            r"pickle\.loads?\(",
            r"Unpickler\(",
            r"allow_pickle\s*=\s*True",
            r"read_pickle\(",
            r"joblib\.load\(",
            r"dill\.loads?\(",
            r"cloudpickle\.loads?\(",
        ):
            bad += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start() : text.find("\n\n", m.start())]
            depth, end = 0, None
            for i, ch in enumerate(call):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0 and ch == ")":
                    end = i
                    break
            if "weights_only=True" not in call[:end]:
                bad.append(f"{path.name}: {call[:end]}")
    assert not bad, bad


def test_no_module_imports_the_webdataset_packages():
    """The shards are read by franca.data.datasets.shards; `webdataset` and `braceexpand` are not dependencies."""
    import ast

    root = Path(__file__).resolve().parents[1]
    for path in (root / "franca").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not {n.split(".")[0] for n in names} & {"webdataset", "braceexpand"}, path
    assert (
        "webdataset" not in (root / "pyproject.toml").read_text()
        and "braceexpand" not in (root / "pyproject.toml").read_text()
    )
