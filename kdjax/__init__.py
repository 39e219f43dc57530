"""kdjax: JAX-native knowledge distillation for BERT-style encoders."""

__version__ = "0.1.0"
