"""The metadata schema of a published version (metadata.json), the current pointer (current.json) and
the listings' summaries: what training writes and serving reads, validated on both sides."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from core.preprocessing import INPUT_SHAPE

MAX_VERSION = 999_999_999  # version numbers are 1-9 digits, as their folders' names


class InputSpec(BaseModel):
    shape: tuple[int, ...] = INPUT_SHAPE
    dtype: str = "float32"
    min_value: float = 0.0
    max_value: float = 255.0


class ClassMetrics(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class EvaluationMetrics(BaseModel):
    count: int
    loss: float
    accuracy: float
    per_class: dict[str, ClassMetrics]
    ece: float | None = Field(default=None, description="Expected calibration error, 15 equal-width bins.")


class ReliabilityBin(BaseModel):
    lower: float
    upper: float
    count: int
    confidence: float | None = Field(description="Mean confidence of the predictions in the bin.")
    accuracy: float | None = Field(description="Fraction of them that were right.")


class CalibrationMetrics(BaseModel):
    accuracy: float
    nll: float
    ece: float


class CalibrationReport(BaseModel):
    """Temperature scaling, fitted on the validation split and folded into the served model."""

    temperature: float = Field(gt=0)
    before: dict[str, CalibrationMetrics] = Field(description="Split name -> metrics without it.")
    after: dict[str, CalibrationMetrics] = Field(description="Split name -> metrics with it.")


class OodReport(BaseModel):
    """The out-of-distribution detector stored in ood.npz."""

    method: str
    threshold: float
    flag_quantile: float = Field(description="Fraction of the validation split under the threshold.")
    flagged: dict[str, float] = Field(description="Split name -> fraction flagged at the threshold.")


class ModelMetadata(BaseModel):
    name: str
    version: int = Field(
        default=0, ge=0, le=MAX_VERSION, description="Assigned when the version is published."
    )
    created_at: datetime
    class_names: list[str] = Field(min_length=2)
    input: InputSpec = InputSpec()
    training: dict[str, Any] = {}
    epochs_run: int = 0
    best_epoch: int = 0
    training_seconds: float = 0.0
    validation: EvaluationMetrics | None = None
    test: EvaluationMetrics | None = None
    datasets: dict[str, str] = Field(default={}, description="File name -> sha256 of the training data.")
    framework: dict[str, str] = {}
    artifacts: list[str] = Field(default=[], description="Serving artifacts in the version directory.")
    calibration: CalibrationReport | None = None
    ood: OodReport | None = Field(default=None, description="Absent for versions published without ood.npz.")
    derived_from: int | None = Field(default=None, description="The version whose weights this one reuses.")


class VersionSummary(BaseModel):
    version: int
    promoted: bool
    created_at: datetime | None = None
    validation_accuracy: float | None = None
    test_accuracy: float | None = None
    artifacts: list[str] = []
    error: str | None = Field(default=None, description="Why the version's metadata cannot be read.")


class CurrentPointer(BaseModel):
    version: int = Field(ge=1, le=MAX_VERSION)
    promoted_at: datetime
    reason: str = ""
