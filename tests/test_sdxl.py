"""SDXL (refimpl.sdxl): the micro-conditioning against diffusers' UNet2DConditionModel ("text_time") and its
pipelines' add_time_ids, the two-encoder text context against StableDiffusionXLPipeline.encode_prompt, the data side
(crops that report their corner, aspect-ratio buckets), the base/refiner split against both pipelines, the U-Net
configs against diffusers' own converter of the official YAML configs, their parameter counts on the meta device,
the traced anatomy, and the command line."""

import inspect
import json
import math
import warnings
from types import SimpleNamespace

import diffusers  # a test dependency: if it is missing these tests must fail, not skip
import pytest
import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_timestep_embedding
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from clitools import assert_refused, refimpl
from refimpl import sdxl
from refimpl.__main__ import PAPERS
from refimpl.cli import main as cli_main
from refimpl.core import LineageError
from refimpl.embeddings import fourier_features

torch.set_num_threads(1)
F64 = torch.float64
#: the released SDXL base scheduler config (stabilityai/stable-diffusion-xl-base-1.0, scheduler_config.json)
SDXL_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1,
                  "timestep_spacing": "leading", "interpolation_type": "linear", "use_karras_sigmas": False}


# --- micro-conditioning ------------------------------------------------------------------------------------------

def test_fourier_features_closed_form_and_diffusers():
    """[cos(x w_i), sin(x w_i)] with w_i = 10000^(-i/128), i < 128, against a float64 evaluation (float32 rounding
    of arguments up to 1728 rad: |error| < 2e-4), and exactly diffusers' get_timestep_embedding with
    flip_sin_to_cos=True, downscale_freq_shift=0 (the same float32 operations in the same order)."""
    x = torch.tensor([0.0, 1.0, 64.0, 512.0, 1024.0, 1728.0])
    ours = fourier_features(x, 256)
    w = 10000.0 ** (-torch.arange(128, dtype=F64) / 128)
    exact = torch.cat([torch.cos(x.double()[:, None] * w), torch.sin(x.double()[:, None] * w)], dim=1)
    torch.testing.assert_close(ours.double(), exact, rtol=0, atol=2e-4)
    ref = get_timestep_embedding(x, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


@pytest.fixture(scope="module")
def unet():
    return sdxl.tiny_unet()


def _tiny_added(unet) -> sdxl.AddedConditioning:
    """Our AddedConditioning at the tiny U-Net's sizes, with its add_embedding's weights."""
    ours = sdxl.AddedConditioning(pooled_dim=sdxl.TINY["pooled"], emb_dim=unet.time_embedding.linear_2.out_features,
                                  feature_dim=sdxl.TINY["feature_dim"])
    ours.load_state_dict(unet.add_embedding.state_dict(), strict=True)  # linear_1, linear_2: the same names
    return ours.eval()


def _ids_batch() -> torch.Tensor:
    return torch.stack([sdxl.micro_conditioning_ids((512, 384), (0, 64), (1024, 1024)),
                        sdxl.micro_conditioning_ids((1024, 1024), (0, 0), (1152, 896))])


def test_added_conditioning_is_diffusers_text_time(unet):
    """UNet2DConditionModel with addition_embed_type="text_time": get_aug_embed(...) (add_time_proj on the flattened
    ids, reshaped per sample, concatenated after text_embeds, add_embedding) computes what AddedConditioning computes
    with the same weights. The same float32 operations in the same order: measured equal; asked 1e-5 (float32
    rounding of sums over 64 inputs, were a BLAS to order them differently)."""
    ours = _tiny_added(unet)
    pooled = torch.randn(2, sdxl.TINY["pooled"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = unet.get_aug_embed(torch.zeros(2, 128), None, {"text_embeds": pooled, "time_ids": _ids_batch()})
        torch.testing.assert_close(ours(pooled, _ids_batch()), ref, rtol=0, atol=1e-5)


def test_added_conditioning_at_sdxl_size_is_diffusers():
    """At SDXL base's sizes, 1280 pooled + 6 x 256 = 2816 -> 1280: diffusers' Timesteps(256, flip_sin_to_cos=True,
    freq_shift=0) and TimestepEmbedding(2816, 1280), built as UNet2DConditionModel builds them, with our weights
    copied in. Measured equal (the same float32 operations); asked 1e-5, float32 rounding of sums over 2816 inputs
    of size ~1 (~1e-6), were a BLAS to order them differently."""
    torch.manual_seed(0)
    ours = sdxl.AddedConditioning().eval()
    proj, embedding = Timesteps(256, True, 0), TimestepEmbedding(2816, 1280)
    embedding.load_state_dict(ours.state_dict(), strict=True)
    pooled = torch.randn(2, 1280, generator=torch.Generator().manual_seed(2))
    ids = _ids_batch()
    with torch.no_grad():
        ref = embedding(torch.cat([pooled, proj(ids.flatten()).reshape(2, -1)], dim=-1))
        torch.testing.assert_close(ours(pooled, ids), ref, rtol=0, atol=1e-5)
    assert ours.vector(pooled, ids).shape == (2, sdxl.ORIGINAL_UNETS["sdxl-base"]["adm_in_channels"])


def test_added_embedding_is_summed_with_the_timestep_embedding(unet):
    """The U-Net's blocks receive emb = timestep embedding + added embedding (one vector, not a concatenation)."""
    seen = {}
    hooks = [unet.time_embedding.register_forward_hook(lambda m, a, out: seen.__setitem__("time", out)),
             unet.add_embedding.register_forward_hook(lambda m, a, out: seen.__setitem__("added", out)),
             unet.down_blocks[0].register_forward_pre_hook(
                 lambda m, args, kwargs: seen.__setitem__("temb", kwargs["temb"]), with_kwargs=True)]
    g = torch.Generator().manual_seed(3)
    try:
        with torch.no_grad():
            unet(torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 900]),
                 encoder_hidden_states=torch.randn(2, 7, 24, generator=g),
                 added_cond_kwargs={"text_embeds": torch.randn(2, 16, generator=g), "time_ids": _ids_batch()})
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(seen["temb"], seen["time"] + seen["added"], rtol=0, atol=0)


def test_sizes_change_the_added_embedding(unet):
    """Each of the six ids reaches the embedding: changing any one of them changes it."""
    ours = _tiny_added(unet)
    pooled = torch.zeros(1, sdxl.TINY["pooled"])
    base = sdxl.micro_conditioning_ids((512, 384), (0, 64), (1024, 1024))
    with torch.no_grad():
        ref = ours(pooled, base[None])
        for i in range(sdxl.N_IDS):
            changed = base.clone()
            changed[i] += 32
            assert (ours(pooled, changed[None]) - ref).abs().max() > 1e-4, i


# --- the pipelines: text context, add_time_ids, the split ---------------------------------------------------------

def _tokenizer(tmp_path, name: str) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with a ten-entry vocabulary (no download)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "c</w>": 3, "t</w>": 4, "a": 5, "c": 6, "t": 7,
             "ca": 8, "cat</w>": 9}
    (tmp_path / f"{name}.json").write_text(json.dumps(vocab))
    (tmp_path / f"{name}.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    return CLIPTokenizer(str(tmp_path / f"{name}.json"), str(tmp_path / f"{name}.txt"), model_max_length=8,
                         pad_token="<|endoftext|>")


