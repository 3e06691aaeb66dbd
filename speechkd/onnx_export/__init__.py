"""Export students to ONNX for the device: fp32 + int8, verified against PyTorch, runnable without torch.

    from speechkd.onnx_export import ExportConfig, export_student, verify
    export_student("exp/ctc/final", "exp/ctc/onnx", ExportConfig(quantize=("dynamic", "static"),
                   calibration="data/train.jsonl", data="data/dev.jsonl"))

CTC students: speechkd.onnx_export.ctc (graph, metadata, tokens.txt, config.json), speechkd.onnx_export.quantize
(int8), speechkd.onnx_export.verify (PyTorch vs ONNX). Whisper students: speechkd.onnx_export.whisper_onnx.
What they share (ExportConfig, ExportError, helpers): speechkd.onnx_export.common. Which exporter a student
gets, and verification after it: speechkd.onnx_export.api.
The exported directory is run by the `speechkd_runtime` package (export/speechkd_runtime).
"""

from speechkd.onnx_export.api import export_student
from speechkd.onnx_export.common import ExportConfig, ExportError
from speechkd.onnx_export.ctc import export_ctc, load_ctc_student
from speechkd.onnx_export.verify import VerifyError, verify

__all__ = ["ExportConfig", "ExportError", "export_ctc", "export_student", "load_ctc_student", "VerifyError", "verify"]
