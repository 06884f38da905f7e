"""ONNX export (f32, legacy exporter), int8 static quantization and graph checks."""
from __future__ import annotations

import collections
import os

import numpy as np
import onnx
import torch

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
CAM_TENSOR = "cam"          # name given to the f32 CAM tensor (ReLU output feeding GlobalAveragePool)


def preprocess(rgb_u8: np.ndarray) -> np.ndarray:
    """N x H x W x 3 uint8 RGB -> N x 3 x H x W float32 normalised (what the TOML describes)."""
    x = rgb_u8.astype(np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _rename_tensor(model: onnx.ModelProto, old: str, new: str):
    g = model.graph
    for n in g.node:
        for i, t in enumerate(n.input):
            if t == old:
                n.input[i] = new
        for i, t in enumerate(n.output):
            if t == old:
                n.output[i] = new
    for vi in list(g.value_info) + list(g.output):
        if vi.name == old:
            vi.name = new


def gap_input(model: onnx.ModelProto) -> str:
    gaps = [n for n in model.graph.node if n.op_type == "GlobalAveragePool"]
    assert len(gaps) == 1, [n.op_type for n in model.graph.node]
    return gaps[0].input[0]


def export_f32(model: torch.nn.Module, path: str, size: int):
    model.eval()
    dummy = torch.zeros(1, 3, size, size)
    torch.onnx.export(model, (dummy,), path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], do_constant_folding=True)
    model.eval()  # the legacy exporter can leave training mode on
    m = onnx.load(path)
    _rename_tensor(m, gap_input(m), CAM_TENSOR)
    m = onnx.shape_inference.infer_shapes(m)
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return path


class _Reader:
    def __init__(self, batches):
        self._it = iter(batches)

    def get_next(self):
        b = next(self._it, None)
        return None if b is None else {"input": b}


def quantize_int8(f32_path: str, int8_path: str, calib_nchw: np.ndarray, method: str = "minmax",
                  keep_first_conv_f32: bool = True):
    """QOperator static int8, per-tensor weights, Conv (+ fused Relu) only.

    keep_first_conv_f32: the 3-input-channel stem conv is much slower as QLinearConv in tract
    than in f32 (measured), so by default it stays float and quantization starts after it."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    exclude = []
    if keep_first_conv_f32:
        g = onnx.load(f32_path).graph
        first = next(n for n in g.node if n.op_type == "Conv")
        exclude = [first.name] + [n.name for n in g.node if n.op_type == "Relu" and first.output[0] in n.input]
    batches = [calib_nchw[i:i + 1] for i in range(len(calib_nchw))]
    cm = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
          "percentile": CalibrationMethod.Percentile}[method]
    quantize_static(
        f32_path, int8_path, _Reader(batches),
        quant_format=QuantFormat.QOperator,
        per_channel=False,
        op_types_to_quantize=["Conv", "Relu"],  # Relu is fused away (output range clamps at 0)
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=cm,
        nodes_to_exclude=exclude,
    )
    return int8_path


def op_histogram(path: str):
    m = onnx.load(path)
    return collections.Counter(n.op_type for n in m.graph.node)


def check_int8(path: str):
    """Quantized ops must be only QLinearConv / QuantizeLinear / DequantizeLinear."""
    ops = op_histogram(path)
    qops = {o for o in ops if o.startswith("QLinear") or o.startswith("Q") and o != "QuantizeLinear"
            or o in ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "QGemm")}
    qops -= {"QLinearConv"}
    assert not qops, f"unexpected quantized ops: {qops}"
    assert ops.get("QLinearConv", 0) > 0
    m = onnx.load(path)
    cam = gap_input(m)
    producer = [n for n in m.graph.node if cam in n.output][0]
    return ops, cam, producer.op_type


def file_mb(path):
    return os.path.getsize(path) / 1e6
