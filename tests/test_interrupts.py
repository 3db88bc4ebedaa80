"""Ctrl-C and SIGTERM while training: raised between steps, never inside the epoch's writes.

A `KeyboardInterrupt` raised inside a database call (Optuna's and MLflow's SQLite stores are
written in the epoch callback) could leave the file locked, and `tune` then hung while it failed
the trial. These send real signals to this process (pytest runs tests in the main thread).
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from polypseg.config import TrainConfig
from polypseg.interrupts import deferred, interrupt_point, raise_interrupt
from polypseg.training.fit import FeatureSet, fit

CPU = torch.device("cpu")


def _features(n: int) -> FeatureSet:
    g = torch.Generator().manual_seed(n)
    return FeatureSet(torch.randn(n, 8, 8, 8, generator=g).half(), torch.zeros(n, 1, 32, 32).byte())


@pytest.fixture(autouse=True)
def sigint_raises():
    """SIGINT as Python sets it up in a terminal: a shell that starts the suite in the background
    hands it over ignored, and an ignored Ctrl-C is rightly never raised."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def sigterm_raises():
    """SIGTERM handled as the CLI handles it."""
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_the_epoch_callback_is_raised_when_the_callback_is_done(
    signum: int, sigterm_raises: None
) -> None:
    finished = []

    def callback(metrics: dict[str, float]) -> None:
        os.kill(os.getpid(), signum)  # arrives while the callback "writes" to a store
        finished.append(metrics["epoch"])  # the rest of the write still happens

    config = TrainConfig(epochs=5, batch_size=4, lr=1e-2, patience=0)
    with pytest.raises(KeyboardInterrupt):
        fit(_features(8), _features(4), 8, 8, config, CPU, callback)
    assert finished == [1]  # the callback ran to its end, and no further epoch started
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is raise_interrupt


def test_a_signal_during_a_step_stops_training_at_the_next_step(
    sigterm_raises: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import polypseg.training.fit as fit_module

    epochs, steps = [], []
    step = fit_module.train_step

    def interrupting_step(*args, **kwargs):
        steps.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
        return step(*args, **kwargs)

    monkeypatch.setattr(fit_module, "train_step", interrupting_step)
    config = TrainConfig(epochs=3, batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        fit(_features(8), _features(4), 8, 8, config, CPU, lambda m: epochs.append(m["epoch"]))
    assert steps == [1] and epochs == []  # the step finished; no second step, no callback


def test_a_second_signal_raises_at_once() -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), deferred():
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("after the first")
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("after the second")
    assert reached == ["after the first"]
    interrupt_point()  # nothing left pending


def test_a_pending_signal_is_not_lost_when_the_block_ends_in_an_exception() -> None:
    class Pruned(Exception):
        pass

    with pytest.raises(KeyboardInterrupt) as raised, deferred():
        os.kill(os.getpid(), signal.SIGINT)
        raise Pruned  # a pruned trial must not let the study go on to the next one
    assert isinstance(raised.value.__context__, Pruned)


def test_a_signal_whose_handler_does_not_raise_is_left_alone() -> None:
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            interrupt_point()
        assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_signal_outside_training_stops_the_worker_once_its_trial_is_told(tmp_path) -> None:
    """A signal while a trial writes its figures (here: inside the objective, after training)
    is raised once the trial is told: it is recorded as it ended, and no next trial starts."""
    import optuna
    from optuna.trial import TrialState

    from polypseg.tuning.workers import open_shared_study, run_worker

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sampler, pruner = optuna.samplers.RandomSampler, optuna.pruners.NopPruner()
    study = open_shared_study("s", url, "minimize", sampler, pruner)

    def objective(trial: optuna.Trial) -> float:
        value = trial.suggest_float("x", 0, 1)
        os.kill(os.getpid(), signal.SIGINT)
        return value  # the rest of the trial's writes still happen

    with pytest.raises(KeyboardInterrupt):
        run_worker(study, objective, n_trials=3)
    assert [t.state for t in study.study.get_trials()] == [TrialState.COMPLETE]
