"""Hard-concrete gates (Louizos, Welling & Kingma, 2018).

A gate z in [0, 1] multiplies one channel group. During training z is a reparameterised sample
so the L0 "is this channel alive" decision gets gradients; at evaluation it is deterministic.

Deterministic (eval) gate used throughout LUMOS: ``clamp(sigmoid(log_alpha / beta) * (zeta -
gamma) + gamma, 0, 1)``, the *median* of the training distribution (the sample at u = 1/2). The
original paper's estimator drops the ``/ beta``; that is the median only at beta = 1, so with the
default beta = 2/3 the model evaluated differs from the one trained, most of all when the noise
is narrowed (semi-stochastic gating trains at u near 1/2: measured in the ablation, the paper's
estimator turned a deterministic-gate run into R^2 < 0). A group is removed by compaction
exactly when this value is 0; fractional values are folded into the consumer's weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigurationError

#: keeps the uniform draw away from 0 and 1 so log(u) and log(1 - u) stay finite in float32.
_UNIFORM_EPS = 1e-6
#: gate dtypes NumPy reads as they are (the host-side path check)
_NUMPY_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class HardConcreteConfig:
    """Shape of the hard-concrete distribution: temperature ``beta`` and stretch (gamma, zeta)."""

    beta: float = 2.0 / 3.0
    gamma: float = -0.1
    zeta: float = 1.1

    def __post_init__(self) -> None:
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ConfigurationError(f"gate temperature beta must be > 0, got {self.beta}.")
        if not (self.gamma < 0.0 < 1.0 < self.zeta):
            raise ConfigurationError(
                f"gate stretch must satisfy gamma < 0 < 1 < zeta, got gamma={self.gamma}, "
                f"zeta={self.zeta}; the defaults are gamma=-0.1, zeta=1.1."
            )


def sample_gates(log_alpha: Tensor, cfg: HardConcreteConfig, u: Tensor | None = None,
                 ceiling: Tensor | None = None) -> Tensor:
    """Reparameterised hard-concrete sample; ``u`` (values in [0, 1]) may be given for tests.

    ``ceiling`` (0 or 1 per gate) replaces the upper clamp at 1: a gate shut for good is then
    0 in the same call that clamps it, rather than in a multiply after it."""
    if u is None:
        u = torch.rand_like(log_alpha)
    # (logit(u) + log_alpha) / beta, the noise's share scaled outside the autograd graph, and
    # the stretch as one add: three recorded calls where the plain formula makes five (each
    # costs a forward and a backward call, the bulk of a small model's gate overhead)
    with torch.no_grad():  # log u - log(1 - u), finite at 0 and 1
        noise = torch.special.logit(u.detach(), eps=_UNIFORM_EPS).div_(cfg.beta)
    s = torch.sigmoid(torch.add(noise, log_alpha, alpha=1.0 / cfg.beta))
    stretched = torch.add(_constant(cfg.gamma, s), s, alpha=cfg.zeta - cfg.gamma)
    if ceiling is None:
        return torch.clamp(stretched, 0.0, 1.0)
    return torch.clamp(stretched, _constant(0.0, s), ceiling)


def _constant(value: float, like: Tensor) -> Tensor:
    """A 0-d tensor of ``value`` in ``like``'s dtype and device, made once per triple."""
    key = (value, like.dtype, like.device)
    cached = _CONSTANTS.get(key)
    if cached is None:
        # never an inference tensor: the sample saves it for backward in later training steps
        with torch.inference_mode(False):
            cached = _CONSTANTS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return cached


_CONSTANTS: dict[tuple, Tensor] = {}


def deterministic_gates(log_alpha: Tensor, cfg: HardConcreteConfig) -> Tensor:
    """Evaluation-time gate value (see module docstring)."""
    return (torch.sigmoid(log_alpha / cfg.beta) * (cfg.zeta - cfg.gamma) + cfg.gamma).clamp(
        0.0, 1.0)


def prob_nonzero(log_alpha: Tensor, cfg: HardConcreteConfig) -> Tensor:
    """Closed form P(z != 0): the differentiable expected-L0 contribution of each gate."""
    return torch.sigmoid(log_alpha - cfg.beta * math.log(-cfg.gamma / cfg.zeta))


