"""The common FastAPI way: a pydantic model validates every number, then a constant answer, no model."""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Request(BaseModel):
    instances: list[list[float]]


@app.post("/predict")
def predict(request: Request) -> dict[str, object]:
    return {
        "predictions": [
            {
                "class_id": 0,
                "class_name": "T-shirt/top",
                "confidence": 1.0,
                "probabilities": [1.0] + [0.0] * 9,
            }
            for _ in request.instances
        ]
    }


@app.get("/health/ready")
def ready() -> dict[str, str]:
    return {"status": "ready"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", access_log=False)
