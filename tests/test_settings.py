from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings, load_settings


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_STORE", "/srv/models")
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("API_KEY", "k")
    settings = load_settings()
    assert (settings.model_store, settings.port, settings.host) == (Path("/srv/models"), 9000, "127.0.0.1")
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k"


def test_defaults_need_no_environment() -> None:
    settings = Settings()
    assert (settings.model_name, settings.max_instances, settings.api_key) == ("fashion-mnist", 1024, None)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("ENGINE", "gpu"),
        ("MAX_INSTANCES", "0"),
        ("POLL_INTERVAL_S", "-1"),
        ("WORKERS", "0"),
        ("WORKERS", "many"),
        ("MAX_PIPELINED_REQUESTS", "0"),
        ("WRITE_TIMEOUT_S", "0"),
        ("WRITE_TIMEOUT_S", "soon"),
    ],
)
def test_invalid_settings_stop_start_up_naming_variable_and_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert f"{variable}='{value}'" in str(stopped.value)


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_api_key_stops_start_up(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # API_KEY=${API_KEY} in a compose file with the variable unset: it would accept an empty key.
    monkeypatch.setenv("API_KEY", value)
    with pytest.raises(SystemExit, match=r"API_KEY=.*must not be empty"):
        load_settings()


def test_workers_auto_means_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("WORKERS", "auto")
    assert 1 <= load_settings().worker_count <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("WORKERS", "3")
    assert load_settings().worker_count == 3
