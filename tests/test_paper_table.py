"""The paper's Table III with attrnet (attrnet.paper.table, attrnet.paper.reproduce, `attrnet paper-table`), and the
end-to-end latent-task head's penalty and proximal steps against the solver's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from attrnet.config import config_from_dict, load_config
from attrnet.data.clothing import BINARY, MULTICLASS
from attrnet.data.groups import group_index
from attrnet.models.latent import LatentTaskHead
from attrnet.mtl.prox import group_ids, group_soft_threshold, soft_threshold
from attrnet.mtl.solver import MTLProblem, objective, smooth_S
from attrnet.paper import reproduce
from attrnet.paper.reproduce import ROWS, check_paper_config, parse_rows, run_paper_table
from attrnet.paper.table import (
    PAPER_ATTRIBUTES,
    PAPER_GROUPS,
    PAPER_TABLE,
    format_markdown,
    majority_probs,
    score_row,
    summarize,
)

REPO = Path(__file__).resolve().parents[1]


def test_paper_config_has_the_papers_attributes_and_groups():
    """configs/clothing-paper.yaml scores the paper's 23 attributes in its 4 groups (Table III's columns)."""
    cfg = load_config(REPO / "configs" / "clothing-paper.yaml")
    check_paper_config(cfg)
    assert len(cfg.attribute_names()) == 23 and sorted(cfg.attribute_names()) == sorted(PAPER_ATTRIBUTES)
    assert {g: len(m) for g, m in cfg.data.groups.items()} == {"colours": 11, "patterns": 6, "parts": 4,
                                                                "appearance": 2}
    assert cfg.data.groups == PAPER_GROUPS
    assert cfg.model.head == "latent" and cfg.model.pretrained is True
    # the table's own record of the paper: each "all" cell is the attribute-weighted mean of its groups (the
    # paper's rounding: 2 decimals of a mean over 23 -> within 0.01)
    sizes = {g: len(m) for g, m in PAPER_GROUPS.items()}
    for row in PAPER_TABLE.values():
        weighted = sum(row[g] * n for g, n in sizes.items()) / 23
        assert abs(weighted - row["all"]) < 0.02, row
    assert PAPER_TABLE["MG-CNN"]["all"] == 92.82 and PAPER_TABLE["S-CNN"]["all"] == 90.43


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    y = (rng.random((n, len(PAPER_ATTRIBUTES))) < 0.3).astype(float)
    y[rng.random(y.shape) < 0.1] = np.nan
    return y


def test_majority_row_is_exact_for_a_constant_predictor():
    """The majority answer: accuracy per attribute is the share of test labels equal to the training majority,
    balanced accuracy exactly 0.5 wherever the test part has both classes."""
    rng = np.random.default_rng(0)
    train, test = _labels(rng, 200), _labels(rng, 60)
    probs = majority_probs(train, len(test))
    assert probs.shape == test.shape and set(np.unique(probs)) <= {0.0, 1.0}
    row = score_row(probs, test, PAPER_ATTRIBUTES, 0.5)
    answer = probs[0]
    per_attr = []
    for j in range(len(PAPER_ATTRIBUTES)):
        y = test[~np.isnan(test[:, j]), j]
        per_attr.append(np.mean(y == answer[j]))
        assert 0 < y.mean() < 1  # both classes present: balanced accuracy of a constant answer is 1/2
    assert row["accuracy"]["all"] == pytest.approx(np.mean(per_attr), abs=1e-12)
    for group, members in PAPER_GROUPS.items():
        idx = [PAPER_ATTRIBUTES.index(a) for a in members]
        assert row["accuracy"][group] == pytest.approx(np.mean([per_attr[i] for i in idx]), abs=1e-12)
        assert row["balanced_accuracy"][group] == 0.5
    assert row["balanced_accuracy"]["all"] == 0.5 and row["accuracy_at_0.5"] == row["accuracy"]


def test_score_row_uses_the_rows_thresholds_and_reports_0_5_beside_them():
    """Each cell is the mean over the group's attributes of the figure at the row's thresholds (and at 0.5)."""
    rng = np.random.default_rng(1)
    y = _labels(rng, 80)
    probs = rng.random(y.shape)
    t = np.linspace(0.2, 0.6, len(PAPER_ATTRIBUTES))
    row = score_row(probs, y, PAPER_ATTRIBUTES, t)

    def figures(thresholds):
        acc, bal = [], []
        for j in range(len(PAPER_ATTRIBUTES)):
            known = ~np.isnan(y[:, j])
            pred, truth = probs[known, j] >= thresholds[j], y[known, j] == 1
            acc.append(np.mean(pred == truth))
            bal.append((np.mean(pred[truth]) + np.mean(~pred[~truth])) / 2)
        return acc, bal

    for suffix, thresholds in (("", t), ("_at_0.5", np.full(len(t), 0.5))):
        acc, bal = figures(thresholds)
        for group, members in PAPER_GROUPS.items():
            idx = [PAPER_ATTRIBUTES.index(a) for a in members]
            assert row["accuracy" + suffix][group] == pytest.approx(np.mean([acc[i] for i in idx]), abs=1e-12)
            assert row["balanced_accuracy" + suffix][group] == pytest.approx(np.mean([bal[i] for i in idx]), abs=1e-12)
        assert row["accuracy" + suffix]["all"] == pytest.approx(np.mean(acc), abs=1e-12)
    assert row["accuracy"]["all"] != row["accuracy_at_0.5"]["all"]  # the thresholds were used


def test_summarize_means_and_spreads_over_splits():
    a = {"S-CNN": {"accuracy": {"all": 0.90, "parts": 0.80}}}
    b = {"S-CNN": {"accuracy": {"all": 0.94, "parts": 0.84}}}
    s = summarize([a, b])
    mean, sd, n = s["S-CNN"]["accuracy"]["all"]
    assert n == 2 and mean == pytest.approx(0.92) and sd == pytest.approx(np.std([0.90, 0.94], ddof=1))
    assert summarize([a])["S-CNN"]["accuracy"]["all"] == [0.90, 0.0, 1]
    text = format_markdown({"S-CNN": {"accuracy": {c: [0.9, 0.01, 2] for c in ("colours", "patterns", "parts",
                                                                                 "appearance", "all")}}},
                           "accuracy")
    assert "| paper: MG-CNN | 93.12 | 95.37 | 88.65 | 91.93 | 92.82 |" in text
    assert "| attrnet: S-CNN | 90.00 ± 1.00 |" in text


def test_parse_rows():
    assert parse_rows("all") == list(ROWS) and "M-CNN" not in parse_rows(None)
    assert parse_rows("MG-CNN,S-CNN") == ["S-CNN", "MG-CNN"]  # in the table's order
    with pytest.raises(Exception, match="unknown row"):
        parse_rows("G-CNN")


def _head(gid):
    torch.manual_seed(0)
    head = LatentTaskHead(12, len(PAPER_ATTRIBUTES), 5, group_ids=gid)
    with torch.no_grad():
        head.L.mul_(3).double()
    return head


def test_latent_head_penalty_is_the_solvers():
    """The head's penalty on (L, S) and the paper's groups equals the solver's objective minus its loss."""
    gidx = group_index(PAPER_GROUPS, PAPER_ATTRIBUTES)
    head = _head(group_ids(gidx, len(PAPER_ATTRIBUTES)))
    L, S = head.L.detach().double(), head.S.detach().double()
    rng = np.random.default_rng(0)
    problem = MTLProblem(torch.from_numpy(rng.normal(size=(30, 12))), torch.from_numpy(_labels(rng, 30)),
                         groups=gidx)
    b = torch.zeros(len(PAPER_ATTRIBUTES), dtype=torch.float64)
    mu, gamma, lam = 0.7, 0.3, 0.2
    loss, _, _ = smooth_S(problem, L, S, b)
    expected = objective(problem, L, S, b, mu, gamma, lam) - float(loss)
    got = float(head.double().penalty(mu, gamma, lam).detach())
    # both sum the same ~150 float64 terms of size ~10 in a different order: 1e-12 relative is ~100 ulps
    assert got == pytest.approx(expected, rel=1e-12)


