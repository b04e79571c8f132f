"""The torch llama: the shared-prefix training path computes what the plain path computes."""

from __future__ import annotations

import pytest

from engine.local.gguf import LlamaConfig
from engine.local.loop import Example, collate, shared_prefix

pytestmark = pytest.mark.train  # skipped without torch (tests/conftest.py)


def _batch() -> list[Example]:
    head = (1, 5, 9, 4)  # what every example starts with (a system message, say)
    return [
        Example(prompt=(*head, 11, 12, 3), reply=(20, 21, 2)),
        Example(prompt=(*head, 13, 3), reply=(22, 2)),
        Example(prompt=(*head, 14, 15, 16, 3), reply=(23, 24, 25, 2)),
    ]


def test_shared_prefix_stops_before_the_shortest_prompt_ends() -> None:
    batch = _batch()
    assert shared_prefix(batch) == 4
    assert shared_prefix([*batch, Example(prompt=(1, 5, 3), reply=(2,))]) == 2  # one short of its prompt
    assert shared_prefix([*batch, Example(prompt=(7, 5, 9, 4, 3), reply=(2,))]) == 0


@pytest.mark.parametrize("keep", [None, [1, 2, 3, 4, 5, 9, 11, 12, 13, 14, 15, 16, 20, 21, 22, 23, 24]])
def test_shared_prefix_path_gives_the_plain_path_loss_and_gradients(keep: list[int] | None) -> None:
    import torch  # an optional dependency: imported where used, so collection works without it

    from engine.local.torch_model import LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)
    model = LlamaModel(cfg, keep_ids=keep)
    batch = _batch()

    def loss_and_grads(shared: int) -> tuple[float, dict[str, torch.Tensor]]:
        inputs, targets, mask = collate(torch, batch, pad=2, shared=shared)
        if shared:
            prefix = torch.tensor(batch[0].prompt[:shared])
            hidden = model.hidden_shared(prefix, inputs)[mask]
        else:
            hidden = model.hidden(inputs)[mask]
        loss = torch.nn.functional.cross_entropy(model.logits(hidden), model.compact(targets[mask]))
        model.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain = loss_and_grads(0)
    shared_loss, shared = loss_and_grads(4)
    assert 1.0 < plain_loss < 10.0  # a real loss over the 9 reply tokens, not an empty mask
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain.keys() == shared.keys() and len(plain) == 2 * 9 + 3  # 9 per block; embeddings, final norm, output
    for name, grad in plain.items():
        assert torch.allclose(shared[name], grad, atol=1e-6, rtol=1e-4), name
    assert any(float(g.abs().sum()) > 0 for n, g in shared.items() if n.startswith("blocks.0.attn_q"))
