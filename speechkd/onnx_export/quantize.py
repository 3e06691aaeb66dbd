"""int8 versions of an exported fp32 CTC graph, with onnxruntime.quantization.

Two modes:
  dynamic  weights int8 (per tensor), activations quantised at run time from their observed range.
           Needs no data. Only MatMul/Gemm are quantised: they hold almost all weights and time of a
           conformer / transformer / wav2vec2 encoder; ORT's dynamic ConvInteger path is slower than fp32
           convolution on CPU and loses accuracy (measured below), so Conv stays fp32.
  static   QDQ format, activation ranges calibrated (MinMax) on real audio from a manifest through a
           CalibrationDataReader over features from the shared front end; int8 weights per output
           channel, uint8 activations (the U8S8 combination ORT's x86 kernels are fastest with). Again
           only MatMul/Gemm: adding Conv made the model less faithful at no speed gain; softmax, layer norm
           and the log-softmax output stay fp32.

Measured on a 5.07 M parameter conformer_ctc (d 144, 10 layers; random weights with a sharpened head),
12 utterances / 70.6 s of speech, 2 threads on a shared 2-core x86 CPU, single run (rough):

    variant                        size      time    frame-argmax agreement with PyTorch
    PyTorch fp32                   -         2.91 s  1
    ONNX fp32                      20.5 MB   0.82 s  1.0000 (max |dlogp| 2e-5)
    dynamic, MatMul  (chosen)       5.7 MB   0.65 s  0.981
    dynamic, MatMul, per-channel    5.9 MB   0.65 s  0.976
    dynamic, MatMul+Conv            5.5 MB   1.19 s  0.974
    static QDQ, MatMul+Conv         5.8 MB   0.75 s  0.952
    static QDQ, MatMul  (chosen)    6.0 MB   0.76 s  0.969

Dynamic int8 activation scales come from the whole batch, so its results depend on batch mates; the runtime
runs dynamic-int8 models one utterance per call (see speechkd_runtime.ctc).

Before either, the graph goes through onnxruntime's quantisation pre-processing (graph optimisation and
ONNX shape inference), which gives the quantiser shapes and fuses patterns.

After either, the large fp32 weights the quantiser left alone (Conv kernels of the front end, position
tables read through Slice/Gather) are stored weight-only: int8 per output channel (axis 0) with a
DequantizeLinear node in front of their consumer, so compute stays fp32 while the file shrinks. For a
teacher-initialised Whisper-encoder CTC student these are ~12 % of the parameters (conv2 512x512x3 and
the 1500x512 position table), which otherwise keep an int8 model at ~2.9x smaller than fp32 instead of
~3.9x. onnxruntime.quantization has no weight-only 8-bit mode for Conv/Slice inputs (MatMulNBits is for
MatMul/Gather at 2-4 bits), hence this small pass.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from speechkd.io import atomic_write_bytes
from speechkd.errors import SpeechkdError
from speechkd_runtime.audio import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

DYNAMIC_OP_TYPES = ("MatMul", "Gemm")
STATIC_OP_TYPES = ("MatMul", "Gemm")
# fp32 initialisers at least this large are stored weight-only int8 after quantisation; smaller ones
# (biases, layer-norm scales) are worth less than the DequantizeLinear node they would need.
WEIGHT_ONLY_MIN_ELEMENTS = 65536


class QuantizeError(SpeechkdError, ValueError):
    """Quantisation that cannot run as asked (e.g. no calibration audio); the message says how to fix it."""


def calibration_features(spec: str, frontend: dict, size: int, seed: int = 0) -> list[np.ndarray]:
    """Front-end features of up to `size` utterances of `spec`, spread over the whole set (not its head)."""
    from speechkd.data import AudioConfig, SkipList, iter_audio, open_data
    from speechkd_runtime.features import compute_features

    utts = open_data(spec)
    if not utts:
        raise QuantizeError(f"calibration data {spec} holds no utterances")
    if len(utts) > size:
        pick = np.random.default_rng(seed).choice(len(utts), size=size, replace=False)
        utts = [utts[i] for i in sorted(pick)]
    cfg = AudioConfig(sample_rate=int(frontend.get("sample_rate", SAMPLE_RATE_HZ)), max_duration_s=30.0)
    feats = [compute_features(frontend, audio) for _, audio in iter_audio(utts, cfg, SkipList(None, "calibration"))]
    feats = [f for f in feats if len(f) > 0]
    if not feats:
        raise QuantizeError(f"no usable calibration audio in {spec} (all {len(utts)} picked utterances failed to decode)")
    return feats


class FeatureReader:
    """onnxruntime CalibrationDataReader over precomputed features: one utterance per batch (no padding)."""

    def __init__(self, features: Sequence[np.ndarray], input_names: Sequence[str]):
        self.features = list(features)
        self.names = list(input_names)
        self.pos = 0

    def get_next(self) -> dict | None:
        if self.pos >= len(self.features):
            return None
        f = self.features[self.pos]
        self.pos += 1
        return {self.names[0]: f[None].astype(np.float32), self.names[1]: np.array([len(f)], dtype=np.int64)}

    def rewind(self) -> None:
        self.pos = 0

    def __len__(self) -> int:
        return len(self.features)


def _reader(features: Sequence[np.ndarray], input_names: Sequence[str]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(FeatureReader, CalibrationDataReader):  # ORT checks isinstance(reader, CalibrationDataReader)
        pass

    return Reader(features, input_names)


def preprocess(fp32: Path, out: Path) -> Path:
    """ORT's recommended pre-quantisation pass (graph optimisation + ONNX shape inference).

    Symbolic shape inference is skipped: it cannot resolve these graphs' length arithmetic (conv
    subsampling floors), and on failure onnxruntime dumps `sym_shape_infer_temp.onnx` plus external-data
    files into the working directory.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
        return out
    except Exception as e:  # pre-processing is an optimisation; quantising the raw graph is still correct
        log.warning("quantisation pre-processing failed (%s); quantising the exported graph as is", e)
        return fp32