def test_latent_head_proximal_step_is_the_solvers_operators():
    gidx = group_index(PAPER_GROUPS, PAPER_ATTRIBUTES)
    head = _head(group_ids(gidx, len(PAPER_ATTRIBUTES)))
    L0, S0 = head.L.detach().clone(), head.S.detach().clone()
    head.proximal_step(0.1, mu=2.0, gamma=0.5)
    assert torch.equal(head.S, group_soft_threshold(S0, gidx, 0.2))
    assert torch.equal(head.L, soft_threshold(L0, 0.05))
    assert int((head.S.abs().sum(1) == 0).sum()) >= 0 and head.n_groups == 4


def test_training_proximal_step_is_the_solver_objective_over_the_number_of_labels():
    """fit's proximal step for model.head=latent: thresholds lr mu / n_known and lr gamma / n_known (the mean loss's
    objective is the solver's divided by the number of known training labels), over the config's groups."""
    from attrnet.engine.train import proximal_step_fn
    from attrnet.models.build import build_model

    cfg = config_from_dict({"model": {"head": "latent", "latent_tasks": 5, "backbone": "resnet18"},
                            "mtl": {"mu": 30.0, "gamma": 6.0}})
    model = build_model(cfg.model, len(PAPER_ATTRIBUTES), 3)
    lr = 0.02

    class Schedule:
        def get_last_lr(self):
            return [lr]
    step = proximal_step_fn(model, cfg, PAPER_GROUPS, PAPER_ATTRIBUTES, Schedule(), n_known=300)
    S0, L0 = model.heads.S.detach().clone(), model.heads.L.detach().clone()
    step()
    gidx = group_index(PAPER_GROUPS, PAPER_ATTRIBUTES)
    assert torch.equal(model.heads.S, group_soft_threshold(S0, gidx, lr * 30.0 / 300))
    assert torch.equal(model.heads.L, soft_threshold(L0, lr * 6.0 / 300))
    assert proximal_step_fn(build_model(config_from_dict({}).model, 3, 3), config_from_dict({}), None, list("abc"),
                            Schedule(), 10) is None  # independent heads: nothing to do


