"""Sequence generation (docs/design.md §10): decoder-only (`causal_lm`) and encoder–decoder (`seq2seq`) task
kinds on the objective seam, their tokenizers, models, generated data and greedy decoding.

Importing this package registers the two task kinds in `objectives.OBJECTIVES`. Nothing here needs the ``text``
extra until a Hugging Face model or tokenizer is built.
"""

from __future__ import annotations

from . import objectives  # noqa: F401  (registers causal_lm and seq2seq)