def log_alpha_for_keep_probability(p: float, cfg: HardConcreteConfig) -> float:
    """Inverse of :func:`prob_nonzero`: the log alpha whose P(z != 0) equals ``p``."""
    if not 0.0 < p < 1.0:
        raise ConfigurationError(f"initial keep probability must lie in (0, 1), got {p}.")
    return math.log(p / (1.0 - p)) + cfg.beta * math.log(-cfg.gamma / cfg.zeta)


def fully_open_keep_probability(cfg: HardConcreteConfig) -> float:
    """The smallest P(z != 0) at which the deterministic gate is exactly 1.

    Below it a gate starts fractional, so an untrained sparse model is no longer the original
    model at eval (compaction still equals it: fractional gates are folded into weights).
    """
    # sigmoid(log_alpha / beta) = (1 - gamma) / (zeta - gamma)
    open_log_alpha = cfg.beta * math.log((1.0 - cfg.gamma) / (cfg.zeta - 1.0))
    shift = cfg.beta * math.log(-cfg.gamma / cfg.zeta)
    return 1.0 / (1.0 + math.exp(-(open_log_alpha - shift)))


def keep_probability_of(init: float | dict[str, float], kind: str) -> float:
    """The initial keep probability of a group kind: one number for all, or per kind
    (``{"feature": 0.9, "default": 0.99}``; kinds not named fall back to "default" or 0.99)."""
    if isinstance(init, dict):
        return float(init.get(kind, init.get("default", 0.99)))
    return float(init)


