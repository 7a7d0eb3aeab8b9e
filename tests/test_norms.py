"""`attrib norms`: hidden-state norms by token type."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from tiny_models import FAMILY_NAMES, build, inputs, n_image_tokens

from attrib.analysis.norms import measure_norms, norm_report, token_types
from attrib.cli import main


class KnownNorms(torch.nn.Module):
    """Hidden states with planted norms: text (l + 1), image 3 (l + 1)², latent 500 from layer 1 on."""

    def __init__(self, n_layers: int = 3, dim: int = 8, image_id: int = 7) -> None:
        super().__init__()
        self.n_layers, self.dim, self.image_id = n_layers, dim, image_id

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False, **_: Any) -> Any:
        t = input_ids.shape[1]
        img = (input_ids[0] == self.image_id).float()[:, None]
        hs = []
        for layer in range(self.n_layers + 1):
            u = torch.randn(t, self.dim, generator=torch.Generator().manual_seed(layer))
            u = u / u.norm(dim=-1, keepdim=True)  # unit vectors, random directions
            scale = (1 - img) * (layer + 1) + img * 3 * (layer + 1) ** 2
            if layer > 0:
                scale[-1] = 500.0  # the last token acts as a latent fed back from a hidden state
            hs.append((u * scale)[None])
        return SimpleNamespace(hidden_states=tuple(hs))


def test_planted_norms_and_ratios() -> None:
    ids = torch.tensor([[1, 7, 7, 7, 5, 6, 9]])
    rep = measure_norms(KnownNorms(), [{"input_ids": ids}], image_token_id=7, type_overrides=[{6: 3}])
    np.testing.assert_allclose(rep.mean_norm["text"], [1, 2, 3, 4], rtol=1e-5)
    np.testing.assert_allclose(rep.mean_norm["image"], [3, 12, 27, 48], rtol=1e-5)
    np.testing.assert_allclose(rep.mean_norm["latent"], [1, 500, 500, 500], rtol=1e-5)
    assert rep.n_tokens == {"text": 3, "image": 3, "latent": 1}
    np.testing.assert_allclose(rep.ratio_same_type("image"), [1, 4, 9, 16], rtol=1e-5)
    np.testing.assert_allclose(rep.ratio_to_text_input("latent"), [1, 500, 500, 500], rtol=1e-5)
    np.testing.assert_allclose(rep.ratio_to_text_input("image"), [3, 12, 27, 48], rtol=1e-5)
    d = rep.to_dict()
    assert d["n_layers"] == 3 and d["types"]["image"]["ratio_same_type"][-1] == pytest.approx(16)
    # the acceptance keys: last-layer hidden norm over the same type's input-embedding norm
    assert d["ratios"] == pytest.approx({"text": 4.0, "image": 16.0, "latent": 500.0}, rel=1e-5)


def test_pooling_is_token_weighted_over_inputs() -> None:
    a = [torch.ones(1, 2, 4) * 2.0]  # two text tokens of norm 4
    b = [torch.ones(1, 1, 4) * 5.0]  # one text token of norm 10
    rep = norm_report([a, b], [np.zeros(2), np.zeros(1)])
    assert rep.mean_norm["text"][0] == pytest.approx((4 + 4 + 10) / 3)
    assert rep.n_inputs == 2 and rep.n_tokens["text"] == 3


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="not one of"):
        token_types(torch.tensor([1, 2]), 7, {0: 9})
    with pytest.raises(ValueError, match="outside the sequence"):
        token_types(torch.tensor([1, 2]), 7, {5: 3})
    with pytest.raises(ValueError, match="batch-1"):
        measure_norms(KnownNorms(), [{"input_ids": torch.ones(2, 3, dtype=torch.long)}], image_token_id=7)
    with pytest.raises(ValueError, match="no inputs"):
        measure_norms(KnownNorms(), [], image_token_id=7)
    with pytest.raises(ValueError, match="token types for a sequence"):
        norm_report([[torch.ones(1, 3, 4)]], [np.zeros(2)])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_tiny_random_configs(family: str) -> None:
    model = build(family)
    rep = measure_norms(model, [inputs(family)])
    assert rep.n_tokens["image"] == n_image_tokens(family)
    assert rep.n_layers == model.config.text_config.num_hidden_layers
    for t in ("text", "image"):
        r = rep.ratio_same_type(t)
        assert r[0] == pytest.approx(1.0) and np.isfinite(r).all() and (rep.mean_norm[t] > 0).all()


def test_cli_on_the_bundled_model(tmp_path: Path) -> None:
    assert main(["norms", "--n", "2", "--json", str(tmp_path / "n.json"), "--plot", str(tmp_path / "n.png")]) == 0
    d = json.loads((tmp_path / "n.json").read_text())
    assert set(d["types"]) == {"text", "image"} and d["n_inputs"] == 2
    assert set(d["ratios"]) == {"text", "image"} and all(v > 0 for v in d["ratios"].values())
    assert len(d["types"]["image"]["mean_norm"]) == d["n_layers"] + 1
    assert (tmp_path / "n.png").stat().st_size > 5000
