"""The speed features give the same results as the plain paths: chunked / auto-batched / multi-edit-batched
candidates, the coarse-to-fine search, the cheap search decoder, fp16/bf16, offloading, attention slicing and
torch.compile compatibility (correctness only: no timing assertions)."""

import numpy as np
import pytest
import torch

import pipeline_oir
from oir.testing import tiny_pipeline
from pipeline_oir import coarse_search_steps, default_search_stride, refine_search_steps, search_metric

SOURCE = "a photo of dumplings and chopsticks"
TARGET = "a photo of fried rice and a knife"
GUIDED = ["a photo of fried rice and chopsticks", "a photo of dumplings and a knife"]


@pytest.fixture(scope="module")
def inversion6(tiny_pipe, image_module):
    return tiny_pipe.invert(image_module, SOURCE, num_inference_steps=6)


@pytest.fixture(scope="module")
def image_module():
    return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))


def tiny_taesd(seed=0):
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(encoder_block_out_channels=(4, 4, 4, 4), decoder_block_out_channels=(4, 4, 4, 4)).eval()


class BatchSpy:
    """Records the batch size of every UNet call."""

    def __init__(self, unet):
        self.batches = []
        self._handle = unet.register_forward_pre_hook(lambda module, args: self.batches.append(args[0].shape[0]))

    def remove(self):
        self._handle.remove()


# ---------------------------------------------------------------------------------------------------------------------
# Batching: chunked, auto and multi-edit batches give the single-batch candidates
# ---------------------------------------------------------------------------------------------------------------------


def test_chunked_and_auto_batched_candidates_equal_the_single_batch(tiny_pipe, inversion6, monkeypatch):
    single = tiny_pipe.generate_candidates(inversion6, GUIDED[0])  # the paper's splicing: 3 lanes, 7 calls
    spy = BatchSpy(tiny_pipe.unet)
    try:
        for batch_size in (1, 2, 4, "auto"):
            spy.batches.clear()
            chunked = tiny_pipe.generate_candidates(inversion6, GUIDED[0], batch_size=batch_size)
            torch.testing.assert_close(chunked, single, atol=1e-5, rtol=0)
            assert sum(spy.batches) == 2 * 21  # the same N(N+1)/2 guided evaluations, CFG doubles them
            if batch_size != "auto":
                assert max(spy.batches) <= 2 * batch_size  # memory follows the batch size, not N
        # "auto" on CPU: a fixed budget of latent cells per call. 8x8 latents with CFG are 128 cells per lane, so a
        # budget of 300 cells allows 2 lanes per call.
        monkeypatch.setattr(pipeline_oir, "AUTO_BATCH_LATENT_CELLS", 300)
        spy.batches.clear()
        auto = tiny_pipe.generate_candidates(inversion6, GUIDED[0], batch_size="auto")
        assert max(spy.batches) == 4 and sum(spy.batches) == 42
        torch.testing.assert_close(auto, single, atol=1e-5, rtol=0)
    finally:
        spy.remove()
    with pytest.raises(ValueError, match="batch_size"):
        tiny_pipe.generate_candidates(inversion6, GUIDED[0], batch_size="big")


def test_all_edits_chains_share_the_same_batches(tiny_pipe, image_module, inversion6, two_masks):
    masks = tiny_pipe.prepare_masks(two_masks, 64, 64)
    edits = [pipeline_oir.Edit("dumplings", "fried rice"), pipeline_oir.Edit("chopsticks", "a knife")]
    captured = {}
    original = tiny_pipe.decode_latents

    def spy_decode(latents, *args, **kwargs):
        captured.setdefault("latents", []).append(latents.clone())
        return original(latents, *args, **kwargs)

    tiny_pipe.decode_latents = spy_decode
    spy = BatchSpy(tiny_pipe.unet)
    try:
        records, _ = tiny_pipe.search(
            inversion6, tiny_pipe.preprocess_image(image_module), edits, GUIDED, masks, list(range(1, 7)),
            decode_batch_size=5,
        )
    finally:
        spy.remove()
        del tiny_pipe.decode_latents
    # Both edits' 2 x 6 chains are spliced together: N + 1 calls (not 2 (N + 1)), 2 x N(N+1) samples.
    assert len(spy.batches) == 7 and sum(spy.batches) == 2 * 2 * 21
    assert max(spy.batches) == 2 * 6  # 6 lanes of two chains each
    # Decoded in chunks of 5 across the edit boundary, and equal to each edit's candidates made alone.
    assert [len(x) for x in captured["latents"]] == [5, 5, 2]
    together = torch.cat(captured["latents"])
    alone = torch.cat([tiny_pipe.generate_candidates(inversion6, prompt) for prompt in GUIDED])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert [r.steps for r in records] == [list(range(1, 7))] * 2


