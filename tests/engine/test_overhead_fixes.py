"""The round-overhead fixes of issue 17 item 4 change no result: CPU seeding, the screening norms
with the round's float64 cache, the state store's kept sizes."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fedseg.algorithms import build_algorithm
from fedseg.engine import seeding
from fedseg.engine.screening import _update_norm, screen_updates, update_norm
from fedseg.engine.state_store import ClientStateStore, state_nbytes
from fedseg.types import ClientUpdate


def _draws() -> tuple[list[float], float, float, torch.Tensor]:
    return torch.rand(4).tolist(), random.random(), float(np.random.rand()), torch.randint(0, 99, (3,))


def test_cpu_seeding_draws_what_torch_manual_seed_draws() -> None:
    seeding.seed_everything(1234)
    fast = _draws()
    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)
    ref = _draws()
    assert fast[:3] == ref[:3] and torch.equal(fast[3], ref[3])
    assert _draws()[0] != ref[0]  # the draws depend on the seed, not on the call


def test_with_an_accelerator_every_generator_is_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(seeding.torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(seeding.torch, "manual_seed", lambda s: calls.append(s))
    seeding.seed_everything(5)
    assert calls == [5]


def test_round_cache_of_float64_globals_gives_the_same_norms_and_screening() -> None:
    gen = torch.Generator().manual_seed(0)
    glob = {"w": torch.randn(5, 3, generator=gen), "b": torch.randn(3, generator=gen).double(),
            "n": torch.tensor(7)}
    updates = [ClientUpdate(client_id=f"c{i}", params={k: (v + 0.1 * (i + 1) * torch.randn(v.shape, generator=gen)
                                                          .to(v.dtype) if v.is_floating_point() else v)
                                                      for k, v in glob.items()}, num_examples=4)
               for i in range(5)]
    updates[4].params["w"] = updates[4].params["w"] * 100  # a norm outlier
    wide: dict[str, torch.Tensor] = {}
    cached = [_update_norm(u.params, glob, wide) for u in updates]
    assert cached == [update_norm(u.params, glob) for u in updates]  # bit for bit
    assert set(wide) == {"w", "b"} and all(t.dtype == torch.float64 for t in wide.values())
    screening = screen_updates(updates, glob, build_algorithm({"name": "fedavg"}), max_norm_ratio=3.0)
    assert [u.client_id for u in screening.accepted] == ["c0", "c1", "c2", "c3"]
    assert [r.client_id for r in screening.rejected] == ["c4"]


def test_kept_sizes_spill_exactly_where_summing_every_state_would(tmp_path: Path) -> None:
    """A reference store that sums every in-memory state at each save, against the real one."""
    store = ClientStateStore(tmp_path, spill_bytes=2000)
    memory: dict[str, dict[str, torch.Tensor]] = {}
    sizes = [100, 200, 800, 50, 900, 10, 400, 120, 700, 0]
    for rnd in (1, 2):
        for i, n in enumerate(sizes):
            client = f"c{i % 6}"  # clients save again within the round, with other sizes
            state = {"t": torch.zeros(n // 4 + rnd * (i % 3))}
            others = sum(state_nbytes(s) for c, s in memory.items() if c != client)
            expect_memory = others + state_nbytes(state) <= 2000
            if expect_memory:
                memory[client] = state
            else:
                memory.pop(client, None)
            store.save(client, state, rnd)
            assert (store.load(client) is state) == expect_memory, (rnd, i)
    snap = store.snapshot()
    other = ClientStateStore(tmp_path, spill_bytes=2000)
    other.restore(snap)
    assert other._sizes == {c: state_nbytes(s) for c, s in memory.items()}


def test_without_an_up_codec_the_raw_size_is_the_encoded_update_sized_once(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``bytes_up_raw`` of a train line is ``wire.encoded_size`` of the update; without an up codec
    the client takes ``len`` of the bytes it sends (the same number by encoded_size's contract)."""
    from conftest import tiny_config
    from fedseg.config import config_from_dict
    from fedseg.engine import wire
    from fedseg.engine.rundir import read_metrics
    from fedseg.records import Field, Kind
    from fedseg.runtime.sim import run_inprocess

    sizes: list[tuple[int, int]] = []
    real_encode = wire.encode

    def spy(message):  # type: ignore[no-untyped-def]
        data = real_encode(message)
        if isinstance(message, ClientUpdate):
            sizes.append((len(data), wire.encoded_size(message)))
        return data

    monkeypatch.setattr(wire, "encode", spy)
    run_inprocess(config_from_dict(tiny_config(rounds=1)), tmp_path / "run", write_report=False)
    train = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r.get(Field.KIND) == Kind.TRAIN]
    assert len(train) == 2 and all(r[Field.BYTES_UP_RAW] == r[Field.BYTES_UP] for r in train)
    assert sizes and all(a == b for a, b in sizes)
