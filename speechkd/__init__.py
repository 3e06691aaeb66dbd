"""speechkd: knowledge distillation for speech models.

Pseudo-label unlabelled audio with a Whisper teacher, filter the labels with or without references,
distil small students, and export them to int8 ONNX for an on-device runtime.
"""

__version__ = "0.1.0"
