"""MeZO: memory-efficient zeroth-order SGD (Malladi et al. 2023, Algorithm 1).

One step, for a loss function `loss_fn()` that runs a forward pass:

    draw a seed s
    θ ← θ + εz          l+ = loss_fn()
    θ ← θ − 2εz         l− = loss_fn()
    θ ← θ + εz          (restored)
    g = (l+ − l−) / (2ε)            the projected gradient, a scalar
    θ ← θ − η·(g·z + λ·θ)           z drawn again from s (λ: weight decay, 0 by default)

z ~ N(0, I) is never stored. It is drawn chunk by chunk from a torch.Generator seeded
from (s, tensor index, chunk index), so every pass over the weights regenerates exactly the
same z and the largest temporary is one chunk, not a copy of the largest weight (the
embedding). Only scalars survive between the passes: the memory is that of inference.
"""

from __future__ import annotations

import random

import torch
from torch._subclasses.fake_tensor import FakeTensor

# Elements of z drawn at once (the only temporary MeZO adds): at most 2**20 (2 MiB in
# 16-bit, 4 MiB in fp32) and at most 1/1024 of the parameters, so that the temporary stays
# under 0.1% of the weights (hence of the inference peak) even for a small model at a short
# context, where one forward pass's activations are smaller than 2**20 values. Not below
# 2**10 values, so a tiny model is not drawn value by value.
MAX_CHUNK_ELEMENTS = 2**20
MIN_CHUNK_ELEMENTS = 2**10
CHUNK_SHARE = 1024