def _clip(cls, width: int, seed: int):
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=10, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=3,
                            num_attention_heads=2, max_position_embeddings=8, projection_dim=width,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return cls(config).eval()


def _vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                         norm_num_groups=8).eval()


@pytest.fixture(scope="module")
def base_pipe(unet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tokenizers")
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_clip(CLIPTextModel, 8, 1), text_encoder_2=_clip(CLIPTextModelWithProjection, 16, 2),
        tokenizer=_tokenizer(tmp, "l"), tokenizer_2=_tokenizer(tmp, "g"), unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER), add_watermarker=False)


def test_text_context_is_the_pipelines(base_pipe):
    """StableDiffusionXLPipeline.encode_prompt: the context is [encoder 1; encoder 2] penultimate hidden states along
    the feature axis (8 + 16 = 24 here, 768 + 1280 = 2048 in SDXL), the pooled vector encoder 2's projected
    embedding: text_conditioning on the two encoders' own outputs gives the same tensors."""
    ids = base_pipe.tokenizer("a cat", padding="max_length", max_length=8, return_tensors="pt").input_ids
    with torch.no_grad():
        out_l = base_pipe.text_encoder(ids, output_hidden_states=True)
        out_g = base_pipe.text_encoder_2(ids, output_hidden_states=True)
        context, pooled = sdxl.text_conditioning(out_l.hidden_states[-2], out_g.hidden_states[-2], out_g.text_embeds)
        ref_context, _, ref_pooled, _ = base_pipe.encode_prompt("a cat", device="cpu",
                                                                do_classifier_free_guidance=False)
    assert context.shape == (1, 8, 24)
    torch.testing.assert_close(context, ref_context, rtol=0, atol=0)
    torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=0)


