"""CAM++'s forward pass in numpy (float64), written from 3D-Speaker's module code: the reference
that the ONNX graph (graph.py) is checked against. Slow, for tests; never for audio."""

from __future__ import annotations

import numpy as np

from .campplus import BN_EPS, SEG_LEN, Architecture, Weights


def _np_bn(x: np.ndarray, w: Weights, prefix: str, affine: bool = True) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = w[f"{prefix}.running_mean"].reshape(shape)
    var = w[f"{prefix}.running_var"].reshape(shape)
    y = (x - mean) / np.sqrt(var + BN_EPS)
    if affine:
        y = y * w[f"{prefix}.weight"].reshape(shape) + w[f"{prefix}.bias"].reshape(shape)
    return y


def _np_conv1d(x: np.ndarray, weight: np.ndarray, stride: int = 1, padding: int = 0, dilation: int = 1):
    k = weight.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    t_out = (xp.shape[-1] - dilation * (k - 1) - 1) // stride + 1
    cols = np.stack(
        [xp[:, :, j * dilation : j * dilation + stride * (t_out - 1) + 1 : stride] for j in range(k)], -1
    )
    return np.einsum("bitk,oik->bot", cols, weight.astype(np.float64))


def _np_conv2d(x: np.ndarray, weight: np.ndarray, stride_f: int = 1, padding: int = 1) -> np.ndarray:
    kf, kt = weight.shape[-2:]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    f_out = (xp.shape[2] - kf) // stride_f + 1
    t_out = xp.shape[3] - kt + 1
    out = np.zeros((x.shape[0], weight.shape[0], f_out, t_out))
    for i in range(kf):
        for j in range(kt):
            patch = xp[:, :, i : i + stride_f * (f_out - 1) + 1 : stride_f, j : j + t_out]
            out += np.einsum("bcft,oc->boft", patch, weight[:, :, i, j].astype(np.float64))
    return out


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def reference_embed(weights: Weights, features: np.ndarray, arch: Architecture | None = None) -> np.ndarray:
    """CAM++ on features (batch, frames, 80), computed with numpy alone: what the ONNX graph is
    checked against. Slow (float64, no fusion): for tests, not for audio."""
    arch = arch or Architecture.of(weights)
    w = weights
    x = np.asarray(features, dtype=np.float64).transpose(0, 2, 1)[:, None]  # (B, 1, F, T)
    x = _relu(_np_bn(_np_conv2d(x, w["head.conv1.weight"]), w, "head.bn1"))
    for layer in ("layer1", "layer2"):
        for i, stride in ((0, 2), (1, 1)):
            p = f"head.{layer}.{i}"
            out = _relu(_np_bn(_np_conv2d(x, w[f"{p}.conv1.weight"], stride), w, f"{p}.bn1"))
            out = _np_bn(_np_conv2d(out, w[f"{p}.conv2.weight"]), w, f"{p}.bn2")
            short = x
            if i == 0:
                short = _np_bn(
                    _np_conv2d(x, w[f"{p}.shortcut.0.weight"], stride, padding=0), w, f"{p}.shortcut.1"
                )
            x = _relu(out + short)
    x = _relu(_np_bn(_np_conv2d(x, w["head.conv2.weight"], 2), w, "head.bn2"))
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    x = _relu(
        _np_bn(
            _np_conv1d(x, w["xvector.tdnn.linear.weight"], stride=2, padding=2),
            w,
            "xvector.tdnn.nonlinear.batchnorm",
        )
    )
    for b, (layers, kernel, dilation) in enumerate(arch.blocks, 1):
        for i in range(1, layers + 1):
            p = f"xvector.block{b}.tdnnd{i}"
            h = _relu(_np_bn(x, w, f"{p}.nonlinear1.batchnorm"))
            h = _relu(_np_bn(_np_conv1d(h, w[f"{p}.linear1.weight"]), w, f"{p}.nonlinear2.batchnorm"))
            y = _np_conv1d(
                h,
                w[f"{p}.cam_layer.linear_local.weight"],
                padding=(kernel - 1) // 2 * dilation,
                dilation=dilation,
            )
            context = h.mean(-1, keepdims=True) + _np_seg_pool(h)
            m = _relu(
                _np_conv1d(context, w[f"{p}.cam_layer.linear1.weight"])
                + w[f"{p}.cam_layer.linear1.bias"][:, None]
            )
            m = _np_conv1d(m, w[f"{p}.cam_layer.linear2.weight"]) + w[f"{p}.cam_layer.linear2.bias"][:, None]
            x = np.concatenate([x, y / (1.0 + np.exp(-m))], axis=1)
        x = _np_conv1d(
            _relu(_np_bn(x, w, f"xvector.transit{b}.nonlinear.batchnorm")),
            w[f"xvector.transit{b}.linear.weight"],
        )
    x = _relu(_np_bn(x, w, "xvector.out_nonlinear.batchnorm"))
    std = x.std(-1, ddof=1) if x.shape[-1] > 1 else np.zeros(x.shape[:-1])
    stats = np.concatenate([x.mean(-1), std], axis=-1)[:, :, None]
    emb = _np_conv1d(stats, w["xvector.dense.linear.weight"])[:, :, 0]
    return _np_bn(emb, w, "xvector.dense.nonlinear.batchnorm", affine=False)


def _np_seg_pool(x: np.ndarray) -> np.ndarray:
    """Each frame gets the mean of its 100-frame segment (the last one as long as it is)."""
    t = x.shape[-1]
    out = np.empty_like(x)
    for s in range(0, t, SEG_LEN):
        out[..., s : s + SEG_LEN] = x[..., s : s + SEG_LEN].mean(-1, keepdims=True)
    return out


__all__ = ["reference_embed"]
