"""The federated run spec: an ordinary run (dataset, model, usage, method, hparams, …, validated by
:class:`fairfm.spec.RunSpec`) plus a ``federated:`` block saying how the clients are formed and trained.

```yaml
dataset: data/oph            # a prepared dataset with a `site` column (or a Dirichlet partition, below)
model: biomedclip
usage: lora
method: fair_lora
seed: 1
federated:
  strategy: fair_lora        # local | fedavg | fedprox | lora | sv_lora | fair_lora | prompt_fl | fedotp
  strategy_params: {shared_half_s: true}
  rounds: 50
  fraction: 0.8
  local_epochs: 1
  clients: {by: site}        # or {by: dirichlet_label, n_clients: 3, alpha: 0.3, task: glaucoma}
  profile: fairfedmed        # FairFedMed's defaults for everything not given explicitly
```

The profile fills what the spec leaves out (FEDERATED.md §1.2–§1.3): 50 rounds, 1 local epoch, client fraction 0.8
for three or more clients and 1.0 for two, SGD lr 1e-3 momentum 0.9 weight decay 5e-4, batch 32, metrics at threshold
0.5. Whatever the spec sets explicitly wins; :attr:`FederatedSpec.defaults_applied` records what came from where.

Without a profile, the local loop still gets federated defaults where the spec is silent: a constant learning rate
without warm-up (the loop's schedule restarts at every round, so a warm-up would never end) and the last epoch's state
(``select_by: last``: a round trains through, nothing is selected on validation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from pydantic import Field, ValidationError

from fairfm.errors import InputError
from fairfm.spec import RunSpec, _read_yaml, _relative_to, spec_error
from fairfm.usages.base import _Strict

#: Usages whose model trains on the image loop and can therefore be trained by clients (coop once it is registered).
FEDERATED_USAGES = ("lora", "bitfit", "vpt", "adapter", "full_finetune", "coop")

#: FairFedMed's protocol (FEDERATED.md §1.2–§1.3): federated block and run fields.
FAIRFEDMED_FEDERATED = {"rounds": 50, "local_epochs": 1}
FAIRFEDMED_HPARAMS = {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 32}
FAIRFEDMED_RUN = {"threshold": "0.5"}
#: Defaults of the local loop in every federated run (see the module doc).
FEDERATED_HPARAMS = {"schedule": "constant", "warmup_epochs": 0, "select_by": "last"}
DEFAULT_ROUNDS = 10
DEFAULT_LOCAL_EPOCHS = 1


class ClientsSpec(_Strict):
    """How the dataset's rows become clients (:func:`fairfm.federated.partition.assign_clients`)."""

    by: Literal["site", "dirichlet_label", "dirichlet_group"] = Field(
        "site", description="site: the dataset's `site` column; dirichlet_label / dirichlet_group: a seeded "
        "Dirichlet label- or group-skew partition by patient")
    n_clients: Optional[int] = Field(None, ge=2, description="number of clients (Dirichlet partitions only)")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration: small = more skew")
    task: Optional[str] = Field(None, description="dirichlet_label: the task whose labels skew (null: the first)")
    attribute: Optional[str] = Field(None, description="dirichlet_group: the attribute whose groups skew "
                                     "(null: the run's first)")
    seed: Optional[int] = Field(None, description="the partition's seed (null: the run's seed); fix it to repeat "
                                "training seeds over one partition")


class FederatedBlock(_Strict):
    strategy: str = Field("fedavg", description="a registered strategy (fairfm.federated.strategies)")
    strategy_params: dict[str, Any] = Field(default_factory=dict)
    rounds: Optional[int] = Field(None, ge=1, description=f"rounds (null: the profile's, else {DEFAULT_ROUNDS})")
    fraction: Optional[float] = Field(None, gt=0, le=1, description="clients trained per round after the first "
                                      "(null: the profile's, else 1.0)")
    local_epochs: Optional[int] = Field(None, ge=1, description="local epochs per selected client and round")
    clients: ClientsSpec = Field(default_factory=ClientsSpec)
    profile: Optional[Literal["fairfedmed"]] = Field(None, description="fairfedmed: FairFedMed's defaults")
    evaluate_every_round: bool = Field(True, description="every client scores the global model on its validation "
                                       "rows after every round (FairFedMed evaluates every client every round)")


