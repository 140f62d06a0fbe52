import numpy as np
import pytest

from bundle import decode_items, encode_items


def test_int8_rows_round_trip_within_half_a_step_per_row() -> None:
    rng = np.random.default_rng(0)
    m = rng.normal(size=(50, 16)).astype(np.float32) * rng.uniform(0.01, 5, size=(50, 1))
    q, scales = encode_items(m, "int8")
    assert q.dtype == np.int8 and scales is not None and scales.shape == (50,)
    err = np.abs(decode_items(q, scales) - m)
    assert (err <= scales[:, None] / 2 + 1e-7).all()


def test_int8_keeps_all_zero_rows_at_zero() -> None:
    m = np.zeros((3, 4), dtype=np.float32)
    q, scales = encode_items(m, "int8")
    assert scales is not None
    assert np.isfinite(scales).all()
    assert (decode_items(q, scales) == 0).all()


def test_fp16_and_fp32_have_no_scales() -> None:
    m = np.arange(12, dtype=np.float32).reshape(3, 4)
    for enc, dtype in (("fp16", np.float16), ("fp32", np.float32)):
        stored, scales = encode_items(m, enc)  # type: ignore[arg-type]
        assert stored.dtype == dtype and scales is None
        np.testing.assert_allclose(decode_items(stored, None), m)


def test_encode_rejects_non_matrix() -> None:
    with pytest.raises(ValueError, match="2-D"):
        encode_items(np.zeros(5, dtype=np.float32), "int8")
