"""A study = corpus + models + measures + outputs; what ``run``, ``compare`` and ``demo`` execute.

The package holds the study's options (:mod:`.options`: the :class:`Study` schema, its validation
and TOML form) and its stages, each a function over the representation store:

- :mod:`.extraction`: each model's representations into the store (reused when the fingerprint matches);
- :mod:`.scoring`: every model pair with every measure at all layer pairs, into the tidy frame;
- :mod:`.run`: :func:`run_study`, the composition of the stages that writes the outputs.
"""
from .extraction import RANDOM_INIT_SEED_OFFSET, RANDOM_INIT_SUFFIX, extract_model, random_init_seed
from .options import (
    AGREEMENT_MODES,
    DEFAULT_MEASURES,
    DTYPES,
    PACKAGED_DEMO_MODELS,
    PAIRS,
    UNITS,
    Study,
    StudyWriteError,
    best_device,
    check_writable,
)
from .run import Extracted, Representations, StudyResult, extract_all, portable_paths, run_study, versions
from .scoring import model_pairs, score_pairs

__all__ = [
    "AGREEMENT_MODES", "DEFAULT_MEASURES", "DTYPES", "PACKAGED_DEMO_MODELS", "PAIRS", "RANDOM_INIT_SEED_OFFSET",
    "RANDOM_INIT_SUFFIX", "UNITS", "Extracted", "Representations", "Study", "StudyResult", "StudyWriteError", "best_device", "check_writable",
    "extract_all", "extract_model", "model_pairs", "portable_paths", "random_init_seed", "run_study", "score_pairs", "versions",
]
