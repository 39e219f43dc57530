"""Data pipeline: tokenizer and text corpora.

Keep this module light: no ``datasets`` / ``transformers`` imports at package
import time (task loaders that need them import them lazily).
"""

from kdjax.data.corpus import CorpusMismatchError, TextCorpus
from kdjax.data.tokenizer import Tokenizer

__all__ = ["CorpusMismatchError", "TextCorpus", "Tokenizer"]
