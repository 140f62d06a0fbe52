from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.sasrec import (
    SASRec,
    SASRecConfig,
    build_model,
    count_params,
    encoder_flops,
    encoder_params,
)


def make(seed: int = 0, **kw: object) -> SASRec:
    torch.manual_seed(seed)
    cfg = SASRecConfig(n_items=50, max_len=12, dim=16, head_dim=4, default_heads=2, **kw)  # type: ignore[arg-type]
    return SASRec(cfg).eval()


def batch() -> torch.Tensor:
    x = torch.randint(1, 51, (4, 12))
    x[0, :9] = 0  # 3 items
    x[1, :4] = 0  # 8 items
    x[2, :11] = 0  # 1 item
    return x


def test_forward_returns_last_position_user_vector() -> None:
    model = make()
    x = batch()
    with torch.no_grad():
        out = model(x)
        hidden = model.hidden_states(x)
    assert out.shape == (4, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, hidden[:, -1])


def test_last_state_computes_only_the_last_position_yet_equals_forward() -> None:
    model = make(n_blocks=3)
    x = batch()
    x[3] = 0  # an empty history too
    with torch.no_grad():
        torch.testing.assert_close(model.last_state(x), model(x), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model.last_state(x[:, -8:])[:2], model(x)[:2])
    # The final block's FFN sees one position per row, not T.
    seen: list[tuple[int, ...]] = []
    model.block_list()[-1].ffn.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    with torch.no_grad():
        model.last_state(x)
    assert seen == [(4, 1, 16)]


def test_left_trimmed_input_gives_the_same_user_vector() -> None:
    model = make()
    x = batch()
    with torch.no_grad():
        full = model(x)
        for keep in (8, 5, 3):  # rows 0 and 2 fit into the last 3 columns
            rows = [0, 2] if keep < 8 else [0, 1, 2]
            torch.testing.assert_close(model(x[rows, -keep:]), full[rows], atol=1e-5, rtol=1e-5)


def test_all_padding_rows_are_finite_and_do_not_disturb_others() -> None:
    model = make()
    x = batch()
    x[3] = 0
    with torch.no_grad():
        out = model(x)
        alone = model(x[:3])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:3], alone)


def test_attention_is_causal() -> None:
    model = make()
    x = batch()
    y = x.clone()
    y[:, -1] = (y[:, -1] % 50) + 1  # change only the most recent item
    with torch.no_grad():
        hx, hy = model.hidden_states(x), model.hidden_states(y)
    torch.testing.assert_close(hx[:, :-1], hy[:, :-1])
    assert not torch.allclose(hx[:, -1], hy[:, -1])


def test_per_block_heads_and_ffn_sizes_and_param_count() -> None:
    model = make(n_blocks=2, n_heads=[3, 1], ffn_hidden=[10, 7])
    assert model.block_list()[0].attn.q.out_features == 12
    assert model.block_list()[1].attn.o.in_features == 4
    assert model.block_list()[1].ffn.fc1.out_features == 7
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    linears = sum(count_params(m) for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.block_params() == linears
    assert model.item_matrix().shape == (51, 16)


def test_config_round_trips_through_a_dict() -> None:
    model = make(n_blocks=2, n_heads=[3, 1], ffn_hidden=[10, 7])
    rebuilt = build_model(model.config.to_dict())
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config


def counted_flops(model: SASRec, seq_len: int) -> int:
    x = torch.randint(1, model.config.n_items + 1, (1, seq_len))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.last_state(x)
    return int(counter.get_total_flops())


def test_encoder_flops_match_the_flop_counter_on_last_state() -> None:
    for heads, ffn in (([2, 2], [32, 32]), ([2, 1], [64, 32])):  # uniform, then uneven
        model = make(n_blocks=2, n_heads=heads, ffn_hidden=ffn)
        for seq_len in (5, 12):
            assert encoder_flops(model.config, seq_len) == counted_flops(model, seq_len), (
                heads,
                ffn,
                seq_len,
            )


def test_encoder_flops_reject_lengths_outside_one_to_max_len() -> None:
    cfg = make().config
    for bad in (0, cfg.max_len + 1):
        with pytest.raises(ValueError, match="seq_len"):
            encoder_flops(cfg, bad)


def test_encoder_params_exclude_the_item_table_and_ignore_n_items() -> None:
    model = make(n_blocks=2, n_heads=[3, 1], ffn_hidden=[10, 7])
    expected = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("item_emb"))
    assert encoder_params(model) == expected
    bigger = SASRec(dataclasses.replace(model.config, n_items=5000))
    assert bigger.num_params() > model.num_params()
    assert encoder_params(bigger) == encoder_params(model)


def test_encoder_flops_grow_with_length_and_shrink_with_pruning() -> None:
    cfg = make(n_blocks=2).config
    assert encoder_flops(cfg, 3) < encoder_flops(cfg, 8) < encoder_flops(cfg, 12)
    full = encoder_flops(cfg, 12)
    fewer_heads = dataclasses.replace(cfg, n_heads=[2, 1])
    narrower_ffn = dataclasses.replace(cfg, ffn_hidden=[32, 31])
    assert encoder_flops(fewer_heads, 12) < full
    assert encoder_flops(narrower_ffn, 12) < full