def test_ids_are_the_pipelines_add_time_ids(base_pipe):
    """_get_add_time_ids of StableDiffusionXLPipeline is original_size + crops_coords_top_left + target_size."""
    for original, crop, target in (((512, 384), (0, 64), (1024, 1024)), ((1024, 768), (32, 0), (1152, 896))):
        ref = base_pipe._get_add_time_ids(original, crop, target, dtype=torch.float32, text_encoder_projection_dim=16)
        torch.testing.assert_close(ref[0], sdxl.micro_conditioning_ids(original, crop, target), rtol=0, atol=0)


def _record_unet_calls(unet):
    calls = []
    hook = unet.register_forward_pre_hook(lambda m, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
    return calls, hook


def _embeds(width: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 8, width, generator=g), torch.randn(1, sdxl.TINY["pooled"], generator=g)


@pytest.mark.parametrize("steps, split", [(10, 0.8), (7, 0.65)])
def test_base_and_refiner_split_one_schedule(base_pipe, steps, split):
    """The two-stage pipeline run for real with tiny models: the base (denoising_end=split) calls its U-Net at
    split_timesteps' first half, the refiner (StableDiffusionXLImg2ImgPipeline with requires_aesthetics_score,
    denoising_start=split, the base's latents) at its second half; together the schedule of leading_timesteps,
    each timestep once. The U-Nets receive our ids: the base's six (negative ids = the prompt's unless negative
    sizes are given) and the refiner's five (aesthetic score 6.0, negative 2.5, as in the official demo); without a
    negative prompt the unconditional text and pooled vector are zeros (force_zeros_for_empty_prompt, the official
    code's force_uc_zero_embeddings=["txt"])."""
    original, crop, target = (512, 384), (0, 64), (128, 128)
    context, pooled = _embeds(24, 4)
    calls, hook = _record_unet_calls(base_pipe.unet)
    try:
        latents = base_pipe(prompt_embeds=context, pooled_prompt_embeds=pooled, num_inference_steps=steps,
                            denoising_end=split, height=128, width=128, original_size=original,
                            crops_coords_top_left=crop, target_size=target, output_type="latent",
                            generator=torch.Generator().manual_seed(0)).images
    finally:
        hook.remove()
    base_steps = [int(args[1]) for args, _ in calls]
    added = calls[0][1]["added_cond_kwargs"]
    torch.testing.assert_close(added["time_ids"], sdxl.micro_conditioning_ids(original, crop, target).repeat(2, 1),
                               rtol=0, atol=0)
    assert torch.equal(added["text_embeds"][0], torch.zeros(sdxl.TINY["pooled"]))  # the unconditional half
    assert torch.equal(calls[0][1]["encoder_hidden_states"][0], torch.zeros(8, 24))

    torch.manual_seed(5)
    config = dict(sdxl.TINY_CONFIG, cross_attention_dim=16,
                  projection_class_embeddings_input_dim=sdxl.TINY["pooled"] + sdxl.N_REFINER_IDS * 8)
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
        unet=UNet2DConditionModel(**config).eval(), scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        requires_aesthetics_score=True, add_watermarker=False)
    context_g, pooled_g = _embeds(16, 6)
    calls, hook = _record_unet_calls(refiner.unet)
    try:
        refiner(image=latents, prompt_embeds=context_g, pooled_prompt_embeds=pooled_g, num_inference_steps=steps,
                denoising_start=split, original_size=original, crops_coords_top_left=crop, output_type="latent",
                generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    refiner_steps = [int(args[1]) for args, _ in calls]
    ids = calls[0][1]["added_cond_kwargs"]["time_ids"]
    torch.testing.assert_close(ids[1], sdxl.refiner_ids(original, crop, 6.0), rtol=0, atol=0)
    # the unconditional half: diffusers' negative_crops_coords_top_left default (0, 0), not the prompt's crop (the
    # official demo copies the prompt's sizes and crop into the unconditional batch; its refiner always uses (0, 0))
    torch.testing.assert_close(ids[0], sdxl.refiner_ids(original, (0, 0), 2.5), rtol=0, atol=0)

    schedule = sdxl.leading_timesteps(steps)
    assert (base_steps, refiner_steps) == sdxl.split_timesteps(schedule, split)
    assert base_steps + refiner_steps == schedule


def test_img2img_without_aesthetic_score_ignores_the_negative_crop(unet):
    """Pinned: StableDiffusionXLImg2ImgPipeline._get_add_time_ids without requires_aesthetics_score builds the
    negative ids from the prompt's crops_coords_top_left and drops negative_crops_coords_top_left; with it (the
    refiner), the negative crop is used. The text-to-image pipeline uses it only when both negative sizes are given."""
    args = dict(original_size=(512, 384), crops_coords_top_left=(0, 64), target_size=(128, 128), aesthetic_score=6.0,
                negative_aesthetic_score=2.5, negative_original_size=(512, 384), negative_crops_coords_top_left=(7, 7),
                negative_target_size=(128, 128), dtype=torch.float32, text_encoder_projection_dim=16)
    fake = SimpleNamespace(config=SimpleNamespace(requires_aesthetics_score=False), unet=unet)
    _, negative = StableDiffusionXLImg2ImgPipeline._get_add_time_ids(fake, **args)
    torch.testing.assert_close(negative[0], sdxl.micro_conditioning_ids((512, 384), (0, 64), (128, 128)),
                               rtol=0, atol=0)


@pytest.mark.parametrize("steps", [1, 3, 7, 30, 40, 50])
def test_leading_timesteps_are_the_sdxl_schedulers(steps):
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER)
    scheduler.set_timesteps(steps)
    assert [int(t) for t in scheduler.timesteps] == sdxl.leading_timesteps(steps)


