"""token-classify: one text per row -> one output vector per token (ALL) or per step tag (STEP), the row
pipeline's worker for `poolcli token-classify`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from poolcli.config import RunConfig
from poolcli.engine.pipeline import BatchLoop
from poolcli.engine.plan import TokenClassifyPlan
from poolcli.engine.signals import StopFlag
from poolcli.engine.tokenize import TextEncoder
from poolcli.faults import Faults
from poolcli.vocab import ErrorCode


class TokenClassifier:
    """Token ids -> per-position logits (the model's own token head, a reward head, or LM head rows) -> STEP
    selection -> calibration -> the final activation, in float32. Each row's result is a [n, C] array: every
    token (ALL) or every step tag (STEP)."""

    def __init__(
        self, run: RunConfig, tplan: TokenClassifyPlan, faults: Faults, *, quiet: bool, offsets: bool = False
    ) -> None:
        from poolcli.engine.runner import ClassifierRunner, configure_threads
        from poolcli.pooler.heads import ClassifierHead

        self.tplan = tplan
        self.plan = tplan.text
        self.faults = faults
        self.encoder = TextEncoder(tplan.text, offsets=offsets)
        self.runner = ClassifierRunner(
            tplan.text.model,
            device=run.device,
            dtype=run.dtype,
            trust_remote_code=run.trust_remote_code,
            pad_id=self.encoder.pad_id,
            per_token=True,
            lm_rows=tplan.lm_rows,
        )
        self.threads = configure_threads(run.threads, self.runner.device)
        self.head = ClassifierHead(
            tplan.activation,
            use_activation=tplan.use_activation,
            logit_mean=tplan.logit_mean,
            logit_sigma=tplan.logit_sigma,
        )
        device = self.runner.device.type
        self.loop = BatchLoop.for_run(run, device, quiet=quiet)
        self.batches = 0
        self.padded_tokens = 0

    def embed(
        self, seqs: list[list[int]], rows: list[int], stop: StopFlag, on_batch: Callable[[int, int], None]
    ) -> tuple[np.ndarray, dict[int, tuple[ErrorCode, str]]]:
        """An object array holding each row's float32 [n, C] outputs, and the failures."""
        import torch

        from poolcli.engine.runner import collate
        from poolcli.pooler.methods import step_pool

        out = np.empty(len(seqs), dtype=object)
        f = self.faults
        tp = self.tplan
        returned = list(tp.returned_token_ids) if tp.returned_token_ids is not None else None

        def forward(batch: list[int]) -> None:
            ids, mask = collate([seqs[j] for j in batch], self.encoder.pad_id)
            batch_rows = [rows[j] for j in batch]
            f.before_batch(batch_rows, ids.numel())
            logits = self.runner.logits(ids, mask, None)
            if returned is not None:
                logits = logits[..., returned]
            # The activation works on each vector alone, so it runs once over the padded batch (one device sync).
            with torch.inference_mode():
                probs = self.head(logits).cpu()
            for k, j in enumerate(batch):
                n = len(seqs[j])
                data = probs[k, :n]
                if tp.pooling == "STEP":
                    data, _ = step_pool(data, ids[k, :n], step_tag_id=tp.step_tag_id, returned_token_ids=None)
                values = data.numpy().astype(np.float32, copy=False)
                if batch_rows[k] in f.nan_rows:
                    values = np.full_like(values, np.nan)
                out[j] = values
            self.batches += 1
            self.padded_tokens += ids.numel()

        failed = self.loop.run([len(s) for s in seqs], forward, stop, on_batch)
        for j, values in enumerate(out):
            if j not in failed and values is not None and not np.isfinite(values).all():
                failed[j] = ("NONFINITE_OUTPUT", "the model produced NaN or Inf for this row")
        return out, failed