def quantize_model(fp32: str | os.PathLike, out: str | os.PathLike, mode: str, *, frontend: dict | None = None,
                   calibration: str | None = None, calibration_size: int = 32,
                   features: Sequence[np.ndarray] | None = None, per_channel: bool | None = None,
                   op_types: Sequence[str] | None = None) -> Path:
    """Write an int8 version of `fp32` to `out`. Static mode needs `features` or `calibration` + `frontend`."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    fp32, out = Path(fp32), Path(out)
    names = [i.name for i in onnx.load(str(fp32), load_external_data=False).graph.input]
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quant.") as tmp:
        src = preprocess(fp32, Path(tmp) / "pre.onnx")
        part = Path(tmp) / "int8.onnx"
        if mode == "dynamic":
            quantize_dynamic(str(src), str(part), weight_type=QuantType.QInt8,
                             per_channel=bool(per_channel) if per_channel is not None else False,
                             op_types_to_quantize=list(op_types or DYNAMIC_OP_TYPES))
        elif mode == "static":
            if features is None:
                if not calibration or frontend is None:
                    raise QuantizeError("static int8 needs calibration audio: pass --calibration MANIFEST")
                features = calibration_features(calibration, frontend, calibration_size)
            log.info("calibrating static int8 on %d utterances", len(features))
            quantize_static(str(src), str(part), _reader(features, names), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=True if per_channel is None else bool(per_channel),
                            op_types_to_quantize=list(op_types or STATIC_OP_TYPES))
        else:
            raise QuantizeError(f"unknown quantisation mode {mode!r}; choose 'dynamic' or 'static'")
        store_weights_int8(part)
        os.replace(part, out)
    return out


def store_weights_int8(path: str | os.PathLike, min_elements: int = WEIGHT_ONLY_MIN_ELEMENTS) -> list[str]:
    """Rewrite `path` in place: large fp32 initialisers become int8 (symmetric, per slice along axis 0)
    behind a DequantizeLinear that outputs the original name. Returns the names rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    kept, nodes, done = [], [], []
    for init in graph.initializer:
        if (init.data_type != onnx.TensorProto.FLOAT or init.name in graph_inputs
                or int(np.prod(init.dims)) < min_elements or len(init.dims) < 2):
            kept.append(init)
            continue
        w = numpy_helper.to_array(init)
        amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
        base = init.name
        kept += [numpy_helper.from_array(q, f"{base}_int8"), numpy_helper.from_array(scale, f"{base}_scale"),
                 numpy_helper.from_array(np.zeros_like(q, shape=scale.shape), f"{base}_zero_point")]
        nodes.append(helper.make_node("DequantizeLinear", [f"{base}_int8", f"{base}_scale", f"{base}_zero_point"],
                                      [base], name=f"{base}_weight_only_dequant", axis=0))
        done.append(base)
    if done:
        del graph.initializer[:]
        graph.initializer.extend(kept)
        old = list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes + old)  # producers first keeps the graph topologically sorted
        atomic_write_bytes(path, model.SerializeToString())
        log.info("stored %d fp32 weight(s) as int8 weight-only: %s", len(done), ", ".join(done))
    return done