def test_split_is_the_refiners_get_timesteps_at_every_split():
    """StableDiffusionXLImg2ImgPipeline.get_timesteps(denoising_start=f) keeps the timesteps below round(T (1 - f)):
    our refiner half, for every f on a grid of 0.01 and three step counts; the halves partition the schedule."""
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER)
    for steps in (10, 25, 40):
        scheduler.set_timesteps(steps)
        schedule = sdxl.leading_timesteps(steps)
        for f in [i / 100 for i in range(1, 100)]:
            base, refine = sdxl.split_timesteps(schedule, f)
            ref, n = StableDiffusionXLImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=scheduler), steps,
                                                                     0.3, "cpu", denoising_start=f)
            assert [int(t) for t in ref] == refine and n == len(refine), (steps, f)
            assert base + refine == schedule


def test_split_refuses_a_fraction_outside_zero_one():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(LineageError):
            sdxl.split_timesteps(sdxl.leading_timesteps(10), bad)


# --- the data side ------------------------------------------------------------------------------------------------

def test_random_crop_reports_the_corner_it_used():
    """The crop is image[..., top:top + h, left:left + w] for the corner it returns, drawn uniformly: top then left
    by torch.randint on the generator (reproducible), every admissible corner reachable, none outside."""
    image = torch.arange(5 * 7).reshape(1, 5, 7)
    g = torch.Generator().manual_seed(0)
    lefts = set()
    for _ in range(200):
        crop, (top, left) = sdxl.random_crop(image, (5, 4), g)
        assert top == 0 and 0 <= left <= 3
        assert torch.equal(crop, image[..., top:top + 5, left:left + 4])
        lefts.add(left)
    assert lefts == {0, 1, 2, 3}
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    _, corner = sdxl.random_crop(torch.zeros(1, 20, 30), (8, 8), g1)
    assert corner == (int(torch.randint(0, 13, (1,), generator=g2)), int(torch.randint(0, 23, (1,), generator=g2)))
    assert sdxl.random_crop(image, (5, 7))[1] == (0, 0)
    with pytest.raises(LineageError):
        sdxl.random_crop(image, (6, 4))


