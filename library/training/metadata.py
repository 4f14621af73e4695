"""The `ss_*` metadata of every file a run writes, assembled once and stamped per file.

The model hash and dataset facts are computed once at start (hashing a 2 GB
checkpoint per save would stall training); each file then gets its own epoch,
step count and finish time.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from library.data.plan import dataset_summary
from library.lora.metadata import build_metadata, model_metadata_from_facts


class RunMetadata:
    def __init__(self, parts: Any, session_id: int) -> None:
        cfg = parts.config
        self.config = dataclasses.asdict(cfg)
        warmup = self.config["lr_warmup_steps"]
        if isinstance(warmup, float) and warmup >= 1 and warmup.is_integer():
            self.config["lr_warmup_steps"] = int(warmup)  # sd-scripts writes "4", not "4.0"
        # Raw facts; build_metadata formats them with the same function as library.data's planner.
        self.dataset = dataset_summary(parts.prepared.layouts)
        self.dataset["num_validation_images"] = parts.prepared.held_out_images  # sd-scripts: ss_num_validation_images
        # Hashes come from the loaded bundle: no second pass over a multi-GB checkpoint,
        # and built-in models get their hashes too.
        # the prediction type the run trained (the flag, or the model's own scheduler config)
        self.config["v_parameterization"] = bool(parts.v_prediction)
        self.family = parts.bundle.facts.family.name
        # sd-scripts writes ss_v2 = --v2, which an SD2 run needs; here the model says (library.models.family)
        self.config["v2"] = bool(parts.bundle.facts.family.ss_v2)
        self.model = model_metadata_from_facts(parts.bundle.facts, v2=cfg.v2, v_parameterization=parts.v_prediction)
        self.optimizer = parts.optimizer.description
        self.session_id = session_id
        self.started_at = time.time()
        self.plan = parts.prepared.plan
        self.num_processes = parts.accelerator.num_processes

    def for_file(self, *, epoch: int, steps: int) -> dict[str, str]:
        return build_metadata(
            self.config, dataset=self.dataset, model=self.model, optimizer=self.optimizer,
            session_id=self.session_id, training_started_at=self.started_at, epoch=epoch, steps=steps,
            num_epochs=self.plan.epochs, max_train_steps=self.plan.total_steps,
            num_batches_per_epoch=self.plan.batches_per_epoch, training_finished_at=time.time(),
            num_processes=self.num_processes, family=self.family,
        )
