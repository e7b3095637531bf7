"""The one GPU catalog (r1lab.gpus): every layer's view derives from it; gpu_bench's standalone copy agrees."""

from __future__ import annotations

import pytest

from r1lab import config, gpus
from r1lab.calibrate import gpu_bench
from r1lab.cloud import pricing
from r1lab.cloud.emulator import catalog as emu_catalog
from r1lab.perf import hardware, network, planner

# GPU types r1lab models that calibrate/gpu_bench.py does not know yet (an entry here is a known gap)
NOT_IN_GPU_BENCH: set[str] = set()


def test_gpu_bench_datasheet_agrees_with_the_catalog() -> None:
    modelled = {g.short: g for g in gpus.GPUS.values()}
    assert set(gpu_bench.DATASHEET) == set(modelled) - NOT_IN_GPU_BENCH
    for short, sheet in gpu_bench.DATASHEET.items():
        g = modelled[short]
        assert sheet == {
            "hbm_tb_s": g.hbm_tb_s,
            "fp8_tflops": g.fp8_tflops,
            "bf16_tflops": g.bf16_tflops,
            "link_gb_s": g.fastest_link_gb_s,
        }, short
        assert gpu_bench.identify_gpu(g.runpod_id) == short


def test_fastest_link_is_the_perf_models_link() -> None:
    for g in gpus.GPUS.values():
        fastest = network.LINKS[g.intranode if g.nvlink_all_pairs else "nvlink-bridge"]
        assert g.fastest_link_gb_s == fastest.gb_s, g.short


def test_every_view_derives_from_the_catalog() -> None:
    assert hardware.GPUS is gpus.GPUS and hardware.gpu is gpus.gpu
    assert config.known_gpu_types() == {g.runpod_id: g.short for g in gpus.GPUS.values()}
    priced = {g.runpod_id: g.price for g in gpus.GPUS.values() if g.price}
    assert (
        set(config.Cost().prices)
        == set(priced)
        == set(pricing.FALLBACK_PRICES)
        == set(planner.FALLBACK_PRICES)
    )
    for gpu_id, p in priced.items():
        assert (
            config.Cost().prices[gpu_id].usd_per_gpu_hour
            == p.secure
            == pricing.FALLBACK_PRICES[gpu_id]["SECURE"]
        )
        assert planner.FALLBACK_PRICES[gpu_id]["usd_per_gpu_hour"] == p.secure
        assert config.Cost().prices[gpu_id].date == p.date
    for g in gpus.GPUS.values():
        row = emu_catalog.gpu_type(g.runpod_id)
        assert row is not None and g.stock is not None, g.short
        assert row["cluster"] == g.instant_cluster and row["memory"] == g.stock.memory_gb
        if g.price:
            assert row["price"]["secure"] == g.price.secure
    unmodelled = {gpu_id for gpu_id, _, _ in gpus.UNMODELLED_STOCK}
    assert not unmodelled & set(gpus.GPUS)
    assert {r["id"] for r in emu_catalog.GPU_CATALOG} == set(gpus.GPUS) | unmodelled


def test_unmodelled_emulator_stock_is_not_valid_in_params() -> None:
    for gpu_id, _, _ in gpus.UNMODELLED_STOCK:
        with pytest.raises(KeyError):
            gpus.gpu(gpu_id)
        assert gpu_id not in config.known_gpu_types()
