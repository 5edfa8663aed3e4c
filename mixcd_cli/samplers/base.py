"""The rehearsal-sampler interface, its registry, and the pool facts every sampler draws from.

A sampler is declared once, beside its class: ``@register_sampler(name, options=..., help=..., <capabilities>)``
with its options a dataclass of `options.opt` fields (default, range rules, one-line help). The schema,
Hydra's config group ``sampler``, `mixcd ls samplers` and `create_sampler` all read that declaration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

import torch

from ..errors import MixcdError
from ..options import defaults as declared_defaults
from ..options import fill as fill_options
from ..options import opt
from ..registry import Registry

OVER = ("pool", "eligible")  # what a sampler draws from: the whole pool, or the rows θ0 got right


@dataclass(kw_only=True)  # keywords only: a positional call written for the old field order fails loudly
class PoolInfo:
    """Snapshot columns of the pool under the model the stage starts from (θ0 at stage 1, θ(k−1) at stage k), as
    CPU tensors (index = pool row).

    Samplers never see labels: ``classes`` is the class column the task kind offers for grouping rows
    (None where the kind has no classes), not something to score predictions against.
    """

    correct0: torch.Tensor  # bool
    loss0: torch.Tensor  # float32
    conf0: torch.Tensor  # float32
    classes: torch.Tensor | None = None  # int64
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    # (k, seed) → a k-means cluster id per pool row on the snapshot model's features, computed on first
    # use and cached beside the snapshot (snapshot.cluster_column); None where no model is at hand.
    clusters: Callable[[int, int], torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.correct0.numel())

    def eligible(self, tau: float = 0.0) -> torch.Tensor:
        """Rows that can become collateral damage: prior-correct, confidence ≥ τ."""
        mask = self.correct0
        if tau > 0:
            mask = mask & (self.conf0 >= tau)
        return torch.nonzero(mask).flatten()

    def class_column(self, who: str, instead: str) -> torch.Tensor:
        """The class column, or one clear error saying ``who`` needs it and what to use ``instead``."""
        if self.classes is None:
            raise MixcdError(f"{who} needs a class column, and this task kind has none; use {instead}")
        return self.classes


class SelectionContext:
    """What samplers that spend extra passes (oracle_cd, mir) may use at a step.

    Implemented by the trainer (training.inference.ModelSelection); each method charges the passes
    it makes to the ledger under ``selection``, so no sampler can hide its cost.
    """

    def wrong(self, rows: torch.Tensor) -> torch.Tensor:
        """Whether the live model gets each of the pool ``rows`` wrong now (bool, eval mode, no grad)."""
        raise NotImplementedError

    def pool_losses(self, rows: torch.Tensor, params: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Per-sample loss on pool rows, under the live weights or under ``params``."""
        raise NotImplementedError

    def virtual_params(self) -> dict[str, torch.Tensor]:
        """Weights after one virtual SGD step on this step's fine-tune batch."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------- declarations


@dataclass
class NoOptions:
    """A sampler with no options of its own."""


@dataclass
class OverOptions:
    """A sampler that draws from the pool or from its eligible set."""

    over: str = opt("pool", choices=OVER, help="draw from the whole pool, or from the eligible set (prior-correct)")


@dataclass(frozen=True)
class RunFacts:
    """What a sampler's configuration check may know of the run besides its options."""

    rehearsal_batch: int  # b, the largest of any stage
    devices: int  # trainer.devices: ranks drawing at once


