"""Integer genotype of the search space, and the map between vectors and :class:`Candidate` objects.

Gene layout (``Encoding.gene_names`` spells it out)::

    [K]              only when several step counts are searched: index into ``space.steps``
    t0 … t{Kmax-1}   timestep genes, in sampling order (t0 is the noisiest step)
    w:<unit> …       weight-bit gene per precision unit: index into ``space.bit_options``
    a:<unit> …       activation-bit gene per precision unit: index into ``space.bit_options``

Timestep gene j is a position inside the j-th group (descending) of the chosen K, at resolution ``R_j = max
over searched K > j of len(group_j(K))``: ``t = group.start + (gene · len(group)) // R_j``. With one K ``R_j``
is the group's size, so the gene is simply the offset of the timestep inside its group. With a K set the map
is onto every group, and genes j ≥ K are inactive (kept, so a later K mutation can use them again; two vectors
differing only there decode to the same candidate, which duplicate elimination sees through keys). Because of
this layout every integer vector inside the bounds is a valid candidate; :meth:`Encoding.repair` only rounds,
clips and puts active timestep genes in canonical form (the smallest gene giving the same timestep).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from search.candidate import Candidate
from search.errors import InvalidCandidate
from search.space import SearchSpace


class Encoding:
    """Vectors ↔ candidates for one :class:`SearchSpace`."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self._k_gene = len(space.steps) > 1
        self._t0 = 1 if self._k_gene else 0
        kmax = space.max_steps
        self._res = np.array(
            [max(len(space.descending_groups(k)[j]) for k in space.steps if k > j) for j in range(kmax)],
            dtype=np.int64,
        )
        self._w0 = self._t0 + kmax
        n_units = len(space.units)
        self._a0 = self._w0 + n_units
        top_bit = len(space.bit_options) - 1
        upper = ([len(space.steps) - 1] if self._k_gene else []) + list(self._res - 1) + [top_bit] * (2 * n_units)
        self.xl = np.zeros(len(upper), dtype=np.int64)
        self.xu = np.array(upper, dtype=np.int64)
        # Per K: group starts and sizes for the active genes, in sampling order.
        self._starts = {k: np.array([g.start for g in space.descending_groups(k)]) for k in space.steps}
        self._sizes = {k: np.array([len(g) for g in space.descending_groups(k)]) for k in space.steps}

    @property
    def n_var(self) -> int:
        return len(self.xu)

    @property
    def gene_names(self) -> tuple[str, ...]:
        kmax = self.space.max_steps
        names = (["K"] if self._k_gene else []) + [f"t{j}" for j in range(kmax)]
        names += [f"w:{u}" for u in self.space.units] + [f"a:{u}" for u in self.space.units]
        return tuple(names)

    # -- decode -----------------------------------------------------------------------------------------

    def steps_of(self, x: Sequence[float] | np.ndarray) -> int:
        """The K a (valid) vector selects."""
        return self.space.steps[int(x[0])] if self._k_gene else self.space.steps[0]

    def decode(self, x: Sequence[float] | np.ndarray) -> Candidate:
        """The candidate of an integer vector inside the bounds; InvalidCandidate otherwise."""
        v = self._checked(x)
        k = self.steps_of(v)
        genes = v[self._t0 : self._t0 + k]
        timesteps = self._starts[k] + (genes * self._sizes[k]) // self._res[:k]
        bits = self.space.bit_options
        units = self.space.units
        w = {u: bits[i] for u, i in zip(units, v[self._w0 : self._a0], strict=True)}
        a = {u: bits[i] for u, i in zip(units, v[self._a0 :], strict=True)}
        return Candidate.from_maps(timesteps.tolist(), self.space.bits_from_units(w), self.space.bits_from_units(a))

    def _checked(self, x: Sequence[float] | np.ndarray) -> np.ndarray:
        arr = np.asarray(x, dtype=float)
        if arr.shape != (self.n_var,):
            raise InvalidCandidate(f"expected a vector of {self.n_var} genes, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.rint(arr)):
            raise InvalidCandidate("genes must be integers")
        v = arr.astype(np.int64)
        if np.any(v < self.xl) or np.any(v > self.xu):
            bad = int(np.flatnonzero((v < self.xl) | (v > self.xu))[0])
            raise InvalidCandidate(f"gene {self.gene_names[bad]} = {v[bad]} is outside [0, {self.xu[bad]}]")
        return v

    # -- encode -----------------------------------------------------------------------------------------

    def encode(self, candidate: Candidate) -> np.ndarray:
        """The canonical vector of a candidate of the space (inactive genes 0); InvalidCandidate otherwise."""
        self.space.check(candidate)
        k = candidate.steps
        v = np.zeros(self.n_var, dtype=np.int64)
        if self._k_gene:
            v[0] = self.space.steps.index(k)
        offsets = np.array(candidate.timesteps) - self._starts[k]
        v[self._t0 : self._t0 + k] = -((-offsets * self._res[:k]) // self._sizes[k])  # ceil(o·R/size)
        index = {b: i for i, b in enumerate(self.space.bit_options)}
        w, a = candidate.w_map(), candidate.a_map()
        for n, unit in enumerate(self.space.units):
            site = self.space.unit_sites(unit)[0]
            v[self._w0 + n] = index[w[site]]
            v[self._a0 + n] = index[a[site]]
        return v

    # -- repair and sampling ----------------------------------------------------------------------------

    def repair(self, vectors: np.ndarray) -> np.ndarray:
        """Round, clip to the bounds and canonicalise active timestep genes (one vector or a matrix)."""
        arr = np.asarray(vectors, dtype=float)
        rows = np.atleast_2d(arr)
        rows = np.nan_to_num(rows, nan=0.0, posinf=float(self.xu.max()), neginf=0.0)
        out = np.clip(np.rint(rows), self.xl, self.xu).astype(np.int64)
        ks = out[:, 0] if self._k_gene else np.zeros(len(out), dtype=np.int64)
        for i, k in enumerate(self.space.steps):
            rows_k = ks == i
            if not rows_k.any():
                continue
            cols = slice(self._t0, self._t0 + k)
            res, size = self._res[:k], self._sizes[k]
            offset = (out[rows_k, cols] * size) // res
            out[rows_k, cols] = -((-offset * res) // size)
        return out if arr.ndim == 2 else out[0]

    def random(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` random valid vectors (each gene uniform in its bounds, then repaired)."""
        return self.repair(rng.integers(self.xl, self.xu + 1, size=(n, self.n_var)))
