"""Reproducible in threads: a fit owns its randomness, and a study's trials share one read of the
features; a trial of a two-thread study scores what the same config scores alone."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from polypseg.config import TrainConfig, load_config
from polypseg.features.cache import CachedFeatures
from polypseg.features.prepare import prepare
from polypseg.models.decoder import SimpleDecoder, seeded_decoder
from polypseg.training.fit import FeatureSet, fit

CPU = torch.device("cpu")
TIMINGS = {"epoch_train_s", "epoch_val_s"}  # wall-clock: the one thing that may differ


def _toy(n: int, seed: int) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(n, 1, 16, 16, generator=g) > 0.6).to(torch.uint8)
    small = torch.nn.functional.avg_pool2d(masks.float(), 2)
    return FeatureSet(torch.cat([small, torch.randn(n, 3, 8, 8, generator=g)], 1).half(), masks)


def _history(seed: int) -> list[dict[str, float]]:
    config = TrainConfig(epochs=3, batch_size=4, lr=1e-2, seed=seed)
    history = fit(_toy(12, 0), _toy(4, 1), 4, 8, config, CPU).history
    return [{k: v for k, v in h.items() if k not in TIMINGS} for h in history]


def test_a_seeded_decoder_has_the_weights_of_a_seeded_default_init() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        expected = SimpleDecoder(16, 8).state_dict()
    actual = seeded_decoder("simple", {"in_channels": 16, "width": 8}, 3).state_dict()
    assert list(actual) == list(expected)
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key
    assert not torch.equal(
        seeded_decoder("simple", {"in_channels": 16, "width": 8}, 4).state_dict()["body.0.weight"],
        expected["body.0.weight"],
    )


def test_fit_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _history(7)
    assert torch.equal(torch.get_rng_state(), before)


def test_concurrent_fits_in_threads_equal_lone_fits() -> None:
    alone = {seed: _history(seed) for seed in (1, 2)}
    together: dict[int, list] = {}
    start = threading.Barrier(3)
    stop = threading.Event()

    def run(seed: int) -> None:
        start.wait()
        together[seed] = _history(seed)

    def stir() -> None:  # whoever else uses the global RNG meanwhile
        start.wait()
        while not stop.is_set():
            torch.manual_seed(99)
            torch.rand(64)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    stirrer = threading.Thread(target=stir)
    for thread in (*threads, stirrer):
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    stirrer.join()
    assert together == alone
    assert alone[1] != alone[2]  # the seed matters, so equality above means something


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    reads: Counter = Counter()
    real = CachedFeatures.feature_set

    def counting(self: CachedFeatures, names, pinned: bool = False) -> FeatureSet:  # noqa: ANN001
        reads[tuple(names)] += 1
        return real(self, names, pinned)

    monkeypatch.setattr(CachedFeatures, "feature_set", counting)
    return reads


def test_feature_sets_are_read_once_across_replaced_copies_and_threads(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = prepare(load_config(tiny_config), progress=False)
    reads = _counting_reads(monkeypatch)
    seen: list[FeatureSet] = []

    def trial() -> None:
        copy = dataclasses.replace(prepared, device=CPU)  # what each trial of a study makes
        seen.extend(copy.feature_set(part) for part in ("train", "val", "test"))

    threads = [threading.Thread(target=trial) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(reads.values()) == [1, 1, 1]  # train, val, test: once each, for all four
    assert len({id(s) for s in seen}) == 3  # the very same sets, shared


def test_a_two_thread_study_reads_features_once_and_scores_what_trials_score_alone(
    tiny_config: Path, mlflow_store: str, study_spec: Callable[..., Path], monkeypatch
) -> None:
    from polypseg.tuning.spec import load_spec
    from polypseg.tuning.study import tune

    config = load_config(tiny_config)
    reads = _counting_reads(monkeypatch)
    result = tune(config, load_spec(study_spec(), config), 3, n_jobs=2, progress=False)
    prepared = prepare(config, progress=False)
    assert reads[tuple(prepared.split.names("train"))] == 1  # one read for the study's 3 trials
    trials = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    assert len(trials) == 3
    train, val = prepared.feature_set("train"), prepared.feature_set("val")
    for trial in trials:
        alone = config.with_overrides({**trial.params, "train.epochs": 2})
        fitted = fit(train, val, 64, alone.decoder.width, alone.train, CPU)
        assert trial.value == max(h["val_dice"] for h in fitted.history), trial.number