# ---------------------------------------------------------------------------------------------------------------------
# Coarse-to-fine search
# ---------------------------------------------------------------------------------------------------------------------


def test_coarse_to_fine_step_sets():
    steps = list(range(1, 51))
    assert default_search_stride(50) == 5 and default_search_stride(10) == 2 and default_search_stride(2) == 2
    coarse = coarse_search_steps(steps, 5)
    assert coarse == [3, 8, 13, 18, 23, 28, 33, 38, 43, 48]
    assert refine_search_steps(steps, 23, 5, coarse) == [19, 20, 21, 22, 24, 25, 26, 27]
    assert refine_search_steps(steps, 3, 5, coarse) == [1, 2, 4, 5, 6, 7]
    assert refine_search_steps(steps, 48, 5, coarse) == [44, 45, 46, 47, 49, 50]
    subset = list(range(10, 51, 2))  # any subset: positions, not values, are strided
    assert coarse_search_steps(subset, 3) == [12, 18, 24, 30, 36, 42, 48]  # centred: 10 and 50 are one away
    assert refine_search_steps(subset, 24, 3, coarse_search_steps(subset, 3)) == [20, 22, 26, 28]


def simulate_coarse_to_fine(steps, editing, non_editing, stride):
    """The coarse-to-fine choice made from exhaustive raw scores with the pipeline's own step-set functions."""
    coarse = coarse_search_steps(steps, stride)
    best = coarse[search_metric([editing[s] for s in coarse], [non_editing[s] for s in coarse])[1]]
    done = sorted(set(coarse) | set(refine_search_steps(steps, best, stride, coarse)))
    return done, done[search_metric([editing[s] for s in done], [non_editing[s] for s in done])[1]]


def test_coarse_to_fine_search_uses_fewer_unet_samples(tiny_pipe, image_module, two_masks, unet_counter):
    n = 12
    inversion = tiny_pipe.invert(image_module, SOURCE, num_inference_steps=n)
    kwargs = dict(masks=two_masks, num_inference_steps=n, inversion=inversion, optimal_steps=None, output_type="pt")
    unet_counter.calls = unet_counter.samples = 0
    exhaustive = tiny_pipe(image_module, SOURCE, TARGET, **kwargs)
    exhaustive_samples = unet_counter.samples
    unet_counter.calls = unet_counter.samples = 0
    fast = tiny_pipe(image_module, SOURCE, TARGET, search="coarse-to-fine", search_stride=3, **kwargs)
    assert unet_counter.samples < exhaustive_samples
    for fine, full in zip(fast.search, exhaustive.search):
        assert fine.optimal_step in fine.steps and set(fine.steps) < set(range(1, n + 1))
        assert len(fine.scores) == len(fine.steps) and fine.optimal_step == fine.steps[int(np.argmax(fine.scores))]
        # Candidates do not depend on which others are evaluated: the same choice as simulated from the exhaustive
        # search's raw scores with the same step sets.
        editing = dict(zip(full.steps, full.editing_scores))
        non_editing = dict(zip(full.steps, full.non_editing_scores))
        steps, choice = simulate_coarse_to_fine(full.steps, editing, non_editing, 3)
        assert fine.steps == steps and fine.optimal_step == choice
        np.testing.assert_allclose(fine.editing_scores, [editing[s] for s in steps], atol=1e-4)
    # Only the searched subset is ever evaluated.
    subset = tiny_pipe(image_module, SOURCE, TARGET, search="coarse-to-fine", search_steps=range(2, 13, 2), **kwargs)
    assert all(set(r.steps) <= set(range(2, 13, 2)) and r.optimal_step in r.steps for r in subset.search)
    for bad in (dict(search="fast"), dict(search_stride=1), dict(candidate_batch_size="big")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            tiny_pipe(image_module, SOURCE, TARGET, masks=two_masks, num_inference_steps=4, **bad)


# ---------------------------------------------------------------------------------------------------------------------
# The cheap search decoder
# ---------------------------------------------------------------------------------------------------------------------


def test_search_vae_decodes_the_candidates_and_vae_the_result(image_module, two_masks):
    pipe = tiny_pipeline(seed=0)
    taesd = tiny_taesd()
    decoded = []
    original = taesd.decode
    taesd.decode = lambda x, *a, **k: decoded.append(x.shape[0]) or original(x, *a, **k)
    kwargs = dict(masks=two_masks[:1], num_inference_steps=4, output_type="pt", return_candidates=True)
    out = pipe(image_module, "a photo of dumplings", "a photo of fried rice", search_vae=taesd, **kwargs)
    assert sum(decoded) == 4  # the 4 candidates, and nothing else
    inversion = pipe.invert(image_module, "a photo of dumplings", num_inference_steps=4)
    candidates = pipe.generate_candidates(inversion, "a photo of fried rice")
    by_taesd = pipe.decode_latents(candidates, vae=taesd)
    by_vae = pipe.decode_latents(candidates)
    assert not torch.allclose(by_taesd, by_vae, atol=1e-3)
    shown = torch.stack([torch.from_numpy(np.array(c)).permute(2, 0, 1) / 255.0 for c in out.search[0].candidates])
    assert (shown - by_taesd).abs().max() < 1 / 255 + 1e-4  # the search saw TAESD's images
    step = out.optimal_steps[0]
    torch.testing.assert_close(out.images, by_vae[step - 1 : step], atol=1e-5, rtol=0)  # the result: the full VAE
    with pytest.raises(ValueError, match="search_vae"):
        pipe(image_module, "a photo of dumplings", "a photo of fried rice", search_vae="taesd", **kwargs)


def test_a_registered_search_vae_component_is_used_by_default(image_module):
    from oir.testing import tiny_components

    taesd = tiny_taesd()
    decoded = []
    original = taesd.decode
    taesd.decode = lambda x, *a, **k: decoded.append(x.shape[0]) or original(x, *a, **k)
    pipe = pipeline_oir.OIRPipeline(**tiny_components(seed=0), search_vae=taesd)
    pipe.set_progress_bar_config(disable=True)
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:40, 8:32] = True
    pipe(image_module, "a photo of dumplings", "a photo of fried rice", masks=[mask], num_inference_steps=3)
    assert sum(decoded) == 3


