"""Baselines that need no neural model (STUDY.md §7).

* :mod:`.majority` -- MRPC majority class (of the train labels); SQuAD v2 always-no-answer.
* :mod:`.stratified` -- stratified random guessing: exact expected value plus seeded draws.
* :mod:`.lexical_mrpc` -- logistic regression on TF-IDF cosine, token overlap, length difference.
* :mod:`.squad_span` -- sliding-window lexical span scorer with a no-answer threshold tuned on validation.
* :mod:`.literature` -- published numbers of *other models*, with citations.
* :mod:`.run` -- ``run_baselines(data, cfg, seed)`` and ``baselines_markdown(result)``.

This package's ``__init__`` imports nothing heavy: the config schema imports :mod:`.settings`.
"""

from lorascope.config.baselines import BaselinesConfig

__all__ = ["BaselinesConfig"]
