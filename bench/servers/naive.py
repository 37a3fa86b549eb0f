"""The tutorial server: FastAPI + pydantic + keras model.predict() on every request."""

from __future__ import annotations

import os

import keras
import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

model = keras.models.load_model(os.environ["MODEL_FILE"], compile=False)
app = FastAPI()


class Request(BaseModel):
    instances: list[list[float]]


@app.post("/predict")
def predict(request: Request) -> dict[str, object]:
    probabilities = model.predict(np.asarray(request.instances, np.float32).reshape(-1, 28, 28), verbose=0)
    return {
        "predictions": [{"class_id": int(p.argmax()), "probabilities": p.tolist()} for p in probabilities]
    }


@app.get("/health/ready")
def ready() -> dict[str, str]:
    return {"status": "ready"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", access_log=False)
