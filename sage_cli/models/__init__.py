"""Models: packaged weights and their cache (packaged, cache, dinov2_onnx), backbones and the SAGE model.

Submodules import torch / transformers inside their functions, so importing this package stays cheap.
"""