def default_chunk_elements(num_params: int) -> int:
    return max(MIN_CHUNK_ELEMENTS, min(MAX_CHUNK_ELEMENTS, num_params // CHUNK_SHARE))

# Seeds of the per-chunk generators: s, tensor index and chunk index mixed with a large
# odd multiplier, kept in the 63 bits torch.Generator.manual_seed accepts.
_MIX = 0x9E3779B97F4A7C15
_SEED_MASK = 2**63 - 1


def chunk_seed(seed: int, tensor_index: int, chunk_index: int) -> int:
    """The generator seed of one chunk of z: a fixed function of its three indices."""
    return ((seed * _MIX + tensor_index) * _MIX + chunk_index) & _SEED_MASK


class MeZO:
    """In-place zeroth-order SGD over `params` (those with requires_grad, in order)."""

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 seed: int = 0, chunk_elements: int | None = None):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("MeZO: no trainable parameters")
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay
        self.chunk_elements = chunk_elements or default_chunk_elements(sum(p.numel() for p in self.params))
        self._seeds = random.Random(seed)    # draws one seed per step
        self.last_seed: int | None = None
        self.last_projected_grad = None

    def _chunks(self, p: torch.Tensor):
        """Views of consecutive chunks of a parameter's flattened data.

        Under fake tensors (a memory trace) only the first and the last chunk are visited:
        every chunk allocates and frees the same temporary, so the others change nothing in
        the trace, and skipping them keeps a 7B-parameter trace at seconds, not minutes.
        """
        data = p.detach()
        if data.numel() <= self.chunk_elements:
            yield 0, data
            return
        flat = data.view(-1)
        starts = range(0, flat.numel(), self.chunk_elements)
        visit = {0, len(starts) - 1} if isinstance(data, FakeTensor) else range(len(starts))
        for j in sorted(visit):
            yield j, flat[starts[j]:starts[j] + self.chunk_elements]

    def _z(self, chunk: torch.Tensor, seed: int, i: int, j: int) -> torch.Tensor:
        g = torch.Generator(device=chunk.device)
        g.manual_seed(chunk_seed(seed, i, j))
        return torch.randn(chunk.shape, generator=g, dtype=chunk.dtype, device=chunk.device)

    @torch.no_grad()
    def direction(self, seed: int) -> list[torch.Tensor]:
        """z(seed) as one full tensor per parameter. For tests only: it allocates a copy of
        the model, which the optimizer itself never does."""
        out = []
        for i, p in enumerate(self.params):
            z = torch.empty_like(p)
            flat = z.view(-1)
            for j, start in enumerate(range(0, flat.numel(), self.chunk_elements)):
                chunk = flat[start:start + self.chunk_elements]
                chunk.copy_(self._z(chunk, seed, i, j))
            out.append(z)
        return out

    @torch.no_grad()
    def perturb(self, seed: int, scale: float) -> None:
        """θ ← θ + scale·z(seed), in place, tensor by tensor and chunk by chunk."""
        for i, p in enumerate(self.params):
            for j, chunk in self._chunks(p):
                chunk.add_(self._z(chunk, seed, i, j), alpha=scale)

    @torch.no_grad()
    def update(self, seed: int, projected_grad, scale: float = 1.0) -> None:
        """θ ← θ − lr·(scale·g·z(seed) + weight_decay·θ), in place; g is a float, or a 0-d
        tensor under fake tensors (whose value cannot be read). scale = 1/n averages the
        directions of an n-perturbation step."""
        for i, p in enumerate(self.params):
            for j, chunk in self._chunks(p):
                z = self._z(chunk, seed, i, j)
                if self.weight_decay:
                    chunk.mul_(1.0 - self.lr * self.weight_decay)
                if torch.is_tensor(projected_grad):
                    chunk.sub_(z.mul_(projected_grad), alpha=self.lr * scale)
                else:
                    chunk.sub_(z, alpha=self.lr * scale * projected_grad)

    def projected_grad(self, loss_fn, seed: int):
        """(l+ − l−)/(2ε) along z(seed); the weights end where they started (up to rounding)."""
        self.perturb(seed, self.eps)
        loss_plus = loss_fn()
        self.perturb(seed, -2 * self.eps)
        loss_minus = loss_fn()
        self.perturb(seed, self.eps)
        return (loss_plus - loss_minus) / (2 * self.eps), loss_plus, loss_minus

    def step(self, loss_fn, n: int = 1):
        """One MeZO step with n perturbations (Malladi et al., n-SPSA: the update averages
        g_i·z_i over n directions; each z_i is regenerated from its seed, so only 2n scalars
        are kept). loss_fn() runs a forward pass and returns the loss (a float or a 0-d
        tensor; under fake tensors it cannot be turned into a float). Returns the first l+."""
        seeds, grads, first = [], [], None
        for _ in range(n):
            seed = self._seeds.randrange(2**31)
            g, loss_plus, _ = self.projected_grad(loss_fn, seed)
            seeds.append(seed)
            grads.append(g)
            first = loss_plus if first is None else first
        for seed, g in zip(seeds, grads):
            self.update(seed, g, scale=1.0 / n)
        self.last_seed, self.last_projected_grad = seeds[-1], grads[-1]
        return first


class ReferenceMeZO:
    """The update of princeton-nlp/MeZO's trainer as published (large_models/trainer.py,
    OurTrainer.zo_step, zo_perturb_parameters and zo_update; the same code in
    medium_models/src/trainer.py's efficient_perturb_parameters): z is a full-size
    torch.normal tensor per parameter, drawn again from the step's seed in each of the four
    passes, and every pass assigns an out-of-place result, `param.data = param.data +
    scaling_factor * z * eps`. The update decays every parameter but biases and layer norms
    (`args.weight_decay * param.data` is computed even when the decay is 0).

    n > 1 perturbations (which the large-model trainer does not offer): n pairs of forward
    passes, then n updates, each regenerating its z from its own seed."""

    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 seed: int = 0):
        self.named_parameters_to_optim = [(n, p) for n, p in named_params if p.requires_grad]
        if not self.named_parameters_to_optim:
            raise ValueError("MeZO: no trainable parameters")
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay
        self._seeds = random.Random(seed)     # np.random.randint(1000000000) in the original
        self.last_seed: int | None = None
        self.last_projected_grad = None

    def _normal(self, param):
        return torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device,
                            dtype=param.data.dtype)

    def zo_perturb_parameters(self, random_seed: int, scaling_factor: float = 1) -> None:
        torch.manual_seed(random_seed)
        for name, param in self.named_parameters_to_optim:
            z = self._normal(param)
            param.data = param.data + scaling_factor * z * self.eps

    def zo_update(self, random_seed: int, projected_grad, scale: float = 1.0) -> None:
        torch.manual_seed(random_seed)
        lr = self.lr * scale
        for name, param in self.named_parameters_to_optim:
            z = self._normal(param)
            if "bias" not in name and "layer_norm" not in name and "layernorm" not in name:
                param.data = param.data - lr * (projected_grad * z + self.weight_decay * param.data)
            else:
                param.data = param.data - lr * (projected_grad * z)

    def step(self, loss_fn, n: int = 1):
        seeds, grads, first = [], [], None
        for _ in range(n):
            seed = self._seeds.randrange(1000000000)
            self.zo_perturb_parameters(seed, scaling_factor=1)
            loss1 = loss_fn()
            self.zo_perturb_parameters(seed, scaling_factor=-2)
            loss2 = loss_fn()
            g = (loss1 - loss2) / (2 * self.eps)
            self.zo_perturb_parameters(seed, scaling_factor=1)
            seeds.append(seed)
            grads.append(g)
            first = loss1 if first is None else first
        for seed, g in zip(seeds, grads):
            self.zo_update(seed, g, scale=1.0 / n)
        self.last_seed, self.last_projected_grad = seeds[-1], grads[-1]
        return first