def quantize_rows_int8(path: str | os.PathLike, node_names: Sequence[str] | None = None) -> list[str]:
    """Rewrite `path` in place: each named MatMul (activation x constant 2-D weight; default: every such
    MatMul) becomes a per-row dynamic int8 product. Returns the names rewritten.

    onnxruntime's dynamic quantisation gives a whole activation tensor one scale. Where a few rows (frames)
    carry values 20-60x larger than the rest, as the inputs of Whisper's encoder fc2 do, that one scale
    leaves the other rows a handful of levels; and the scale spans the batch, so a row's result depends on
    its batch mates. Per row, neither happens. Here every row gets its own scale (its max |x| / 127) and
    every weight column its own, in standard ops: Abs, ReduceMax, Div, QuantizeLinear (uint8, zero point
    128), MatMulInteger (u8 x s8, which onnxruntime fuses with the rescaling into MatMulIntegerToFloat).
    onnxruntime.quantization has no per-row mode; CTranslate2 quantises this way. The row statistics cost
    a few elementwise passes: Whisper base's encoder on one 30-s window took ~0.30 s per row against
    0.26-0.29 s per tensor and 0.40 s in fp32 (2 cores, throwaway timings; benchmarks/export.py measures
    whole transcription). A Gather reading columns (axis 1) of a quantised weight, as a tied embedding does,
    reads the int8 columns and their scales instead, so the table is stored once, in int8.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    if node_names is None:
        node_names = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits
                      and len(inits[n.input[1]].dims) == 2]
    wanted = set(node_names)
    matmuls = {n.name: n for n in graph.node if n.name in wanted}
    bad = [name for name, n in matmuls.items() if n.op_type != "MatMul" or n.input[1] not in inits]
    if bad:
        raise QuantizeError(f"{path}: {bad} are not MatMuls with a constant weight; cannot quantise per row")
    missing = wanted.difference(matmuls)
    if missing:
        raise QuantizeError(f"{path}: no MatMul named {sorted(missing)}")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    shared = [numpy_helper.from_array(np.array(1e-8, np.float32), "rowq_eps"),
              numpy_helper.from_array(np.array(127.0, np.float32), "rowq_127"),
              numpy_helper.from_array(np.array(1.0, np.float32), "rowq_one"),
              numpy_helper.from_array(np.array(128, np.uint8), "rowq_zero_point")]
    quantised: dict[str, tuple[str, str]] = {}  # fp32 weight -> (int8 weight, column scales), once per weight
    for w_name in dict.fromkeys(n.input[1] for n in matmuls.values()):
        w = numpy_helper.to_array(inits[w_name])  # [K, M]
        amax = np.abs(w).max(axis=0)
        w_scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        w_q = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8)
        base = w_name.strip("/").replace("/", "_").replace(".", "_")
        quantised[w_name] = (f"{base}_w_int8", f"{base}_w_scale")
        graph.initializer.extend([numpy_helper.from_array(w_q, quantised[w_name][0]),
                                  numpy_helper.from_array(w_scale, quantised[w_name][1])])
    nodes, done, gathers = [], [], []
    for node in graph.node:
        p = node.name.strip("/").replace("/", "_")
        if _reads_columns(node) and node.input[0] in quantised:
            # Columns of a quantised weight (a tied embedding read by token id): int8 columns times their scales.
            w_q, w_scale = quantised[node.input[0]]
            ids = node.input[1]
            nodes += [
                helper.make_node("Gather", [w_q, ids], [f"{p}_cols_int8"], name=f"{p}_colq_gather", axis=1),
                helper.make_node("Cast", [f"{p}_cols_int8"], [f"{p}_cols_f"], name=f"{p}_colq_cast",
                                 to=onnx.TensorProto.FLOAT),
                helper.make_node("Gather", [w_scale, ids], [f"{p}_col_scales"], name=f"{p}_colq_scales", axis=0),
                helper.make_node("Mul", [f"{p}_cols_f", f"{p}_col_scales"], list(node.output), name=f"{p}_colq_mul"),
            ]
            gathers.append(node.name)
            continue
        if node.name not in wanted:
            nodes.append(node)
            continue
        x, w_name = node.input
        w_q, w_scale = quantised[w_name]
        nodes += [
            helper.make_node("Abs", [x], [f"{p}_abs"], name=f"{p}_rowq_abs"),
            # axes became an input in opset 18
            helper.make_node("ReduceMax", [f"{p}_abs", "rowq_axes"], [f"{p}_amax"], name=f"{p}_rowq_max", keepdims=1)
            if opset >= 18 else
            helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_amax"], name=f"{p}_rowq_max", keepdims=1, axes=[-1]),
            helper.make_node("Max", [f"{p}_amax", "rowq_eps"], [f"{p}_amax_safe"], name=f"{p}_rowq_floor"),
            helper.make_node("Div", [f"{p}_amax_safe", "rowq_127"], [f"{p}_row_scale"], name=f"{p}_rowq_scale"),
            helper.make_node("Div", [x, f"{p}_row_scale"], [f"{p}_scaled"], name=f"{p}_rowq_div"),
            helper.make_node("QuantizeLinear", [f"{p}_scaled", "rowq_one", "rowq_zero_point"], [f"{p}_x_u8"],
                             name=f"{p}_rowq_quant"),
            helper.make_node("MatMulInteger", [f"{p}_x_u8", w_q, "rowq_zero_point"], [f"{p}_acc"],
                             name=f"{p}_rowq_matmul"),
            helper.make_node("Cast", [f"{p}_acc"], [f"{p}_acc_f"], name=f"{p}_rowq_cast", to=onnx.TensorProto.FLOAT),
            # Column scales first, then row scales: onnxruntime fuses MatMulInteger + Cast + Mul into
            # MatMulIntegerToFloat, which is only right when that Mul's operand is a per-column scale (a
            # [B, T, M] row x column product there gave garbage at ORT_ENABLE_ALL in onnxruntime 1.31).
            helper.make_node("Mul", [f"{p}_acc_f", w_scale], [f"{p}_cols"], name=f"{p}_rowq_col_scale"),
            helper.make_node("Mul", [f"{p}_cols", f"{p}_row_scale"], list(node.output), name=f"{p}_rowq_row_scale"),
        ]
        done.append(node.name)
    if done:
        if opset >= 18:
            shared.append(numpy_helper.from_array(np.array([-1], np.int64), "rowq_axes"))
        used = {i for n in nodes for i in n.input}
        kept = [i for i in graph.initializer if i.name not in quantised or i.name in used]  # drop unread fp32 weights
        del graph.initializer[:]
        graph.initializer.extend(kept + shared)
        del graph.node[:]
        graph.node.extend(nodes)
        atomic_write_bytes(path, model.SerializeToString())
        log.info("quantised %d MatMul(s) per row: %s", len(done), ", ".join(done))
        if gathers:
            log.info("%s read(s) the int8 columns of a quantised weight: %s", len(gathers), ", ".join(gathers))
    return done


def column_gathers_of_matmul_weights(path: str | os.PathLike) -> list[str]:
    """Gather nodes that read columns (axis 1) of a 2-D weight some MatMul also uses: tied embeddings, which
    quantize_rows_int8 serves from the MatMul's int8 copy (so onnxruntime's own Gather quantisation must
    leave them alone)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {n.input[1] for n in graph.node if n.op_type == "MatMul"}
    return [n.name for n in graph.node if _reads_columns(n) and n.input[0] in weights]


def _reads_columns(node) -> bool:
    """A Gather along axis 1: it picks columns of its data (a [K, M] weight read by column id)."""
    return node.op_type == "Gather" and next((a.i for a in node.attribute if a.name == "axis"), 0) == 1
