"""Benchmark: what logging an epoch's metrics costs the training loop, on the SQLite store.

A run of `--epochs` epochs, each `--epoch-ms` of torch work (a matmul loop, as training is)
followed by logging the 6 per-epoch metrics, three ways, each in a fresh `sqlite:///` store:
`sync` (`mlflow.log_metrics` per epoch, the epoch waits for the write), `batched` (what
`EpochLog` did: metrics kept in memory, one `log_batch` every 10 s and at the end) and `async`
(`mlflow.log_metrics(..., synchronous=False)`, written by MLflow's background thread; the run
waits for every write at its end). Reported per way: the loop's cost per epoch (median and
slowest call, ms), the epoch's wall time over a run without logging (ms), and the wait at the
end of the run (ms). Then `async_beside_ending_runs`: a study's two trials in threads of one
process (`--n-jobs 2`), one logging its epochs with `synchronous=False` while the other's runs
end: how many of its epochs reach the store, and what its logging raised. Prints one JSON line.

    python benchmarks/bench_epoch_log.py [--epochs 50] [--epoch-ms 250] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import torch
from mlflow.entities import Metric

KEYS = ("train_loss", "val_loss", "val_dice", "val_iou", "epoch_train_s", "epoch_val_s")
FLUSH_S = 10.0


def work(steps: int) -> None:
    """A fixed amount of torch work: the GIL is free during each matmul, as during training, so
    a logging thread that holds it shows up as a longer epoch."""
    a = torch.randn(256, 256)
    for _ in range(steps):
        a = torch.tanh(a @ a)


def steps_for(ms: float) -> int:
    """How many `work` steps take about `ms` here."""
    start, steps = time.perf_counter(), 50
    work(steps)
    return max(1, round(steps * ms / 1000 / (time.perf_counter() - start)))


def metrics(epoch: int) -> dict[str, float]:
    return {key: 1.0 / (epoch + i + 1) for i, key in enumerate(KEYS)}


def sync_way(run_id: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    return (lambda epoch: mlflow.log_metrics(metrics(epoch), step=epoch)), (lambda: None)


def batched_way(run_id: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    pending: list[Metric] = []
    sent_at = [time.monotonic()]

    def flush() -> None:
        mlflow.MlflowClient().log_batch(run_id, metrics=pending)
        pending.clear()
        sent_at[0] = time.monotonic()

    def add(epoch: int) -> None:
        stamp = int(time.time() * 1000)
        pending.extend(Metric(k, v, stamp, epoch) for k, v in metrics(epoch).items())
        if time.monotonic() - sent_at[0] >= FLUSH_S:
            flush()

    return add, flush


def async_way(run_id: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    operations = []

    def add(epoch: int) -> None:
        operations.append(mlflow.log_metrics(metrics(epoch), step=epoch, synchronous=False))

    def wait() -> None:
        for operation in operations:
            operation.wait()

    return add, wait


WAYS = {"none": None, "sync": sync_way, "batched": batched_way, "async": async_way}


def one_run(way: str, epochs: int, steps: int, folder: Path) -> dict[str, float]:
    mlflow.set_tracking_uri(f"sqlite:///{folder / way / 'mlflow.db'}")
    (folder / way).mkdir(parents=True)
    mlflow.set_experiment("bench")
    calls, start = [], time.perf_counter()
    with mlflow.start_run() as run:
        add, finish = WAYS[way](run.info.run_id) if WAYS[way] else (None, None)
        for epoch in range(1, epochs + 1):
            work(steps)
            if add is not None:
                before = time.perf_counter()
                add(epoch)
                calls.append(time.perf_counter() - before)
        loop = time.perf_counter() - start
        if finish is not None:
            finish()
        end_wait = time.perf_counter() - start - loop
    if way != "none":
        logged = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_dice")
        assert [m.step for m in logged] == list(range(1, epochs + 1)), way
    return {
        "epoch_ms": 1000 * loop / epochs,
        "call_median_ms": 1000 * statistics.median(calls) if calls else 0.0,
        "call_max_ms": 1000 * max(calls) if calls else 0.0,
        "end_wait_ms": 1000 * end_wait,
    }


def async_beside_ending_runs(folder: Path, epochs: int = 200) -> dict[str, object]:
    """Trial A logs asynchronously; trial B's runs end meanwhile (`end_run` shuts down the
    store's one async queue, shared by every run of the process)."""
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    client, experiment = mlflow.MlflowClient(), mlflow.set_experiment("race").experiment_id
    run_id, stop, raised = client.create_run(experiment).info.run_id, threading.Event(), []

    def trial_a() -> None:
        try:
            operations = []
            for epoch in range(1, epochs + 1):
                operations.append(
                    mlflow.log_metrics(metrics(epoch), step=epoch, synchronous=False, run_id=run_id)
                )
                time.sleep(0.002)
            for operation in operations:
                operation.wait()
        except Exception as err:  # what a trial's callback would raise
            raised.append(f"{type(err).__name__}: {err}")
        finally:
            stop.set()

    def trial_b() -> None:
        while not stop.is_set():
            client.set_terminated(client.create_run(experiment).info.run_id)

    threads = [threading.Thread(target=trial_b), threading.Thread(target=trial_a)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    logged = len(client.get_metric_history(run_id, "val_dice"))
    return {"epochs": epochs, "epochs_logged": logged, "raised": raised[:1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--epoch-ms", type=float, default=250.0)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    steps = steps_for(args.epoch_ms)
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for way in WAYS:
                folder = Path(tmp) / str(repeat)
                results[way].append(one_run(way, args.epochs, steps, folder))
        race = async_beside_ending_runs(Path(tmp))
    base = statistics.median(r["epoch_ms"] for r in results["none"])
    summary = {"epochs": args.epochs, "epoch_work_ms": args.epoch_ms, "repeats": args.repeats}
    for way in ("sync", "batched", "async"):
        runs = results[way]
        summary[way] = {
            "call_median_ms": round(statistics.median(r["call_median_ms"] for r in runs), 3),
            "call_max_ms": round(max(r["call_max_ms"] for r in runs), 2),
            "epoch_overhead_ms": round(statistics.median(r["epoch_ms"] for r in runs) - base, 2),
            "end_wait_ms": round(statistics.median(r["end_wait_ms"] for r in runs), 1),
        }
    summary["async_beside_ending_runs"] = race
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
