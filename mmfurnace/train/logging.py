"""Run logging: one JSON line per record in ``metrics.jsonl``, the same scalars in TensorBoard,
and a rich progress bar. Only rank 0 creates a logger that writes; the others get a silent one.

A record is ``{"kind": "step" | "epoch" | ..., "epoch": e, "step": s, "time": unix, ...}``;
nested dicts (e.g. ``{"val": {"accuracy": 0.9}}``) stay nested in JSON and become
``val/accuracy`` tags in TensorBoard.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class RunLogger:
    """Append-only JSONL + TensorBoard writer for one run directory.

    ``resume_step``: when a run is resumed from a checkpoint taken at that step, records logged
    after it by the interrupted run are dropped (from the JSONL, and purged in TensorBoard), so
    the logs read as one uninterrupted run.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        else:
            _truncate_after(self.path, resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: slow, lazy

            purge = resume_step + 1 if resume_step is not None else None
            self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tb"), purge_step=purge)

    def log(self, kind: str, *, epoch: int, step: int, **values: Any) -> None:
        """Write one record; numbers (also nested) go to TensorBoard at ``step``."""
        if not self.enabled:
            return
        record = {"kind": kind, "epoch": epoch, "step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=_json_default) + "\n")
        if self._tb is not None:
            for tag, value in _flatten(values, prefix=f"{kind}/"):
                self._tb.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, optionally only those of one kind."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            if kind is None or record.get("kind") == kind:
                records.append(record)
    return records


class ProgressBar:
    """A rich progress bar over epochs and the steps of the current epoch; silent when disabled."""

    def __init__(self, *, enabled: bool, epochs: int, steps_per_epoch: int, start_epoch: int = 0) -> None:
        self.enabled = enabled
        self._steps_per_epoch = steps_per_epoch
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        )
        self._epochs = self._progress.add_task("epochs", total=epochs, completed=start_epoch, status="")
        self._steps = self._progress.add_task("steps", total=steps_per_epoch, status="")

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def start_epoch(self, epoch: int) -> None:
        if self.enabled:
            self._progress.reset(self._steps, total=self._steps_per_epoch, description=f"epoch {epoch + 1}")

    def step(self) -> None:
        if self.enabled:
            self._progress.update(self._steps, advance=1)

    def status(self, text: str) -> None:
        if self.enabled:
            self._progress.update(self._steps, status=text)

    def end_epoch(self, status: str) -> None:
        if self.enabled:
            self._progress.update(self._epochs, advance=1, status=status)


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _flatten(values: dict[str, Any], prefix: str = ""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix=f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield f"{prefix}{key}", float(value)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # tensors / numpy scalars
        return value.item()
    return str(value)
