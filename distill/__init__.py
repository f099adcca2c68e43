"""Offline distillation (teacher → student → ONNX → evaluated store version). Uses torch; may import
``service``, never the other way round. Filled in by the distillation issue."""
