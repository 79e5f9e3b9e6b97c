"""The zoo: matched small models of the three families of NLP foundation models, trained here.

``homoscope zoo --out DIR`` (:func:`train_zoo`) trains an LSTM language model, a GPT-2 causal Transformer and
a BERT masked language model on one corpus, each under several seeds, with one shared tokenizer and matched
budgets of non-embedding parameters, so that a study can set the differences between architectures and
objectives against the differences between seeds of one recipe. Every model is a folder any study loads by
path (``DIR/gpt-s0``); the documents held out from training are ``DIR/heldout.jsonl``, the corpus to study
them on.

Modules: :mod:`~homoscope.zoo.data` (held-out documents, the tokenizer, windows, batch order, masks),
:mod:`~homoscope.zoo.families` (configs, objectives, parameter counts and budgets),
:mod:`~homoscope.zoo.training` (the recipe and the seeded loop), :mod:`~homoscope.zoo.curves` (``curves.csv``,
``curves.png``), :mod:`~homoscope.zoo.build` (:func:`train_zoo`).
"""
from __future__ import annotations

from .build import DEFAULT_PARAMS, Zoo, train_zoo
from .families import FAMILIES, FAMILY, non_embedding_params, parameter_counts
from .training import Recipe

__all__ = ["DEFAULT_PARAMS", "FAMILIES", "FAMILY", "Recipe", "Zoo", "non_embedding_params", "parameter_counts",
           "train_zoo"]
