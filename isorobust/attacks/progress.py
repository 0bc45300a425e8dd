"""An attack's progress over its ε grid, saved after every ε, so that an interrupted run resumes its attacks
where they stopped (``resume=true``) instead of from the first ε.

A robust-accuracy sweep attacks each ε on the samples the previous ε left (``base.robust_masks``), so its
state after an ε is small: the clean-correct mask, one robust mask per ε done, what each ε cost, and the
random generators' states. Restoring those and going on from the next ε gives the same masks, bit for bit,
as the run that was not interrupted (tests/test_attack_progress.py checks it).

A saved state belongs to one fingerprint (the job's result-relevant configuration and the model's weights,
``fingerprint``); a state saved under another one is ignored, never merged. One file per attack in the
run's ``attack_progress/`` folder (``rundir.ATTACK_PROGRESS``), written atomically and read weights-only;
the job removes the folder once the run's results are written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from isorobust import io
from isorobust.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = 1


def fingerprint(config: dict[str, Any], model: nn.Module) -> str:
    """A digest of what decides an attack's outcome: the result-relevant configuration (flattened, as
    ``config`` gives it) and the model's weights, byte for byte."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def generator_states() -> dict[str, Any]:
    """The global random generators' states: CPU, and every CUDA device's where CUDA is in use."""
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_generators(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class AttackState:
    """One attack after the first ``len(masks)`` radii of its grid."""

    epsilons: list[float]  # the radii done, ascending
    correct: Tensor  # clean-correct mask (bool, one per sample)
    masks: list[Tensor]  # robust mask after each radius done
    generators: dict[str, Any]  # ``generator_states()`` after the last radius done
    costs: list[dict[str, Any]]  # ``AttackCost.record()`` of each radius done


class AttackProgress:
    """The saved state of one attack (``key``) of one job (``fingerprint``) in ``folder``."""

    def __init__(self, folder: Path, key: str, fingerprint: str) -> None:
        self.path = Path(folder) / (re.sub(r"[^A-Za-z0-9_.@-]", "_", key) + ".pt")
        self.key, self.fingerprint = key, fingerprint

    def load(self, epsilons: list[float]) -> AttackState | None:
        """The saved state, if there is one of this fingerprint whose radii begin ``epsilons``; else None."""
        if not self.path.is_file():
            return None
        try:
            saved = io.load_torch(self.path)
        except CheckpointError as exc:
            log.warning("attack progress of %s not used: %s", self.key, exc)
            return None
        if (not isinstance(saved, dict) or saved.get("format") != FORMAT
                or saved.get("fingerprint") != self.fingerprint):
            log.info("attack progress of %s belongs to another configuration or model: not used", self.key)
            return None
        done = [float(e) for e in saved["epsilons"]]
        if not done:
            return None
        if done != [float(e) for e in epsilons[: len(done)]]:
            log.info("attack progress of %s was made on another ε grid: not used", self.key)
            return None
        return AttackState(done, saved["correct"], list(saved["masks"].unbind(0)),
                           saved["generators"], json.loads(saved["costs"]))

    def save(self, state: AttackState) -> None:
        masks = (torch.stack([m.cpu() for m in state.masks]) if state.masks
                 else torch.zeros(0, state.correct.numel(), dtype=torch.bool))
        io.save_torch(self.path, {
            "format": FORMAT, "fingerprint": self.fingerprint, "key": self.key, "epsilons": state.epsilons,
            "correct": state.correct.cpu(), "masks": masks, "generators": state.generators,
            "costs": json.dumps(state.costs),
        })


class ProgressFolder:
    """The attack progress of one job: an ``AttackProgress`` per attack, all under one fingerprint."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder, self.fingerprint = Path(folder), fingerprint

    def attack(self, key: str) -> AttackProgress:
        self.folder.mkdir(parents=True, exist_ok=True)
        return AttackProgress(self.folder, key, self.fingerprint)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