def test_buckets_and_the_nearest_one():
    """The buckets: every side a multiple of 64, within 10% of 1024^2 pixels, distinct aspect ratios (so each bucket
    is its own nearest). 512x384 (h/w 1.333) goes to 1152x896 (1.286: |log ratio| 0.0364) rather than 1152x832
    (1.385: 0.0377), and its transpose to the transposed bucket."""
    for h, w in sdxl.BUCKETS:
        assert h % 64 == 0 and w % 64 == 0 and abs(h * w / 1024 ** 2 - 1) < 0.1
        assert sdxl.nearest_bucket(h, w) == (h, w)
    assert sdxl.nearest_bucket(1024, 1024) == (1024, 1024)
    assert sdxl.nearest_bucket(512, 384) == (1152, 896)
    assert sdxl.nearest_bucket(384, 512) == (896, 1152)
    assert sdxl.nearest_bucket(100, 1000) == (576, 1728)  # wider than every bucket: the widest
    with pytest.raises(LineageError):
        sdxl.nearest_bucket(0, 10)


def test_bucket_example_records_original_size_crop_and_bucket():
    """A 512x384 image: bucket 1152x896, resized to cover it (scale 896/384: 1195x896), cropped at (top, 0) with
    0 <= top <= 43; the ids are the size before resizing, that corner, and the bucket."""
    assert sdxl.cover_size(512, 384, (1152, 896)) == (1195, 896)
    image = torch.rand(3, 512, 384, generator=torch.Generator().manual_seed(0))
    crop, ids = sdxl.bucket_example(image, torch.Generator().manual_seed(1))
    assert crop.shape == (3, 1152, 896)
    top = int(ids[2])
    assert ids[[0, 1, 3, 4, 5]].tolist() == [512, 384, 0, 1152, 896] and 0 <= top <= 43
    resized = torch.nn.functional.interpolate(image[None], size=(1195, 896), mode="bilinear", antialias=True)[0]
    torch.testing.assert_close(crop, resized[:, top:top + 1152], rtol=0, atol=0)