# ---------------------------------------------------------------------------------------------------------------------
# Dtypes, offloading, attention slicing, torch.compile
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_paths_run_on_cpu(image_module, two_masks, dtype):
    pipe = tiny_pipeline(seed=0)
    reference = pipe(image_module, SOURCE, TARGET, masks=two_masks, num_inference_steps=4, optimal_steps=[3, 4],
                     output_type="pt").images
    pipe.to(dtype)
    try:
        out = pipe(image_module, SOURCE, TARGET, masks=two_masks, num_inference_steps=4, output_type="pt",
                   search_vae=tiny_taesd().to(dtype), candidate_batch_size="auto")
        half = pipe(image_module, SOURCE, TARGET, masks=two_masks, num_inference_steps=4, optimal_steps=[3, 4],
                    output_type="pt").images
    except (RuntimeError, NotImplementedError) as error:  # pragma: no cover - depends on the CPU kernels
        pytest.skip(f"{dtype} is not supported on this CPU: {error}")
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()
    assert all(1 <= s <= 4 for s in out.optimal_steps)
    inversion = pipe.invert(image_module, SOURCE, num_inference_steps=4)
    assert inversion.latents.dtype == dtype
    assert pipe.generate_candidates(inversion, GUIDED[0]).dtype == dtype
    # The same edit up to rounding (the tiny random model amplifies it: bf16 keeps 8 bits of mantissa).
    assert (half - reference).abs().mean() < {torch.bfloat16: 0.1, torch.float16: 0.02}[dtype]


def test_model_cpu_offload_and_attention_slicing(image_module, two_masks):
    pipe = tiny_pipeline(seed=0)
    inversion = pipe.invert(image_module, SOURCE, num_inference_steps=5)
    plain = pipe.generate_candidates(inversion, GUIDED[0])
    pipe.enable_attention_slicing("max")
    sliced = pipe.generate_candidates(inversion, GUIDED[0], batch_size="auto")
    torch.testing.assert_close(sliced, plain, atol=1e-4, rtol=0)  # per-head attention: another summation order
    pipe.disable_attention_slicing()
    expected = pipe(image_module, SOURCE, TARGET, masks=two_masks, num_inference_steps=5, output_type="pt")
    pipe.enable_model_cpu_offload(device="cpu")  # the accelerate hooks (a GPU is not needed to exercise them)
    offloaded = pipe(image_module, SOURCE, TARGET, masks=two_masks, num_inference_steps=5, output_type="pt",
                     search_vae=tiny_taesd())
    assert offloaded.images.shape == expected.images.shape and torch.isfinite(offloaded.images).all()
    again = pipe(image_module, SOURCE, TARGET, masks=two_masks, num_inference_steps=5, output_type="pt")
    assert again.optimal_steps == expected.optimal_steps
    torch.testing.assert_close(again.images, expected.images, atol=1e-5, rtol=0)


def test_per_sample_timesteps_cause_no_graph_break(tiny_pipe):
    """`torch.compile(pipe.unet)`: the spliced calls' ``[B]`` timestep vector traces into a single graph."""
    import torch._dynamo

    torch._dynamo.reset()
    latents = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(6, 77, 16, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([801, 801, 601, 401, 201, 1])  # every row at its own noise level
    with torch.no_grad():
        explanation = torch._dynamo.explain(tiny_pipe.unet)(latents, timesteps, encoder_hidden_states=context)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    torch._dynamo.reset()
