"""The user encoder: an onnxruntime session over a bundle's `model.onnx`, checked against
the manifest before anything is served with it.

The check covers what the request path relies on: exactly the input and output names of the
manifest, int64 in and float32 out, rank 2 on both, a dynamic batch axis (micro-batches of any
size), and a sequence / vector length that is either dynamic or equal to max_len / dim.

The session is created from the file path, so external data in `model.onnx` (the item matrix
it shares with `items.npy`) resolves inside the bundle directory, and onnxruntime refuses any
location outside it (see `bundle.read_bundle`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bundle import ENCODER_SESSION_CONFIG, BundleError, Manifest

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


class Encoder(Protocol):
    def __call__(self, seqs: I64) -> F32:
        """(B, max_len) left-padded item indices -> (B, dim) user vectors."""
        ...


def _is_dynamic(dim: Any) -> bool:
    return dim is None or isinstance(dim, str)


def _check_tensor(arg: Any, *, role: str, dtype: str, size: int, what: str) -> None:
    """A (batch, size) tensor of `dtype` with a dynamic batch axis; `size` may be dynamic."""
    where = f"model.onnx {role} {arg.name!r}"
    if arg.type != dtype:
        raise BundleError(f"{where} is {arg.type}, expected {dtype}")
    if len(arg.shape) != 2:
        raise BundleError(f"{where} has rank {len(arg.shape)}, expected 2")
    if not _is_dynamic(arg.shape[0]):
        raise BundleError(
            f"{where} has a fixed batch size {arg.shape[0]}; the batch axis must be dynamic"
        )
    if not _is_dynamic(arg.shape[1]) and arg.shape[1] != size:
        raise BundleError(f"{where} has size {arg.shape[1]}, manifest {what} is {size}")


class OnnxEncoder:
    def __init__(self, model_path: Path, *, manifest: Manifest, intra_op_threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only; warnings go to stderr otherwise
        for key, value in ENCODER_SESSION_CONFIG.items():
            options.add_session_config_entry(key, value)
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own pybind exception types
            if "external" in str(e).lower():
                raise BundleError(
                    "model.onnx reads external data that is not inside one of the bundle's "
                    f"files (a plain file name, offset and length within the file): {e}"
                ) from e
            raise BundleError(f"model.onnx cannot be loaded by onnxruntime: {e}") from e
        self._input = manifest.onnx_input
        self._output = manifest.onnx_output
        self._check_signature(manifest)

    def _check_signature(self, m: Manifest) -> None:
        inputs = self._session.get_inputs()
        if [i.name for i in inputs] != [m.onnx_input]:
            raise BundleError(
                f"model.onnx inputs are {[i.name for i in inputs]}, manifest says [{m.onnx_input!r}]"
            )
        _check_tensor(
            inputs[0], role="input", dtype="tensor(int64)", size=m.max_len, what="max_len"
        )
        outputs = {o.name: o for o in self._session.get_outputs()}
        out = outputs.get(m.onnx_output)
        if out is None:
            raise BundleError(
                f"model.onnx has no output {m.onnx_output!r} (outputs: {sorted(outputs)})"
            )
        _check_tensor(out, role="output", dtype="tensor(float)", size=m.dim, what="dim")

    def __call__(self, seqs: I64) -> F32:
        try:
            (vecs,) = self._session.run([self._output], {self._input: seqs})
        except Exception as e:  # onnxruntime raises its own pybind exception types
            raise BundleError(f"model.onnx failed on a batch of shape {seqs.shape}: {e}") from e
        return np.asarray(vecs, dtype=np.float32)
