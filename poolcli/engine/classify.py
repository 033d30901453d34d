"""classify: one text per row -> class probabilities, through the model's own classifier (the row pipeline's
worker for `poolcli classify`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from poolcli.config import RunConfig
from poolcli.engine.pipeline import BatchLoop
from poolcli.engine.plan import ClassifyPlan
from poolcli.engine.signals import StopFlag
from poolcli.engine.tokenize import TextEncoder
from poolcli.faults import Faults
from poolcli.vocab import ErrorCode


class Classifier:
    """Token ids -> transformers' sequence-classification logits (the model's pooler and classifier always run)
    -> calibration -> the final activation, in float32."""

    def __init__(self, run: RunConfig, cplan: ClassifyPlan, faults: Faults, *, quiet: bool) -> None:
        from poolcli.engine.runner import ClassifierRunner, configure_threads
        from poolcli.pooler.heads import ClassifierHead

        self.plan = cplan.text
        self.faults = faults
        self.encoder = TextEncoder(cplan.text)
        model = cplan.text.model
        self.runner = ClassifierRunner(
            model,
            device=run.device,
            dtype=run.dtype,
            trust_remote_code=run.trust_remote_code,
            pad_id=self.encoder.pad_id,
        )
        self.threads = configure_threads(run.threads, self.runner.device)
        self.head = ClassifierHead(
            cplan.activation,
            use_activation=cplan.use_activation,
            logit_mean=cplan.logit_mean,
            logit_sigma=cplan.logit_sigma,
        )
        device = self.runner.device.type
        self.loop = BatchLoop.for_run(run, device, quiet=quiet)
        self.dim = len(cplan.labels)
        self.batches = 0
        self.padded_tokens = 0

    def embed(
        self, seqs: list[list[int]], rows: list[int], stop: StopFlag, on_batch: Callable[[int, int], None]
    ) -> tuple[np.ndarray, dict[int, tuple[ErrorCode, str]]]:

        from poolcli.engine.runner import collate

        out = np.zeros((len(seqs), self.dim), dtype=np.float32)
        f = self.faults

        def forward(batch: list[int]) -> None:
            ids, mask = collate([seqs[j] for j in batch], self.encoder.pad_id)
            batch_rows = [rows[j] for j in batch]
            f.before_batch(batch_rows, ids.numel())
            probs = self.head(self.runner.logits(ids, mask, None)).cpu().numpy()
            for j, row in enumerate(batch_rows):
                if row in f.nan_rows:
                    probs[j] = np.nan
            out[batch] = probs
            self.batches += 1
            self.padded_tokens += ids.numel()

        failed = self.loop.run([len(s) for s in seqs], forward, stop, on_batch)
        for j in np.flatnonzero(~np.isfinite(out).all(axis=1)).tolist():
            failed.setdefault(j, ("NONFINITE_OUTPUT", "the model produced NaN or Inf for this row"))
        return out, failed
