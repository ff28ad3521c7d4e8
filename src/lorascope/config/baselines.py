"""Settings of the model-free baselines (STUDY.md §7). Embedded in the study config schema.

Every number here is a default, not a constant in code: the baselines read them from this model.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Percent = Annotated[float, Field(ge=0, le=100)]


class BaselinesConfig(BaseModel):
    """Knobs of the §7 baselines that need no neural model.

    * ``random_draws`` -- seeded draws of each stratified random baseline (summarised as mean, sd and
      the ``percentiles``); the exact expected value is reported alongside, computed in closed form.
    * ``lexical_C`` / ``lexical_max_iter`` -- inverse L2 strength and iteration cap of the MRPC
      logistic regression on lexical features (scikit-learn ``LogisticRegression``, lbfgs).
    * ``span_max_words`` -- longest candidate answer span (words) of the SQuAD sliding-window scorer.
    * ``span_window`` -- words on *each* side of a candidate span in which question words are counted.
    * ``span_idf`` -- where the scorer's IDF weights come from: ``train_contexts`` (document frequency
      over the distinct training paragraphs; the default) or ``context_sentences`` (each question's
      own paragraph, sentences as documents, in the spirit of MCTest's inverse counts).
    * ``span_proximity`` -- credit of a question word found at distance d (1 = adjacent) from the
      span: ``linear`` (W + 1 - d) / W, or ``none`` (1 anywhere in the window, MCTest's flat window).
    * ``literature`` -- attach the literature table (other models' published numbers) to outputs.
    """

    # As the study schema: strict types (no bool → int), no inf/nan.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    random_draws: int = Field(1000, ge=1)
    percentiles: tuple[Percent, Percent] = Field((2.5, 97.5), strict=False)  # a YAML list is fine
    lexical_C: float = Field(1.0, gt=0)
    lexical_max_iter: int = Field(1000, ge=10)
    span_max_words: int = Field(5, ge=1)
    span_window: int = Field(10, ge=1)
    span_idf: Literal["train_contexts", "context_sentences"] = "train_contexts"
    span_proximity: Literal["linear", "none"] = "linear"
    literature: bool = True

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError("percentiles must be (lower, upper) with lower < upper")
        return v