class FederatedSpec:
    """A validated federated spec: ``run`` (the RunSpec every client trains with, profile and federated defaults
    applied) and ``federated`` (the block, with rounds / local epochs filled; ``fraction`` is filled once the number
    of clients is known, :meth:`fraction_for`)."""

    def __init__(self, run: RunSpec, federated: FederatedBlock, defaults_applied: dict[str, Any],
                 source: str = "spec") -> None:  # fmt: skip
        self.run = run
        self.federated = federated
        self.defaults_applied = defaults_applied
        self.source = source

    def __repr__(self) -> str:
        return f"FederatedSpec(usage={self.run.usage!r}, strategy={self.federated.strategy!r}, " \
               f"rounds={self.federated.rounds})"

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "spec",
                  overrides: Mapping[str, Any] | None = None) -> "FederatedSpec":  # fmt: skip
        """Validate a mapping; every error is one InputError naming ``source`` and the key. ``overrides`` are
        federated-block values given on the command line (``{"rounds": 3, "strategy": "fedprox"}``)."""
        if not isinstance(data, Mapping):
            raise InputError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
        data = dict(data)
        block_data = data.pop("federated", None)
        if block_data is None:
            raise InputError(f"{source}: federated: required block is missing (strategy, rounds, clients, …)")
        if not isinstance(block_data, Mapping):
            raise InputError(f"{source}: federated: expected a mapping, got {type(block_data).__name__}")
        block_data = {**dict(block_data), **{k: v for k, v in (overrides or {}).items() if v is not None}}
        try:
            block = FederatedBlock.model_validate(block_data)
        except ValidationError as exc:
            raise InputError(str(spec_error(exc, source)).replace(f"{source}: ", f"{source}: federated.", 1)) from None
        applied: dict[str, Any] = {}
        hparams = dict(data.get("hparams") or {})
        if not isinstance(data.get("hparams", {}), Mapping):
            raise InputError(f"{source}: hparams: expected a mapping")
        if block.profile == "fairfedmed":
            for key, value in FAIRFEDMED_HPARAMS.items():
                if key not in hparams:
                    hparams[key] = value
                    applied[f"hparams.{key}"] = "fairfedmed"
            for key, value in FAIRFEDMED_RUN.items():
                if key not in data:
                    data[key] = value
                    applied[key] = "fairfedmed"
            for key, value in FAIRFEDMED_FEDERATED.items():
                if getattr(block, key) is None:
                    setattr(block, key, value)
                    applied[f"federated.{key}"] = "fairfedmed"
        for key, value in FEDERATED_HPARAMS.items():
            if key not in hparams:
                hparams[key] = value
                applied[f"hparams.{key}"] = "federated default"
        if block.rounds is None:
            block.rounds = DEFAULT_ROUNDS
            applied["federated.rounds"] = "federated default"
        if block.local_epochs is None:
            block.local_epochs = DEFAULT_LOCAL_EPOCHS
            applied["federated.local_epochs"] = "federated default"
        hparams.setdefault("epochs", block.local_epochs)  # the record shows the epochs a round trains
        data["hparams"] = hparams
        usage = str(data.get("usage", ""))
        run = RunSpec.from_dict(data, source=source)
        if run.usage not in FEDERATED_USAGES:
            raise InputError(f"{source}: usage: {run.usage!r} cannot be federated: clients train on the image loop "
                             f"(fairfm.adapt.train.fit), which only {', '.join(FEDERATED_USAGES)} use; "
                             f"{usage or run.usage!r} trains nothing there")  # fmt: skip
        if run.method is not None:
            from fairfm.mitigate.runs import run_method

            method = run_method(run)
            if method.post_processes or method.replaces_probe:
                raise InputError(f"{source}: method: {run.method!r} post-processes scores or replaces the probe; a "
                                 "federated run takes methods that change the clients' training loop")  # fmt: skip
        if block.strategy_params and not isinstance(block.strategy_params, dict):
            raise InputError(f"{source}: federated.strategy_params: expected a mapping")
        if block.clients.by != "site" and block.clients.n_clients is None:
            raise InputError(f"{source}: federated.clients.n_clients: required for by: {block.clients.by}")
        if block.clients.by == "site" and block.clients.n_clients is not None:
            raise InputError(f"{source}: federated.clients.n_clients: the clients are the dataset's sites (by: site); "
                             "leave n_clients out")  # fmt: skip
        return cls(run, block, applied, source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> "FederatedSpec":
        """Read a spec from YAML; relative paths are taken relative to the YAML file's folder."""
        path = Path(path)
        data = _read_yaml(path)
        if not isinstance(data, Mapping):
            raise InputError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
        return cls.from_dict(_relative_to(data, path.parent), source=str(path), overrides=overrides)

    # -- resolved values -------------------------------------------------------------------------------------
    def fraction_for(self, n_clients: int) -> float:
        """The client fraction: the spec's, else FairFedMed's rule (0.8 for three or more clients, 1.0 for two)
        under the profile, else 1.0."""
        if self.federated.fraction is not None:
            return float(self.federated.fraction)
        if self.federated.profile == "fairfedmed":
            return 0.8 if n_clients >= 3 else 1.0
        return 1.0

    def resolved_block(self, n_clients: int) -> dict[str, Any]:
        """The federated block as it runs (part of the run id): the strategy's parameters validated with their
        defaults filled in, so ``{}`` and ``{mu: 0.5}`` for FedProx are one federation."""
        from fairfm.federated.strategies import validate_params

        block = self.federated.model_dump(mode="json")
        block["strategy_params"] = validate_params(self.federated.strategy,
                                                   self.federated.strategy_params).model_dump(mode="json")
        block["fraction"] = self.fraction_for(n_clients)
        block["n_clients"] = int(n_clients)
        return block