def _save_gt(path: Path, values: np.ndarray) -> None:
    import scipy.io
    scipy.io.savemat(str(path), {"GT": np.asarray(values, dtype=np.float64).reshape(-1, 1)})


@pytest.fixture(scope="module")
def clothing_fixture(tmp_path_factory) -> Path:
    """60 small images in the Clothing Attributes layout, every attribute with both values."""
    from PIL import Image
    root = tmp_path_factory.mktemp("clothing")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(3)
    n = 60
    for i in range(n):
        arr = rng.integers(0, 256, (24, 16, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "images" / f"{i + 1:06d}.jpg")
    for stem, _ in BINARY:
        v = np.where(rng.random(n) < 0.35, 2.0, 1.0)
        v[rng.random(n) < 0.05] = np.nan
        _save_gt(root / "labels" / f"{stem}_GT.mat", v)
    for stem, names in MULTICLASS.items():
        _save_gt(root / "labels" / f"{stem}_GT.mat", rng.integers(1, len(names) + 1, n).astype(float))
    return root


def _tiny_paper_config(root: Path, cache: Path):
    raw = yaml.safe_load((REPO / "configs" / "clothing-paper.yaml").read_text())
    raw["data"].update(root=str(root), image_size=16, cache_dir=str(cache), val_fraction=0.2, test_fraction=0.3)
    raw["model"].update(backbone="mobilenet_v3_small", pretrained=False, tta="none", latent_tasks=4)
    raw["train"].update(epochs=1, max_steps_per_epoch=1, batch_size=8, device="cpu", ema=0.0)
    raw["mtl"].update(grid=None, max_outer=20)
    return config_from_dict(raw)


@pytest.mark.slow
def test_paper_table_end_to_end_and_reuses_finished_runs(clothing_fixture, tmp_path, monkeypatch):
    cfg = _tiny_paper_config(clothing_fixture, tmp_path / "cache")
    out = tmp_path / "table"
    result = run_paper_table(cfg, out, [0, 1], rows=list(ROWS), progress=False)
    assert (out / "table.md").is_file() and (out / "table.json").is_file()
    assert set(result["summary"]) == set(ROWS)
    for row, figures in result["summary"].items():
        for figure in ("accuracy", "balanced_accuracy", "accuracy_at_0.5", "balanced_accuracy_at_0.5"):
            for cell in ("colours", "patterns", "parts", "appearance", "all"):
                mean, sd, n = figures[figure][cell]
                assert n == 2 and 0 <= mean <= 1 and sd >= 0, (row, figure, cell)
    assert result["summary"]["majority"]["balanced_accuracy"]["all"][:2] == [0.5, 0.0]
    ckpt = out / "split0" / "MG-CNN" / "checkpoints" / "best.pt"
    stamp = ckpt.stat().st_mtime_ns
    (out / "split0" / "result.json").unlink()  # the split's scores are gone, its runs are kept
    again = run_paper_table(cfg, out, [0], rows=["MG-CNN"], progress=False)
    assert ckpt.stat().st_mtime_ns == stamp  # finished: scored again, not trained again
    assert again["per_split"][0]["rows"]["MG-CNN"] == result["per_split"][0]["rows"]["MG-CNN"]
    monkeypatch.setattr(reproduce, "run_split", None)  # a finished split is read back, never run again
    both = run_paper_table(cfg, out, [0, 1], rows=["MG-CNN"], progress=False)
    assert [s["rows"] for s in both["per_split"]] == [{"MG-CNN": s["rows"]["MG-CNN"]} for s in result["per_split"]]


def test_paper_table_cli_refuses_a_config_that_is_not_the_papers(run_cli, tmp_path):
    code, _, err = run_cli(["paper-table", "--config", str(REPO / "configs" / "synthetic.yaml"),
                            "--out", str(tmp_path / "t")])
    assert code == 2 and err.startswith("attrnet: error:") and "clothing" in err
    assert not (tmp_path / "t").exists()