Capability = bool | Callable[[Any], bool]  # fixed, or a question to the options (an instance of the options type)


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler's declaration: its class, options, help and capabilities.

    ``draws``: it mixes pool rows in (False only for none). ``needs_selection``: it spends extra passes
    through a SelectionContext. ``observes_loss``: ``observe`` needs each drawn row's training loss.
    ``needs_snapshot(options)``: it reads loss0/correct0/conf0. ``needs_classes(options)``: it reads
    the pool's class column. ``check(options, facts)``: the options' own rules against the run, before
    any work (an options type may define ``check(self, facts)``). ``options`` there: the chosen options
    (a config's sampler node will do), defaults where left out.
    """

    name: str
    cls: type
    options: type
    help: str
    draws: bool = True
    needs_selection: bool = False
    observes_loss: bool = False
    snapshot: Capability = True
    classes: Capability = False

    def defaults(self) -> dict[str, Any]:
        """Every option with its declared default."""
        return declared_defaults(self.options)

    def fill(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` over the defaults, each checked against its rules; an unknown one is refused."""
        return fill_options(self.options, options, f"sampler '{self.name}'", prefix="sampler.")

    def _made(self, options: Mapping[str, Any] | None) -> Any:
        """An instance of the options type; a config node's own ``name`` key is allowed and ignored."""
        return self.options(**self.fill({k: v for k, v in (options or {}).items() if k != "name"}))

    def _ask(self, capability: Capability, options: Mapping[str, Any] | None) -> bool:
        return capability if isinstance(capability, bool) else bool(capability(self._made(options)))

    def needs_snapshot(self, options: Mapping[str, Any] | None = None) -> bool:
        """Whether, with ``options`` (defaults where left out), it reads θ0's loss0/correct0/conf0."""
        return self._ask(self.snapshot, options)

    def needs_classes(self, options: Mapping[str, Any] | None = None) -> bool:
        """Whether, with ``options`` (defaults where left out), it reads the pool's class column."""
        return self._ask(self.classes, options)

    def check(self, options: Mapping[str, Any], facts: RunFacts) -> None:
        """The rules that tie the options to each other and to the run, as one MixcdError."""
        made = self._made(options)
        if callable(getattr(made, "check", None)):
            made.check(facts)


class SamplerRegistry(Registry):
    """The samplers, each with its declaration (``spec``)."""

    def __init__(self) -> None:
        super().__init__("sampler")
        self._specs: dict[str, SamplerSpec] = {}

    def register(self, name: str, help: str = "", *, options: type = NoOptions, draws: bool = True,
                 needs_snapshot: Capability = True, needs_selection: bool = False, needs_classes: Capability = False,
                 observes_loss: bool = False) -> Callable[[type], type]:
        """Declare sampler ``name``: decorate its class. ``options`` is a dataclass of `options.opt` fields;
        ``needs_snapshot`` and ``needs_classes`` may be questions to the options (a callable taking an
        instance of ``options``). The class gets ``name``, ``draws``, ``wants_loss`` and ``spec`` from it."""
        if not is_dataclass(options):
            raise TypeError(f"sampler '{name}': options must be a dataclass, got {options!r}")
        if name == "name" or any(f.name == "name" for f in fields(options)):
            raise TypeError(f"sampler '{name}': 'name' is the sampler's own key, not an option")
        bare = [f.name for f in fields(options) if f.default is MISSING]
        if bare:  # every option needs a default: a sampler is chosen by name alone
            raise TypeError(f"sampler '{name}': options without a default: {', '.join(bare)}")
        register = super().register(name, help)

        def deco(cls: type) -> type:
            register(cls)
            spec = SamplerSpec(name, cls, options, self.help(name), draws=draws, needs_selection=needs_selection,
                               observes_loss=observes_loss, snapshot=needs_snapshot, classes=needs_classes)
            self._specs[name] = spec
            cls.name, cls.draws, cls.wants_loss, cls.spec = name, draws, observes_loss, spec
            return cls

        return deco

    def spec(self, name: str) -> SamplerSpec:
        """The declaration of sampler ``name``; an unknown name is refused naming the valid ones."""
        self.get(name)
        return self._specs[name]

    def specs(self) -> Iterable[SamplerSpec]:
        """Every declaration, by name."""
        return [self._specs[n] for n in self.names()]

    def unregister(self, name: str) -> None:
        """Forget sampler ``name`` (tests that register one of their own)."""
        self._items.pop(name, None)
        self._help.pop(name, None)
        self._specs.pop(name, None)


SAMPLERS = SamplerRegistry()
register_sampler = SAMPLERS.register


class BinnedIndex:
    """Rows grouped by bin in one sorted array, so drawing uniformly within chosen bins is O(b)."""

    def __init__(self, rows: torch.Tensor, bins: torch.Tensor, num_bins: int) -> None:
        order = torch.argsort(bins, stable=True)
        self.rows = rows[order]
        self.sizes = torch.bincount(bins, minlength=num_bins)
        self.offsets = torch.zeros(num_bins + 1, dtype=torch.int64)
        self.offsets[1:] = torch.cumsum(self.sizes, 0)

    def draw_within(self, bins: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        sizes = self.sizes[bins]
        u = torch.rand(bins.numel(), generator=generator, dtype=torch.float64)
        # u < 1 in float64, so ⌊u·size⌋ ≤ size − 1 for any size below 2^52: no clamp needed.
        pos = self.offsets[bins] + (u * sizes).long()
        return self.rows[pos]


class RehearsalSampler:
    """Chooses b pool rows per step and observes the step's predictions on them.

    ``draw`` runs before the step's forward pass; ``observe`` gets, from that same forward pass
    (before the optimizer step), whether each drawn row is now predicted wrong. Samplers own a
    seeded generator, and their state (counts + generator) round-trips through ``state_dict``.
    """

    # Set from the declaration by @register_sampler (spec.draws, spec.observes_loss), never by hand.
    name = "base"
    draws = True
    wants_loss = False
    spec: SamplerSpec

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int) -> None:
        self.pool = pool
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.notes: list[str] = []  # values the sampler had to adjust, said to the user
        self.pool_digest: str | None = None  # the pool's fingerprint, where the caller knows it (state is tied to it)

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, rows: torch.Tensor, wrong: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        """Learn from the training forward pass over the last draw's rows (in the order ``draw`` gave them):
        whether each is now predicted wrong and, where the trainer has it, its per-sample training loss.
        Default: nothing to learn."""

    def telemetry(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "pool": {"rows": len(self.pool), "digest": self.pool_digest}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("pool")  # absent from states saved before samplers named their pool
        if saved is not None:
            rows, digest = int(saved["rows"]), saved.get("digest")
            if rows != len(self.pool) or (digest and self.pool_digest and digest != self.pool_digest):
                raise MixcdError(f"this sampler state was saved for another pool ({rows} rows, pool "
                                 f"{digest or 'unnamed'}); this sampler draws from {len(self.pool)} rows (pool "
                                 f"{self.pool_digest or 'unnamed'})")
        self.generator.set_state(state["generator"])


def uniform_rows(rows: torch.Tensor, b: int, generator: torch.Generator) -> torch.Tensor:
    if rows.numel() == 0:
        raise MixcdError("cannot draw rehearsal samples from an empty set")
    return rows[torch.randint(rows.numel(), (b,), generator=generator)]


def distinct_rows(rows: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k different members of ``rows``, uniformly without replacement, in O(k) when k ≪ |rows|.

    A full permutation would cost O(N) per step on a 10^7-sample pool; drawing with replacement
    and dropping repeats (keeping first occurrences, so the result is a pure function of the
    generator) needs one round almost always when k is small against N.
    """
    n = rows.numel()
    if k > n:
        raise MixcdError(f"cannot draw {k} distinct rehearsal candidates from {n} pool samples")
    if 4 * k >= n:
        return rows[torch.randperm(n, generator=generator)[:k]]
    picked: list[int] = []
    seen: set[int] = set()
    while len(picked) < k:
        for i in torch.randint(n, (k - len(picked),), generator=generator).tolist():
            if i not in seen:
                seen.add(i)
                picked.append(i)
    return rows[torch.tensor(picked, dtype=torch.int64)]


def create_sampler(name: str, pool: PoolInfo, batch_size: int, seed: int, **options: Any) -> RehearsalSampler:
    """Build registered sampler ``name``; options left out take their declared defaults.

    Every option is checked against its declared rules; an unknown one is refused with the valid ones named.
    """
    spec = SAMPLERS.spec(name)
    return spec.cls(pool, batch_size, seed, **spec.fill(options))


def sampler_options(node: Mapping[str, Any]) -> dict[str, Any]:
    """The declared options of sampler ``node["name"]`` found in ``node`` (a config's ``sampler`` node).

    Anything else is left out: ``name`` itself, and keys an older run's configuration still carries
    (``mix_ratio``, now ``trainer.mix_ratio``).
    """
    spec = SAMPLERS.spec(str(node["name"]))
    declared = {f.name for f in fields(spec.options)}
    return {key: value for key, value in node.items() if key in declared}


def rehearsal_batch(sampler: str | SamplerSpec, ratio: float, batch_size: int,
                    key: str = "trainer.mix_ratio") -> int:
    """b = round(r·B), the pool rows a step of ``sampler`` mixes in: 0 for a sampler that draws nothing.

    The one check of a ratio (``key`` names it in the message): a sampler that draws nothing refuses
    r > 0, and one that draws refuses an r that mixes in no sample.
    """
    spec = sampler if isinstance(sampler, SamplerSpec) else SAMPLERS.spec(sampler)
    if not spec.draws:
        if ratio > 0:
            raise MixcdError(f"sampler={spec.name} mixes nothing, but {key}={ratio}; drop the ratio or "
                             "pick a sampler")
        return 0
    b = int(round(ratio * batch_size))
    if b < 1:
        raise MixcdError(f"{key}={ratio} with batch_size={batch_size} mixes in no sample; raise the ratio")
    return b
