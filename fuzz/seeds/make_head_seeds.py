"""Writes tiny ONNX models (a few KB each) into fuzz/seeds/head/: small seeds make the `head`
target fast, and each covers a different part of the head extraction (constant folding of shape
arithmetic, ConstantOfShape/Expand, Split/Concat, quantized ops, reductions).

Run from the repo root: python3 fuzz/seeds/make_head_seeds.py  (needs numpy and onnx).
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper as nh

rng = np.random.default_rng(5)
OUT = "fuzz/seeds/head/"


def f32(*shape):
    return rng.normal(0, 0.3, shape).astype(np.float32)


def save(name, nodes, inits, in_shape=(1, 3, 8, 8), out_shape=(1, 4), opset=17):
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(out_shape))],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, OUT + name + ".onnx")


conv = lambda i, o, **kw: helper.make_node("Conv", [i, "w"], [o], pads=[1, 1, 1, 1], **kw)

# Conv → Relu → GAP → Flatten → Gemm.
save("gap_gemm", [
    conv("input", "c"), helper.make_node("Relu", ["c"], ["r"]),
    helper.make_node("GlobalAveragePool", ["r"], ["g"]),
    helper.make_node("Flatten", ["g"], ["f"], axis=1),
    helper.make_node("Gemm", ["f", "fc", "b"], ["logits"], transB=1),
], [nh.from_array(f32(4, 3, 3, 3), "w"), nh.from_array(f32(4, 4), "fc"), nh.from_array(f32(4), "b")])

# Shape arithmetic folded at extraction: Shape → Gather → Unsqueeze → Concat → Reshape.
save("shape_reshape", [
    conv("input", "c"), helper.make_node("Relu", ["c"], ["r"]),
    helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=1),
    helper.make_node("Shape", ["m"], ["s"]),
    helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
    helper.make_node("Unsqueeze", ["n", "ax0"], ["nu"]),
    helper.make_node("Concat", ["nu", "minus1"], ["newshape"], axis=0),
    helper.make_node("Reshape", ["m", "newshape"], ["flat"]),
    helper.make_node("MatMul", ["flat", "fc"], ["mm"]),
    helper.make_node("Add", ["mm", "b"], ["logits"]),
], [nh.from_array(f32(4, 3, 3, 3), "w"), nh.from_array(np.array(0, np.int64), "zero"),
    nh.from_array(np.array([0], np.int64), "ax0"), nh.from_array(np.array([-1], np.int64), "minus1"),
    nh.from_array(f32(4, 4), "fc"), nh.from_array(f32(4), "b")])

# ConstantOfShape / Expand / Mul / Softmax, Slice and Squeeze.
save("const_expand_softmax", [
    helper.make_node("Constant", [], ["shp"], value=nh.from_array(np.array([1, 4], np.int64))),
    helper.make_node("ConstantOfShape", ["shp"], ["ones"], value=nh.from_array(np.array([1.0], np.float32))),
    helper.make_node("Expand", ["scale", "shp"], ["scale_e"]),
    conv("input", "c"), helper.make_node("Sigmoid", ["c"], ["s"]),
    helper.make_node("GlobalMaxPool", ["s"], ["g"]),
    helper.make_node("Squeeze", ["g", "axes23"], ["sq"]),
    helper.make_node("Slice", ["sq", "st", "en", "ax1"], ["sl"]),
    helper.make_node("Mul", ["sl", "scale_e"], ["m"]),
    helper.make_node("Add", ["m", "ones"], ["a"]),
    helper.make_node("Softmax", ["a"], ["logits"], axis=-1),
], [nh.from_array(f32(6, 3, 3, 3), "w"), nh.from_array(f32(1, 1), "scale"),
    nh.from_array(np.array([2, 3], np.int64), "axes23"), nh.from_array(np.array([1], np.int64), "st"),
    nh.from_array(np.array([5], np.int64), "en"), nh.from_array(np.array([1], np.int64), "ax1")])

# Split / Concat / Transpose / MaxPool / AveragePool / BatchNormalization / Pad.
save("split_concat_pool", [
    conv("input", "c"),
    helper.make_node("BatchNormalization", ["c", "sc", "bi", "mu", "va"], ["bn"]),
    helper.make_node("Pad", ["bn", "pads"], ["p"], mode="constant"),
    helper.make_node("MaxPool", ["p"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
    helper.make_node("Split", ["mp", "sp"], ["a", "b"], axis=1),
    helper.make_node("Transpose", ["b"], ["bt"], perm=[0, 1, 3, 2]),
    helper.make_node("Concat", ["a", "bt"], ["cc"], axis=1),
    helper.make_node("AveragePool", ["cc"], ["ap"], kernel_shape=[5, 5]),
    helper.make_node("Flatten", ["ap"], ["logits"], axis=1),
], [nh.from_array(f32(4, 3, 3, 3), "w"), nh.from_array(f32(4) + 1, "sc"), nh.from_array(f32(4), "bi"),
    nh.from_array(f32(4), "mu"), nh.from_array(np.abs(f32(4)) + 1, "va"),
    nh.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
    nh.from_array(np.array([2, 2], np.int64), "sp")])

# Quantized head: QuantizeLinear → QLinearConv → DequantizeLinear → GAP → QLinearMatMul path.
wq = rng.integers(-20, 20, (4, 3, 3, 3)).astype(np.int8)
save("qlinear", [
    helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"]),
    helper.make_node("QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"], ["yq"], pads=[1, 1, 1, 1]),
    helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    helper.make_node("Relu", ["y"], ["r"]),
    helper.make_node("GlobalAveragePool", ["r"], ["g"]),
    helper.make_node("Flatten", ["g"], ["f"], axis=1),
    helper.make_node("QuantizeLinear", ["f", "fs", "fz"], ["fq"]),
    helper.make_node("QLinearMatMul", ["fq", "fs", "fz", "mq", "ms", "mz", "os", "oz"], ["oq"]),
    helper.make_node("DequantizeLinear", ["oq", "os", "oz"], ["logits"]),
], [nh.from_array(np.array(0.02, np.float32), "xs"), nh.from_array(np.array(0, np.int8), "xz"),
    nh.from_array(wq, "wq"), nh.from_array(np.array(0.01, np.float32), "ws"), nh.from_array(np.array(0, np.int8), "wz"),
    nh.from_array(np.array(0.05, np.float32), "ys"), nh.from_array(np.array(0, np.int8), "yz"),
    nh.from_array(np.array(0.05, np.float32), "fs"), nh.from_array(np.array(0, np.int8), "fz"),
    nh.from_array(rng.integers(-20, 20, (4, 4)).astype(np.int8), "mq"),
    nh.from_array(np.array(0.01, np.float32), "ms"), nh.from_array(np.array(0, np.int8), "mz"),
    nh.from_array(np.array(0.1, np.float32), "os"), nh.from_array(np.array(0, np.int8), "oz")])

# LayerNormalization / Gelu-ish / Pow / Sqrt / Div / Clip / LeakyRelu / ReduceSum (opset 18: axes input).
save("layernorm_misc", [
    conv("input", "c"),
    helper.make_node("LeakyRelu", ["c"], ["lr"], alpha=0.1),
    helper.make_node("ReduceSum", ["lr", "axes23"], ["rs"], keepdims=0),
    helper.make_node("LayerNormalization", ["rs", "gamma", "beta"], ["ln"], axis=-1),
    helper.make_node("Pow", ["ln", "two"], ["sq"]),
    helper.make_node("Add", ["sq", "eps"], ["sqe"]),
    helper.make_node("Sqrt", ["sqe"], ["rt"]),
    helper.make_node("Div", ["ln", "rt"], ["d"]),
    helper.make_node("Clip", ["d", "lo", "hi"], ["logits"]),
], [nh.from_array(f32(4, 3, 3, 3), "w"), nh.from_array(np.array([2, 3], np.int64), "axes23"),
    nh.from_array(f32(4) + 1, "gamma"), nh.from_array(f32(4), "beta"),
    nh.from_array(np.array(2.0, np.float32), "two"), nh.from_array(np.array(1e-3, np.float32), "eps"),
    nh.from_array(np.array(-3.0, np.float32), "lo"), nh.from_array(np.array(3.0, np.float32), "hi")], opset=18)
