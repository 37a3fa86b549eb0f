"""/predict's and /evaluate's request and response shapes, for the OpenAPI document (the hot path parses
bodies with NumPy). What every route's documentation shares is service/openapi.py's."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from core.metadata import ClassMetrics, ReliabilityBin
from service.openapi import ModelRef

_EXAMPLE_IMAGE = [[0] * 28 for _ in range(28)]


class PredictRequest(BaseModel):
    instances: list[list[float] | list[list[float]]] = Field(
        description="Images as raw pixel values 0-255: each 28x28 nested or 784 flat numbers.",
        examples=[[_EXAMPLE_IMAGE]],
    )


class TopClass(BaseModel):
    class_id: int
    class_name: str
    probability: float


class Prediction(BaseModel):
    class_id: int = Field(examples=[9])
    class_name: str = Field(examples=["Ankle boot"])
    confidence: float = Field(examples=[0.97])
    probabilities: list[float] = Field(description="One per class, in class_names order; they sum to 1.")
    ood: bool | None = Field(
        examples=[False],
        description="Unlike the training data (score above the version's threshold); null for versions "
        "published without an OOD detector. The class and probabilities are returned either way.",
    )
    ood_score: float | None = Field(examples=[41.7], description="Higher is less like the training data.")
    top_k: list[TopClass] | None = Field(None, description="Present when the top_k query parameter is given.")
    input: str | None = Field(
        None, description="With include=input: the 28x28 image the model saw, as a PNG data URL."
    )


class PredictResponse(BaseModel):
    model: ModelRef
    class_names: list[str]
    predictions: list[Prediction]


class EvaluateRequest(BaseModel):
    instances: list[list[float] | list[list[float]]] | None = Field(None, description="As for /predict.")
    labels: list[int | str] | None = Field(None, description="One per instance: class id or class name.")
    dataset: Literal["test"] | None = Field(None, description="Evaluate the Fashion-MNIST test set instead.")
    limit: int | None = Field(None, ge=1, description="With dataset: only the first `limit` images.")


class EvaluateResponse(BaseModel):
    model: ModelRef
    count: int
    loss: float = Field(description="Sparse categorical cross-entropy.")
    accuracy: float
    ece: float = Field(description="Expected calibration error, 15 equal-width confidence bins.")
    reliability: list[ReliabilityBin] = Field(description="The bins ECE is computed from.")
    ood_flagged: float | None = Field(
        description="Fraction flagged out-of-distribution; null without a detector."
    )
    per_class: dict[str, ClassMetrics]
    class_names: list[str]
    confusion_matrix: list[list[int]] = Field(description="Rows are true classes, columns predicted classes.")


def image_body_doc(json_schema: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI requestBody for endpoints that accept JSON, form uploads, raw images and raw pixels."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": json_schema.model_json_schema(ref_template="#/components/schemas/{model}")
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            "labels": {"type": "string", "description": "/evaluate: comma-separated labels"},
                        },
                    }
                },
                "image/*": binary,
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary", "description": "N x 784 uint8 pixels"}
                },
                "application/x-npy": {
                    "schema": {"type": "string", "format": "binary", "description": ".npy array"}
                },
            },
        }
    }