class GateBank(nn.Module):
    """All gates of a model in one parameter vector, so one call samples every gate.

    Groups are contiguous slices; ``kinds`` records what each gate stands for ("feature",
    "neuron", ...). Keeping one vector avoids a Python loop over groups on the training path.
    """

    # buffers (registered in __init__), typed for readers
    shut: Tensor
    frozen_values: Tensor
    path_index: Tensor
    path_valid: Tensor

    def __init__(
        self,
        sizes: list[int],
        kinds: list[str],
        cfg: HardConcreteConfig | None = None,
        init_keep_probability: float | dict[str, float] = 0.99,
        essential: list[bool] | None = None,
    ) -> None:
        super().__init__()
        if len(sizes) != len(kinds):
            raise ValueError("one kind per group is required")
        if essential is not None and len(essential) != len(sizes):
            raise ValueError("one essential flag per group is required")
        self.cfg = cfg or HardConcreteConfig()
        total = int(sum(sizes))
        init = torch.cat([
            torch.full((int(size),), log_alpha_for_keep_probability(
                keep_probability_of(init_keep_probability, kind), self.cfg))
            for size, kind in zip(sizes, kinds)
        ]) if sizes else torch.zeros(0)
        # Small jitter breaks ties between otherwise identical gates.
        generator = torch.Generator().manual_seed(0)
        jitter = 0.01 * torch.randn(total, generator=generator)
        self.log_alpha = nn.Parameter(init + jitter)
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + int(s))
        self.offsets = offsets
        self.kinds = list(kinds)
        self.register_buffer("shut", torch.zeros(total, dtype=torch.bool))
        #: the gate values once frozen (see ``freeze``); a buffer so it moves with the model
        self.register_buffer("frozen_values", torch.ones(total))
        #: the uniform noise is drawn in [b, 1 - b]: 0 is the plain hard-concrete gate,
        #: 0.5 a deterministic one ("semi-stochastic" gating narrows it in between).
        self.noise_interval = 0.0
        # Gate noise comes from its own generator, seeded by (seed, draw): every DDP rank draws
        # the same gates in the same step (one big batch), and a resumed run draws what the
        # uninterrupted one would have. Both numbers travel in the state_dict (extra state).
        self.noise_seed = 0
        self.draws = 0
        self.frozen = False
        #: split steps (``GateOptions.gate_step_every``): one optimiser step in ``split_every``
        #: draws gate noise (weights and gates learn), the others run the deterministic gates
        #: (the weights learn). ``split_steps`` counts optimiser steps (the step hook advances
        #: it; extra state); ``phase`` is the last training forward's: "noisy",
        #: "deterministic" or None (not split)
        self.split_every = 1
        self.split_steps = 0
        self.phase: str | None = None
        self._phase_pending = False
        self._open_mask_key: tuple | None = None
        self._path_layout_key: tuple | None = None
        self._any_shut_key: tuple | None = None
        self._register_paths([
            slice(offsets[g], offsets[g + 1]) for g, flag in enumerate(essential or []) if flag
            and sizes[g] > 0])
        _run_eagerly_when_compiled()

    def _register_paths(self, groups: list[slice]) -> None:
        """Index the essential groups (every input-to-output path reads them) as a padded
        matrix, one row per group, so the training draw can keep a path open without a loop."""
        width = max((g.stop - g.start for g in groups), default=0)
        index = torch.zeros(len(groups), width, dtype=torch.long)
        valid = torch.zeros(len(groups), width, dtype=torch.bool)
        for row, g in enumerate(groups):
            index[row, : g.stop - g.start] = torch.arange(g.start, g.stop)
            valid[row, : g.stop - g.start] = True
        self.register_buffer("path_index", index, persistent=False)
        self.register_buffer("path_valid", valid, persistent=False)

    @property
    def num_gates(self) -> int:
        return self.log_alpha.numel()

    def group_slice(self, group: int) -> slice:
        return slice(self.offsets[group], self.offsets[group + 1])

    def mask_of_kind(self, kind: str) -> Tensor:
        """Boolean mask over all gates belonging to groups of ``kind``."""
        groups = [i for i, k in enumerate(self.kinds) if k == kind]
        mask = torch.zeros(self.num_gates, dtype=torch.bool, device=self.log_alpha.device)
        for g in groups:
            mask[self.group_slice(g)] = True
        return mask

    def forward(self) -> Tensor:
        """Gate values for this forward pass: a sample in training, deterministic in eval
        (and on the deterministic steps of split steps, see ``split_every``).

        Run eagerly under ``torch.compile`` (the draw counter is Python state, a guard that
        would recompile every step): ``__init__`` wraps it in ``torch.compiler.disable`` once,
        when the first gate bank is made, so ``import lumos`` does not import dynamo (~1 s).
        """
        if self.training and not self.frozen and self.split_every > 1:
            self.phase = ("noisy" if self.split_steps % self.split_every == 0
                          else "deterministic")
            self._phase_pending = True
            if self.phase == "deterministic":  # the network as evaluated; the gates hold
                return self.deterministic().detach() + 0.0 * self.log_alpha
        elif self.training:
            self.phase = None
        if self.training and not self.frozen:
            u = self.draw_uniform()
            ceiling = self.open_mask if self._any_shut else None
            z = sample_gates(self.log_alpha, self.cfg, u, ceiling)
            if self.path_index.numel():
                z = self._keep_a_path_open(z, u, ceiling)
            return z
        if self.frozen and self.training:
            # a zero gradient, not none: DistributedDataParallel fills zeros for parameters a
            # step did not use, so one process must see the same, or the optimiser's momentum
            # would move log alpha on the ranks and not in a single process
            return self.frozen_values + 0.0 * self.log_alpha
        return self.deterministic()

    def _keep_a_path_open(self, z: Tensor, u: Tensor, ceiling: Tensor | None = None) -> Tensor:
        """Redraw, from the gate's distribution *given that it is open*, the strongest gate of
        every essential group whose draw closed all of it.

        A draw that closes a group every path crosses gives a step whose output ignores the
        input: wasted at best, and behind BatchNorm (batch statistics of a constant are 0, its
        backward multiplies by 1/sqrt(eps) per layer) gradients overflow to NaN within a step
        (MONAI's DenseNet-121 did). The deployed model keeps such a path too (the projection
        keeps one gate of each open), so training draws from the same condition. No extra
        random number: given closed, ``u / u0`` is uniform, where ``u0`` is the draw below
        which the gate closes; ``u0 + (1 - u0) * u / u0`` is then uniform over the open draws.

        The redraw only moves the uniform draw, so it is found without autograd and the gates
        are sampled again from the moved draw: the gradient graph stays the plain sample's
        (index and scatter nodes on the gate vector cost more than the whole draw, measured).
        On the CPU a draw that closed no essential group (almost every one) returns at once;
        on other devices the resample always runs, so no step waits on a host read.
        """
        cfg = self.cfg
        if host_reads_are_free(z.device) and z.dtype in _NUMPY_DTYPES \
                and not self._closes_a_path_on_host(z):
            return z
        with torch.no_grad():
            index, usable, any_usable = self._path_layout()
            drawn = z.detach()[index].masked_fill_(~usable, 0.0)
            empty = (drawn.amax(dim=1) <= 0) & any_usable
            log_alpha = self.log_alpha.detach()
            score = log_alpha[index].masked_fill_(~usable, float("-inf"))
            best = index.gather(1, score.argmax(dim=1, keepdim=True)).squeeze(1)
            closed_below = torch.sigmoid(  # z = 0 iff u <= it
                cfg.beta * math.log(-cfg.gamma / cfg.zeta) - log_alpha[best])
            u_best = u[best]
            redrawn_u = closed_below + (1.0 - closed_below) * (u_best / closed_below).clamp(0, 1)
            u = u.scatter(0, best, torch.where(empty, redrawn_u, u_best))
        return sample_gates(self.log_alpha, cfg, u, ceiling)

    def _closes_a_path_on_host(self, z: Tensor) -> bool:
        """Whether this draw closed every usable gate of some essential group, read in NumPy
        on the CPU tensor's memory: one segmented max over the groups (contiguous slices)
        instead of seven operator calls (~50 us a step on a small MLP, benchmarks/overhead)."""
        key = (self.shut._version, self.shut.data_ptr(), self.log_alpha.dtype)
        if getattr(self, "_host_layout_key", None) != key:
            self._host_layout = self._host_layout_for_paths()
            self._host_layout_key = key
        bounds, rows, open_np, buffer = self._host_layout
        n = buffer.size - 1
        np.multiply(z.detach().numpy(), open_np, out=buffer[:n])
        return bool((np.maximum.reduceat(buffer, bounds)[::2][rows] <= 0).any())

    def _host_layout_for_paths(self) -> tuple:
        """What :meth:`_closes_a_path_on_host` reads: [start, stop) of every essential group
        that can still open, the open mask, and a buffer one longer than the gate vector (a
        group may end at its end)."""
        index, usable, any_usable = self._path_layout()
        bounds = []
        for row in range(index.shape[0]):
            members = index[row][self.path_valid[row]]
            bounds += [int(members[0]), int(members[-1]) + 1]
        dtype = self.log_alpha.dtype
        open_np = (~self.shut).to(dtype).numpy()
        buffer = np.zeros(self.num_gates + 1, dtype=open_np.dtype)
        return (np.asarray(bounds, dtype=np.int64), any_usable.numpy(), open_np, buffer)

    def _path_layout(self) -> tuple[Tensor, Tensor, Tensor]:
        """The essential groups' index matrix, which of its entries can still open (not
        padding, not shut) and which rows have any; cached until ``shut`` changes."""
        key = (self.shut._version, self.shut.data_ptr(), self.shut.device)
        if self._path_layout_key != key:
            usable = self.path_valid & ~self.shut[self.path_index]
            self._path_layout_cache = (self.path_index, usable, usable.any(dim=1))
            self._path_layout_key = key
        return self._path_layout_cache

    def freeze(self, kept: Tensor) -> None:
        """Fix every gate where it is: closed where not ``kept``, else at its deterministic
        value. The network can then be fine-tuned without noise, and eval, training and
        compaction all see exactly these gates.

        Kept gates keep their (possibly fractional) value rather than jumping to 1: freezing
        then leaves the model's function as it was, and fine-tuning starts from the model
        that was trained. (Snapping to 1 cost 9% of R^2 on the P(k) emulator when the gates
        had trained half-open under deterministic gating.)
        """
        values = self.deterministic().detach()
        self.shut |= ~kept.to(self.shut.device)
        self.frozen_values = (values * self.open_mask).to(self.log_alpha.dtype)
        self.frozen = True

    def freeze_open(self, closed: Tensor | None = None) -> None:
        """Fix every gate at exactly 1, those in the boolean mask ``closed`` at 0: the network
        computes the model it wraps, less the closed units (the tolerance walk's answer when
        no smaller model is within its tolerance: the dense model, without the inputs the walk
        dropped where that stays within)."""
        self.shut.zero_()
        if closed is not None:
            self.shut |= closed.to(self.shut.device)
        self.frozen_values = (~self.shut).to(self.frozen_values.dtype)
        self.frozen = True

    def unfreeze(self) -> None:
        """Let the gates train again from their log alpha; the gates ``freeze`` closed stay
        shut (the tolerance walk freezes a cut's structure for one epoch, then goes on)."""
        self.frozen = False

    def draw_uniform(self) -> Tensor:
        """The next uniform draw in [b, 1 - b], identical on every process for the same draw."""
        generator = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + self.draws)
        self.draws += 1
        b = self.noise_interval  # one call: uniform_ draws in [b, 1 - b] directly
        u = torch.empty(self.num_gates, dtype=self.log_alpha.dtype).uniform_(
            b, 1.0 - b, generator=generator)
        return u.to(self.log_alpha.device)

    def split_stepped(self) -> None:
        """An optimiser stepped after a training forward: the next step's phase comes next
        (once per step, however many forwards it accumulated or optimisers it has)."""
        if self._phase_pending:
            self.split_steps += 1
            self._phase_pending = False

    def get_extra_state(self) -> dict:
        return {"noise_seed": self.noise_seed, "draws": self.draws,
                "noise_interval": self.noise_interval, "beta": self.cfg.beta,
                "frozen": self.frozen, "split_steps": self.split_steps}

    def set_extra_state(self, state: dict) -> None:
        self.noise_seed = int(state["noise_seed"])
        self.draws = int(state["draws"])
        self.noise_interval = float(state["noise_interval"])
        self.cfg = dataclasses.replace(self.cfg, beta=float(state.get("beta", self.cfg.beta)))
        self.frozen = bool(state.get("frozen", False))
        self.split_steps = int(state.get("split_steps", 0))

    def set_temperature(self, beta: float) -> None:
        self.cfg = dataclasses.replace(self.cfg, beta=float(beta))

    def deterministic(self) -> Tensor:
        if self.frozen:
            return self.frozen_values
        return self._apply_open_mask(deterministic_gates(self.log_alpha, self.cfg))

    def prob_nonzero(self) -> Tensor:
        if self.frozen:  # certain: open exactly where the frozen value is not 0
            return (self.frozen_values > 0).to(self.log_alpha.dtype)
        return self._apply_open_mask(prob_nonzero(self.log_alpha, self.cfg))

    @property
    def open_mask(self) -> Tensor:
        """0 for gates shut for good (budget projection), else 1 (cached: it runs every step
        and changes only when ``shut`` does, which bumps the buffer's version)."""
        key = (self.shut._version, self.shut.device, self.log_alpha.dtype)
        if self._open_mask_key != key:
            with torch.inference_mode(False):  # (a cached inference tensor breaks training)
                self._open_mask = (~self.shut).to(self.log_alpha.dtype)
            self._open_mask_key = key
        return self._open_mask

    def _apply_open_mask(self, gates: Tensor) -> Tensor:
        mask = self.open_mask
        return gates if not self._any_shut else gates * mask

    @property
    def _any_shut(self) -> bool:
        _ = self.open_mask  # refreshes the key below when shut changed
        if self._any_shut_key != self._open_mask_key:
            self._any_shut_value = bool(self.shut.any())
            self._any_shut_key = self._open_mask_key
        return self._any_shut_value

    def shut_gates(self, index: Tensor) -> None:
        """Close these gates for good: they stay 0 whatever log alpha does next."""
        self.shut[index] = True


def host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a value back to Python costs no wait (the CPU: no queue to drain)."""
    return device.type == "cpu"


def _run_eagerly_when_compiled() -> None:
    """Wrap ``GateBank.forward`` in ``torch.compiler.disable``, once (see its docstring)."""
    if not getattr(GateBank.forward, "_lumos_eager", False):
        eager = torch.compiler.disable(GateBank.forward)
        eager._lumos_eager = True  # type: ignore[attr-defined]
        GateBank.forward = eager  # type: ignore[method-assign]
