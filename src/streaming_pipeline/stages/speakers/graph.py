"""CAM++ as an ONNX graph, written node by node with onnx's helpers from the checkpoint's
weights (campplus.py reads them): what onnxruntime runs. The graph follows the reference
(reference.py) operation for operation; batch norms stay BatchNormalization nodes, which
onnxruntime folds into the convolutions before them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .campplus import BN_EPS, OPSET, SEG_LEN, Architecture, Weights


class _Graph:
    """Nodes and initializers of one ONNX graph, named in order."""

    def __init__(self, weights: Weights) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy = helper, numpy_helper
        self.weights = weights
        self.nodes: list[Any] = []
        self.inits: dict[str, Any] = {}
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = self._numpy.from_array(np.ascontiguousarray(value), name)
        return name

    def w(self, key: str) -> str:
        return self.const(key, self.weights[key].astype(np.float32))

    def op(self, kind: str, inputs: list[str], **attrs: Any) -> str:
        self._n += 1
        out = f"{kind.lower()}_{self._n}"
        self.nodes.append(self._helper.make_node(kind, inputs, [out], **attrs))
        return out

    def bn(self, x: str, prefix: str, affine: bool = True) -> str:
        if affine:
            scale, bias = self.w(f"{prefix}.weight"), self.w(f"{prefix}.bias")
        else:
            c = self.weights[f"{prefix}.running_mean"].shape[0]
            scale = self.const(f"{prefix}.ones", np.ones(c, np.float32))
            bias = self.const(f"{prefix}.zeros", np.zeros(c, np.float32))
        mean, var = self.w(f"{prefix}.running_mean"), self.w(f"{prefix}.running_var")
        return self.op("BatchNormalization", [x, scale, bias, mean, var], epsilon=BN_EPS)

    def conv(
        self,
        x: str,
        key: str,
        *,
        stride: tuple[int, ...],
        pad: int,
        dilation: int = 1,
        bias: str | None = None,
    ):
        dims = len(stride)
        inputs = [x, self.w(key)] + ([self.w(bias)] if bias else [])
        return self.op(
            "Conv", inputs, strides=list(stride), pads=[pad] * (2 * dims), dilations=[dilation] * dims
        )


def onnx_model(weights: Weights, arch: Architecture | None = None) -> Any:
    """CAM++ as an onnx ModelProto (opset 17): input `features` (batch, frames, 80) float32,
    output `embedding` (batch, 192); batch and frames are dynamic."""
    from onnx import TensorProto, checker, helper

    arch = arch or Architecture.of(weights)
    g = _Graph(weights)
    x = _head(g, arch, "features")
    x = g.conv(x, "xvector.tdnn.linear.weight", stride=(2,), pad=2)
    x = g.op("Relu", [g.bn(x, "xvector.tdnn.nonlinear.batchnorm")])
    for b, (layers, kernel, dilation) in enumerate(arch.blocks, 1):
        for i in range(1, layers + 1):
            x = g.op("Concat", [x, _cam_layer(g, x, f"xvector.block{b}.tdnnd{i}", kernel, dilation)], axis=1)
        x = g.op("Relu", [g.bn(x, f"xvector.transit{b}.nonlinear.batchnorm")])
        x = g.conv(x, f"xvector.transit{b}.linear.weight", stride=(1,), pad=0)
    x = g.op("Relu", [g.bn(x, "xvector.out_nonlinear.batchnorm")])
    emb = g.conv(_stats_pool(g, x), "xvector.dense.linear.weight", stride=(1,), pad=0)
    emb = g.bn(emb, "xvector.dense.nonlinear.batchnorm", affine=False)
    g.nodes.append(
        helper.make_node("Squeeze", [emb, g.const("axis2", np.array([2], np.int64))], ["embedding"])
    )
    graph = helper.make_graph(
        g.nodes,
        "campplus",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "frames", arch.feat_dim])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", arch.embedding_size])],
        list(g.inits.values()),
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="streaming-pipeline"
    )
    model.ir_version = 8
    checker.check_model(model)
    return model


def _head(g: _Graph, arch: Architecture, features: str) -> str:
    """The 2-D front end (FCM): (batch, frames, 80) to (batch, 32 * 10, frames)."""
    x = g.op("Transpose", [features], perm=[0, 2, 1])
    x = g.op("Unsqueeze", [x, g.const("axis1", np.array([1], np.int64))])
    x = g.op("Relu", [g.bn(g.conv(x, "head.conv1.weight", stride=(1, 1), pad=1), "head.bn1")])
    for layer in ("layer1", "layer2"):
        for i, stride in ((0, 2), (1, 1)):
            p = f"head.{layer}.{i}"
            out = g.op("Relu", [g.bn(g.conv(x, f"{p}.conv1.weight", stride=(stride, 1), pad=1), f"{p}.bn1")])
            out = g.bn(g.conv(out, f"{p}.conv2.weight", stride=(1, 1), pad=1), f"{p}.bn2")
            short = x
            if i == 0:
                short = g.conv(x, f"{p}.shortcut.0.weight", stride=(stride, 1), pad=0)
                short = g.bn(short, f"{p}.shortcut.1")
            x = g.op("Relu", [g.op("Add", [out, short])])
    x = g.op("Relu", [g.bn(g.conv(x, "head.conv2.weight", stride=(2, 1), pad=1), "head.bn2")])
    flat = arch.m_channels * (arch.feat_dim // 8)
    return g.op("Reshape", [x, g.const("head_shape", np.array([0, flat, -1], np.int64))])


def _cam_layer(g: _Graph, x: str, p: str, kernel: int, dilation: int) -> str:
    """One densely connected layer's new channels: batch norm, ReLU, a 1x1 bottleneck, and the
    context-aware masked TDNN (its mask from the mean over the window and over its segment)."""
    h = g.op("Relu", [g.bn(x, f"{p}.nonlinear1.batchnorm")])
    h = g.conv(h, f"{p}.linear1.weight", stride=(1,), pad=0)
    h = g.op("Relu", [g.bn(h, f"{p}.nonlinear2.batchnorm")])
    pad = (kernel - 1) // 2 * dilation
    y = g.conv(h, f"{p}.cam_layer.linear_local.weight", stride=(1,), pad=pad, dilation=dilation)
    context = g.op("Add", [g.op("ReduceMean", [h], axes=[-1], keepdims=1), _seg_pool(g, h)])
    m = g.conv(
        context, f"{p}.cam_layer.linear1.weight", stride=(1,), pad=0, bias=f"{p}.cam_layer.linear1.bias"
    )
    m = g.conv(
        g.op("Relu", [m]),
        f"{p}.cam_layer.linear2.weight",
        stride=(1,),
        pad=0,
        bias=f"{p}.cam_layer.linear2.bias",
    )
    return g.op("Mul", [y, g.op("Sigmoid", [m])])


def _seg_pool(g: _Graph, x: str) -> str:
    """Each frame's 100-frame segment mean (AveragePool, ceil mode: the last segment averages the
    frames it has), repeated back over the segment and cut to the input's length."""
    pooled = g.op("AveragePool", [x], kernel_shape=[SEG_LEN], strides=[SEG_LEN], ceil_mode=1)
    rep = g.op("Unsqueeze", [pooled, g.const("axis_last", np.array([-1], np.int64))])
    shape = g.op(
        "Concat", [g.op("Shape", [rep], end=3), g.const("seg_len", np.array([SEG_LEN], np.int64))], axis=0
    )
    rep = g.op("Expand", [rep, shape])
    rep = g.op("Reshape", [rep, g.const("flat_shape", np.array([0, 0, -1], np.int64))])
    frames = g.op("Shape", [x], start=2, end=3)
    return g.op(
        "Slice",
        [rep, g.const("zero", np.array([0], np.int64)), frames, g.const("axis_t", np.array([2], np.int64))],
    )


def _stats_pool(g: _Graph, x: str) -> str:
    """Mean and unbiased standard deviation over time, (batch, 2C, 1)."""
    mean = g.op("ReduceMean", [x], axes=[-1], keepdims=1)
    diff = g.op("Sub", [x, mean])
    ss = g.op(
        "ReduceSum", [g.op("Mul", [diff, diff]), g.const("axes_t", np.array([-1], np.int64))], keepdims=1
    )
    frames = g.op("Cast", [g.op("Shape", [x], start=2, end=3)], to=1)
    denom = g.op(
        "Max",
        [
            g.op("Sub", [frames, g.const("one", np.array([1.0], np.float32))]),
            g.const("one", np.array([1.0], np.float32)),
        ],
    )
    std = g.op("Sqrt", [g.op("Div", [ss, denom])])
    return g.op("Concat", [mean, std], axis=1)


def write_onnx(weights: Weights, target: Path) -> Path:
    """The graph with `weights` written to `target` (atomically: a reader never sees half a file)."""
    import onnx

    model = onnx_model(weights)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")  # writers beside each other never share it
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(partial))
    partial.replace(target)
    return target


__all__ = ["onnx_model", "write_onnx"]
