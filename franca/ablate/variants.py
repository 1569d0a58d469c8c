"""Sweep variants: a name plus `key=value` config overrides, expanded over seeds into runs.

The default set is the paper's ablation axes (Franca §4, Tables 5/6/9): the
preset itself as the baseline, one nesting level (the DINOv2/iBOT objective with the same finest
prototype count), DINOv2 block masking instead of CyclicMask, the released per-level projection
heads instead of slicing, and no KoLeo. Built in besides them: `gram`, DINOv3's Gram anchoring.
Fair by construction: a variant may not touch a key that sets the compute (iterations, batch, crops,
data, seed); the sweep sets those once for every run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

BUILTIN_VARIANTS: dict[str, tuple[str, ...]] = {
    "franca": (),
    "single-level": ("dino.nesting_levels=1", "ibot.head.nesting_levels=1"),
    "block-mask": ("ibot.mask_type=block",),
    "projection-heads": ("dino.mode=projection", "ibot.head.mode=projection"),
    "no-koleo": ("loss.koleo_weight=0.0",),
    "gram": ("loss.gram_weight=2.0", "loss.gram_start=100", "loss.gram_refresh=100"),
}
BUILTIN_HELP = {
    "franca": "the preset as it is (nested Matryoshka heads, CyclicMask, slicing heads, KoLeo)",
    "single-level": "one nesting level: the DINOv2/iBOT objective, same finest prototype count",
    "block-mask": "DINOv2 multi-block masking instead of CyclicMask",
    "projection-heads": "the released per-level Linear projections instead of slicing",
    "no-koleo": "KoLeo weight 0",
    "gram": "DINOv3's Gram anchoring (weight 2 as in its Gram stage): the patch Gram matrices pulled toward an "
    "EMA-teacher snapshot taken before iteration 100 and every 100 after (not in the default set)",
}
DEFAULT_VARIANTS = ("franca", "single-level", "block-mask", "projection-heads", "no-koleo")
"""The paper's ablation axes (run when --variants is not given)"""

# Keys that set the compute or the data: equal for every variant, so no variant may override them.
FAIRNESS_KEYS = (
    "train.iterations",
    "train.epochs",
    "train.batch_size_per_gpu",
    "train.seed",
    "train.max_minutes",
    "train.output_dir",
    "train.init_from",
    "crops.",
    "data.",
)
# Keys the sweep sets itself for every run.
SWEEP_KEYS = ("train.seed", "train.output_dir")


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    """One training run of the sweep; for ``kind="init"`` the untrained backbone of a seed, for
    ``kind="reference"`` a fixed backbone read from ``weights`` (evaluated once, with the first seed)."""

    variant: str
    seed: int
    overrides: tuple[str, ...] = field(default_factory=tuple)
    kind: str = "train"
    weights: str = ""

    @property
    def key(self) -> str:
        return f"{self.variant}-seed{self.seed}"


def _key_of(override: str) -> str:
    if "=" not in override:
        raise ValueError(f"override {override!r} is not of the form key=value")
    return override.split("=", 1)[0].strip()


def _touches(key: str, guarded: Iterable[str]) -> str | None:
    for g in guarded:
        if key == g or (g.endswith(".") and key.startswith(g)):
            return g
    return None


def parse_variants(
    names: Sequence[str] = DEFAULT_VARIANTS, custom: Sequence[Sequence[str]] = (), allow_unequal: bool = False
) -> list[Variant]:
    """Built-in `names` plus `custom` entries ``[NAME, key=value, ...]``, in that order, names unique.

    Raises ValueError for an unknown built-in name, a duplicate name, a malformed override, or an
    override of a compute key (FAIRNESS_KEYS) unless `allow_unequal`.
    """
    out: list[Variant] = []
    for n in names:
        if n not in BUILTIN_VARIANTS:
            raise ValueError(
                f"unknown variant {n!r}; built-in: {', '.join(BUILTIN_VARIANTS)} "
                "(define your own with --variant NAME key=value ...)"
            )
        out.append(Variant(n, BUILTIN_VARIANTS[n]))
    for entry in custom:
        if not entry:
            raise ValueError("--variant needs a NAME (and key=value overrides)")
        name, *ovs = entry
        if "=" in name:
            raise ValueError(f"--variant {' '.join(entry)}: the first word must be the variant's name, got {name!r}")
        if name in BUILTIN_VARIANTS and ovs:
            raise ValueError(f"variant name {name!r} is built-in; give your variant another name")
        out.append(Variant(name, tuple(ovs) if ovs else BUILTIN_VARIANTS.get(name, ())))
    seen: set[str] = set()
    for v in out:
        if v.name in seen:
            raise ValueError(f"variant {v.name!r} is listed twice")
        seen.add(v.name)
        if v.name == "init":
            raise ValueError("'init' names the untrained reference row; choose another variant name")
        for ov in v.overrides:
            g = _touches(_key_of(ov), FAIRNESS_KEYS)
            if g and not allow_unequal:
                raise ValueError(
                    f"variant {v.name!r} overrides {_key_of(ov)!r}: keys under {g!r} set the compute "
                    "or data and must be equal across variants (give it as a sweep-wide override, "
                    "or pass --allow-unequal)"
                )
    if not out:
        raise ValueError("no variants to run")
    return out


def check_common_overrides(overrides: Sequence[str]) -> None:
    """Sweep-wide overrides may set anything but the keys the sweep sets per run."""
    for ov in overrides:
        k = _key_of(ov)
        if _touches(k, SWEEP_KEYS):
            raise ValueError(f"override {ov!r}: {k} is set by the sweep per run (use --seeds / --out)")


def parse_references(entries: Sequence[str], variants: Sequence[Variant] = ()) -> list[tuple[str, str]]:
    """`NAME=WEIGHTS` entries as (name, weights); a name may not be a variant's or 'init', nor repeat."""
    out: list[tuple[str, str]] = []
    taken = {v.name for v in variants} | {"init"}
    for e in entries:
        name, sep, weights = e.partition("=")
        name, weights = name.strip(), weights.strip()
        if not sep or not name or not weights:
            raise ValueError(f"--reference {e!r}: expected NAME=WEIGHTS (e.g. teacher=runs/demo/checkpoint.pth)")
        if name in taken:
            raise ValueError(f"--reference {e!r}: {name!r} already names a row of the sweep; choose another name")
        taken.add(name)
        out.append((name, weights))
    return out


def expand(
    variants: Sequence[Variant],
    seeds: Sequence[int],
    common: Sequence[str] = (),
    with_init: bool = True,
    references: Sequence[tuple[str, str]] = (),
) -> list[RunSpec]:
    """Every (variant, seed) run, seed-major (a half-done sweep has whole seeds), with the init reference first
    in each seed and the fixed `references` ((name, weights)) before all, evaluated with the first seed. A run's
    overrides: sweep-wide `common` first, then the variant's (the variant wins)."""
    if not seeds:
        raise ValueError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {list(seeds)}")
    check_common_overrides(common)
    specs: list[RunSpec] = [
        RunSpec(name, int(seeds[0]), tuple(common), kind="reference", weights=w) for name, w in references
    ]
    for s in seeds:
        if with_init:
            specs.append(RunSpec("init", int(s), tuple(common), kind="init"))
        for v in variants:
            specs.append(RunSpec(v.name, int(s), tuple(common) + v.overrides))
    return specs