# --- configs and sizes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, image_size", [("sd15", 512), ("sdxl-base", 1024), ("sdxl-refiner", 1024)])
def test_unet_configs_are_diffusers_conversion_of_the_official_ones(name, image_size):
    """diffusers' own converter of the original (LDM / generative-models) YAML configs, run on ORIGINAL_UNETS, gives
    UNET_CONFIGS (keys it does not write are UNet2DConditionModel's defaults in both)."""
    original = {"model": {"params": {"network_config": {"params": sdxl.ORIGINAL_UNETS[name]},
                                     "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # image_size is deprecated there; it only sets sample_size
        converted = create_unet_diffusers_config_from_ldm(original, None, image_size=image_size)
    defaults = {k: p.default for k, p in inspect.signature(UNet2DConditionModel.__init__).parameters.items()}

    def norm(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    ours = sdxl.UNET_CONFIGS[name]
    assert {k: norm(ours.get(k, defaults[k])) for k in converted} == {k: norm(v) for k, v in converted.items()}


def test_widths_of_the_two_conditions():
    """Context 768 + 1280 = 2048 (base), 1280 (refiner: bigG only); vector 1280 + 6 x 256 = 2816 (base),
    1280 + 5 x 256 = 2560 (refiner): the official configs' context_dim and adm_in_channels."""
    base, refiner = sdxl.ORIGINAL_UNETS["sdxl-base"], sdxl.ORIGINAL_UNETS["sdxl-refiner"]
    assert sum(sdxl.TEXT_WIDTHS) == base["context_dim"] and set(refiner["context_dim"]) == {sdxl.TEXT_WIDTHS[1]}
    assert sdxl.POOLED_WIDTH + sdxl.N_IDS * sdxl.FOURIER_DIM == base["adm_in_channels"]
    assert sdxl.POOLED_WIDTH + sdxl.N_REFINER_IDS * sdxl.FOURIER_DIM == refiner["adm_in_channels"]


@pytest.fixture(scope="module")
def counts():
    return {name: sdxl.parameter_counts(config) for name, config in sdxl.UNET_CONFIGS.items()}


def _blocks_from_original(config: dict) -> int:
    """BasicTransformerBlocks implied by an original config: at every level in attention_resolutions,
    num_res_blocks attention layers down and num_res_blocks + 1 up, each transformer_depth[level] deep, plus the
    middle block's (transformer_depth[-1])."""
    mult = config["channel_mult"]
    depth = config["transformer_depth"]
    depth = [depth] * len(mult) if isinstance(depth, int) else depth
    per_level = 2 * config["num_res_blocks"] + 1
    return sum(per_level * depth[i] for i in range(len(mult)) if 2 ** i in config["attention_resolutions"]) + depth[-1]


def test_parameter_counts_are_complete_and_match_the_configs(counts):
    """Every parameter is counted once (the parts sum to diffusers' own count of the meta model), and the number of
    transformer blocks is the one the original configs imply (SD 1.5: 16, SDXL base: 70, refiner: 44)."""
    for name, c in counts.items():
        with torch.device("meta"):
            unet = UNet2DConditionModel(**sdxl.UNET_CONFIGS[name])
        assert c["total"] == sum(c["parts"].values()) == sum(p.numel() for p in unet.parameters())
        assert sum(c["transformer_by_level"].values()) == sum(c["parts"][k] for k in ("attention", "text_kv",
                                                                                       "feed_forward"))
        assert c["transformer_blocks"] == _blocks_from_original(sdxl.ORIGINAL_UNETS[name])


def test_sdxl_is_three_times_larger_mainly_from_attention(counts):
    """The paper's Table 1 (860M for SD 1.x, 2.6B for SDXL) at its rounding, the abstract's "three times larger", and
    its reason, measured: the transformer blocks grow by more than the whole U-Net does (the ResNet blocks shrink:
    one level fewer), none sits at the highest feature level, and the cross-attention keys and values of the text
    grow too."""
    old, new = counts["sd15"], counts["sdxl-base"]
    assert f"{old['total'] / 1e6:.0f}" == "860" and f"{new['total'] / 1e9:.1f}" == "2.6"
    assert 2.5 < new["total"] / old["total"] < 3.5

    def transformer(c):
        return sum(c["parts"][k] for k in ("attention", "text_kv", "feed_forward"))

    assert transformer(new) - transformer(old) > new["total"] - old["total"] > 0
    assert new["parts"]["resnet"] < old["parts"]["resnet"]
    assert new["transformer_by_level"][0] == 0 < old["transformer_by_level"][0]
    assert new["parts"]["text_kv"] > 10 * old["parts"]["text_kv"]


def test_text_kv_grows_linearly_with_the_context(counts):
    """The keys and values read the 2048-wide context: SDXL base with a 768-wide context has exactly 768/2048 of
    them and every other part unchanged, so the wider context alone accounts for 1280/2048 of SDXL's text K/V."""
    narrow = sdxl.parameter_counts(dict(sdxl.UNET_CONFIGS["sdxl-base"], cross_attention_dim=768))
    wide = counts["sdxl-base"]
    assert narrow["parts"]["text_kv"] * 2048 == wide["parts"]["text_kv"] * 768
    assert {k: v for k, v in narrow["parts"].items() if k != "text_kv"} == \
        {k: v for k, v in wide["parts"].items() if k != "text_kv"}


def test_diffusers_attention_head_dim_is_the_number_of_heads():
    """Pinned: diffusers' UNet2DConditionModel reads attention_head_dim as the number of heads (its own comment calls
    the name a mistake kept for old configs). SDXL's [5, 10, 20] are heads of 64 channels, as the original
    config's num_head_channels: 64 says."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sdxl.UNET_CONFIGS["sdxl-base"])
    attn = unet.down_blocks[2].attentions[0].transformer_blocks[0].attn1
    assert attn.heads == 20 and attn.inner_dim // attn.heads == sdxl.ORIGINAL_UNETS["sdxl-base"]["num_head_channels"]


# --- anatomy and command line -------------------------------------------------------------------------------------

def test_anatomy_trace_is_consistent():
    """The traced shapes: the context is the two encoders' widths side by side, the vector is pooled + 6 x 8 wide,
    the added embedding has the timestep embedding's shape (they are summed), no transformer at level 1, each level
    halves the feature maps, the output has the latents' shape."""
    trace = dict(sdxl.trace_sdxl_unet())
    a, b = sdxl.TINY["text_widths"]
    assert trace["text context (concatenated)"][-1] == a + b == sdxl.TINY_CONFIG["cross_attention_dim"]
    assert trace["[pooled text; Fourier features of the 6 ids]"] == (1, sdxl.TINY_CONFIG[
        "projection_class_embeddings_input_dim"])
    assert trace["added embedding (summed with the timestep's)"] == trace["timestep embedding"]
    assert "down, level 1 (ResNet only)" in trace and "down, level 2 (transformer)" in trace
    size = sdxl.TINY["latent_size"]
    for level in (1, 2, 3):
        kind = "ResNet only" if level == 1 else "transformer"
        assert trace[f"down, level {level} ({kind})"][-1] == size // 2 ** (level - 1)
    assert trace["output: eps"] == trace["latents"]


def _cli(capsys, *args):
    code = cli_main(PAPERS, ["sdxl", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_ids_buckets_splits_and_sizes(capsys, counts):
    code, out, _ = _cli(capsys, "conditioning", "--original-size", "512", "384", "--crop", "0", "64",
                        "--target-size", "1024", "1024")
    assert code == 0 and "512 384 0 64 1024 1024" in out and "1 x 2816" in out and "1 x 1280" in out
    code, out, _ = _cli(capsys, "bucket", "--size", "512", "384")
    assert code == 0 and "bucket 1152x896" in out and "resized to 1195x896" in out
    code, out, _ = _cli(capsys, "split", "--steps", "40", "--split", "0.8")
    base, refine = sdxl.split_timesteps(sdxl.leading_timesteps(40), 0.8)
    assert code == 0 and f"({len(base):3d} steps): {' '.join(map(str, base))}" in out
    assert f"({len(refine):3d} steps): {' '.join(map(str, refine))}" in out
    code, out, _ = _cli(capsys, "sizes")
    assert code == 0 and all(f"{c['total']:,}" in out for c in counts.values())
    assert f"{counts['sdxl-base']['total'] / counts['sd15']['total']:.2f}x" in out


@pytest.mark.parametrize("args, fragment", [
    (["conditioning", "--original-size", "0", "384"], "positive integer"),
    (["conditioning", "--crop", "-1", "0"], "integer >= 0"),
    (["conditioning", "--target-size", "1024"], "expected 2 arguments"),
    (["bucket"], "--size"),
    (["split", "--split", "1.5"], "between 0 and 1"),
    (["split", "--split", "0"], "between 0 and 1"),
    (["split", "--steps", "0"], "positive integer"),
    (["sizes", "--bogus"], "unrecognized"),
])
def test_cli_refuses_bad_input_in_one_line(capsys, args, fragment):
    code, out, err = _cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("refimpl: error:") and fragment in lines[0], err


def test_cli_refuses_in_a_real_process(tmp_path):
    assert_refused(refimpl("sdxl", "split", "--steps", "2000", cwd=tmp_path), "steps must be in 1..1000")
