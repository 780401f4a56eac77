"""The selection benchmark's yardsticks: the reference code itself (yardsticks/reference_code.py)
and our selection on the library eigensolver (benchmarks/selection.py)."""
from __future__ import annotations

import textwrap

import pytest
import torch

from yardsticks.reference_code import ENCODER_FILE, load_reference_select

# A stand-in with the reference's calling convention: the selection lives in
# CLIPVisionTower_PruneSID.forward, which reads the tower's outputs (hidden_states[-2],
# attentions[-2]) and returns (kept states, kept indices).
FAKE_ENCODER = textwrap.dedent(
    '''
    import torch

    class CLIPVisionTower_PruneSID(torch.nn.Module):
        def forward(self, images):
            out = self.vision_tower(images.to(device=self.device, dtype=self.dtype),
                                    output_hidden_states=True, output_attentions=True)
            hidden = out.hidden_states[-2]
            scores = out.attentions[-2][:, :, 0, 1:].sum(dim=1)
            top = scores.topk(self.need_token_num - 1, dim=1).indices + 1
            keep = torch.cat([torch.zeros_like(top[:, :1]), top], dim=1)
            return hidden.gather(1, keep[..., None].expand(-1, -1, hidden.shape[-1])), keep
    '''
)


def test_the_reference_forward_sees_the_given_states_and_attention(tmp_path):
    (tmp_path / ENCODER_FILE).parent.mkdir(parents=True)
    (tmp_path / ENCODER_FILE).write_text(FAKE_ENCODER)
    hidden = torch.randn(2, 1 + 10, 4)
    attention = torch.rand(2, 10)
    keep = load_reference_select(tmp_path)(hidden, attention, 4)
    expected = attention.topk(3, dim=1).indices + 1
    assert keep.shape == (2, 4) and (keep[:, 0] == 0).all()
    assert torch.equal(keep[:, 1:], expected)


def test_a_missing_checkout_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="clip_encoder.py"):
        load_reference_select(tmp_path)


def test_the_library_run_uses_the_library_solver_and_puts_the_setting_back():
    from prunesid._eigen import solve
    from yardsticks.solver import on_solver

    before = solve.SOLVER
    assert on_solver("library", lambda: solve.SOLVER)() == "library"
    assert solve.SOLVER == before
