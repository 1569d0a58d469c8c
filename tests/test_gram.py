"""Gram anchoring (DINOv3 §4): the loss against hand-computed values, the Gram teacher's schedule, the term in a
run (off by default, zero before its start, the Gram teacher equal to the EMA teacher when taken), and --resume
bit for bit with the term on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.training import make_image_folder, tiny_overrides

from franca.losses.gram import gram_loss, gram_matrix
from franca.train.config import load_config
from franca.train.gram import GramAnchoring
from franca.train.loop import Trainer, train
from franca.utils.errors import UserError

GRAM = ["loss.gram_weight=1.0", "loss.gram_start=2", "loss.gram_refresh=2"]


def test_gram_loss_by_hand() -> None:
    # one image, two patches: the student's are orthogonal (G = I), the teacher's parallel (G = all ones):
    # the two off-diagonal entries differ by 1, the diagonal by 0 -> mean of (0, 1, 1, 0) = 0.5
    s = torch.tensor([[[3.0, 0.0], [0.0, 0.5]]])
    t = torch.tensor([[[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]])  # another width: only B and N must agree
    assert torch.equal(gram_matrix(s), torch.eye(2)[None])
    assert float(gram_loss(s, t)) == 0.5
    # 60° apart (cos 0.5) against 90° apart, for 2 images: entries (0, .5, .5, 0) per image -> mean 0.125
    a = torch.tensor([[1.0, 0.0], [0.5, 3**0.5 / 2]])
    assert float(gram_loss(torch.stack([a, a]), torch.stack([torch.eye(2), torch.eye(2)]))) == pytest.approx(0.125)
    # scale per patch does not matter (features are L2-normalised); the teacher gets no gradient
    x = torch.randn(3, 5, 4, requires_grad=True)
    y = torch.randn(3, 5, 4, requires_grad=True)
    loss = gram_loss(x, y)
    torch.testing.assert_close(loss, gram_loss(x * torch.rand(3, 5, 1) * 10, y))
    loss.backward()
    assert x.grad is not None and y.grad is None
    assert float(gram_loss(y.detach(), y.detach())) == 0.0
    with pytest.raises(ValueError, match="differ in images or patches"):
        gram_loss(torch.zeros(2, 4, 3), torch.zeros(2, 5, 3))


def test_gram_teacher_is_taken_at_start_and_every_refresh() -> None:
    part = GramAnchoring(source=torch.nn.Linear(2, 2), weight=1.0, start=3, refresh=4)
    taken = []
    for i in range(16):
        if part.due(i):
            part.take(i)
            taken.append(i)
    assert taken == [3, 7, 11, 15]
    never = GramAnchoring(source=torch.nn.Linear(2, 2), weight=1.0, start=0, refresh=0)
    assert [i for i in range(5) if never.due(i) and never.take(i) is None] == [0]


def test_gram_term_in_a_run(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "img", n=8)
    base = load_config("tiny", tiny_overrides(tmp_path / "off", data))
    assert base.loss.gram_weight == 0.0
    assert [t.name for t in Trainer(base, quiet=True).objective.terms] == ["dino", "ibot", "koleo"]  # off by default

    tr = Trainer(load_config("tiny", tiny_overrides(tmp_path / "on", data, iterations=4) + GRAM), quiet=True)
    assert [(t.name, t.weight) for t in tr.objective.terms][-1] == ("gram", 1.0)
    gram = tr.objective.part("gram")
    tr.run()
    rows = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert [r["gram"] for r in rows[:2]] == [0.0, 0.0] and all(r["gram"] > 0 for r in rows[2:])
    assert gram.taken_at == 2  # refresh 2: taken before iterations 2 (and would be again before 4)
    ckpt = torch.load(tmp_path / "on" / "checkpoint.pth", weights_only=True)
    saved = ckpt["objective"]["gram"]
    assert saved["taken_at"] == 2 and set(saved["teacher"]) == set(tr.teacher["backbone"].state_dict())
    # the Gram teacher is the EMA teacher of that moment: here two EMA updates behind the final teacher
    assert any(not torch.equal(v, ckpt["teacher"][f"backbone.{k}"]) for k, v in saved["teacher"].items())

    # taken before iteration 0 (start 0): the Gram teacher is the EMA teacher itself at that point
    tr0 = Trainer(
        load_config("tiny", tiny_overrides(tmp_path / "zero", data) + ["loss.gram_weight=2", "loss.gram_start=0"]),
        quiet=True,
    )
    g0 = tr0.objective.part("gram")
    from helpers.training import fixed_batch

    out = tr0.step(fixed_batch(4, 16, 8, 2, 4), 0)
    assert g0.taken_at == 0 and out["gram"] > 0  # masked student tokens against the unmasked teacher's
    teacher0 = {k: v for k, v in g0.teacher.state_dict().items()}
    tr0.step(fixed_batch(4, 16, 8, 2, 4, seed=1), 1)  # refresh 0: never retaken
    assert all(torch.equal(teacher0[k], v) for k, v in g0.teacher.state_dict().items())


def test_gram_config_errors_name_the_key(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "img", n=8)
    with pytest.raises(ValueError, match="loss.gram_weight"):
        load_config("tiny", ["loss.gram_weight=-1"])
    with pytest.raises(ValueError, match="loss.gram_refresh"):
        load_config("tiny", ["loss.gram_refresh=-5"])
    late = load_config(
        "tiny", tiny_overrides(tmp_path / "run", data, iterations=4) + ["loss.gram_weight=1", "loss.gram_start=4"]
    )
    with pytest.raises(UserError, match=r"loss.gram_start=4 is not before the run's end \(4 iterations\)"):
        Trainer(late, quiet=True)


class _Stop(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3])  # interrupted before the Gram teacher is taken (2), and after it
def test_resume_with_gram_equals_an_uninterrupted_run_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    data = make_image_folder(tmp_path / "img", n=12)
    extra = [*GRAM, f"train.checkpoint_period={k}", "model.drop_path_rate=0.1"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config("tiny", tiny_overrides(tmp_path / "ref", data, iterations=6) + extra), quiet=True)
        cfg = load_config("tiny", tiny_overrides(tmp_path / "cut", data, iterations=6) + extra)
        original = Trainer.step

        def stop_after_checkpoint(self, batch, i):
            if i == k:  # the checkpoint of iteration k is written; iteration k itself never finishes
                raise _Stop
            return original(self, batch, i)

        monkeypatch.setattr(Trainer, "step", stop_after_checkpoint)
        with pytest.raises(_Stop):
            train(cfg, quiet=True)
        monkeypatch.setattr(Trainer, "step", original)
        cut = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)
        assert cut["iteration"] == k and ("objective" in cut) == (k > 2)
        train(cfg, resume=True, quiet=True)
    finally:
        torch.set_num_threads(threads)

    def rows(d: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]

    assert rows("cut") == rows("ref")
    assert [r["gram"] > 0 for r in rows("ref")] == [False, False, True, True, True, True]
    a = torch.load(tmp_path / "ref" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)
    assert a["objective"]["gram"]["taken_at"] == b["objective"]["gram"]["taken_at"] == 4
    for part in ("student", "teacher"):
        assert all(torch.equal(v, b[part][key]) for key, v in a[part].items()), part
    assert all(
        torch.equal(v, b["objective"]["gram"]["teacher"][key]) for key, v in a["objective"]["gram"]["teacher"].items()
    )
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])


def test_gram_ablation_variant() -> None:
    from franca.ablate.variants import BUILTIN_VARIANTS, DEFAULT_VARIANTS, parse_variants

    (v,) = parse_variants(["gram"])
    cfg = load_config("tiny", [*v.overrides, "train.iterations=150"])
    assert (cfg.loss.gram_weight, cfg.loss.gram_start, cfg.loss.gram_refresh) == (2.0, 100, 100)
    assert "gram" in BUILTIN_VARIANTS and "gram" not in DEFAULT_VARIANTS  # the paper's five run by default
