"""refimpl.dreambooth: the extended vocabulary (tokenisation round trip, the new row leaves old words exact), the
prior-preservation loss on a hand case, the CLI's refusals, and learning on the cached quick runs of
figures/zoo/dreambooth.py (fine-tuned once, shared with the figures)."""

import math

import pytest
import torch

from refimpl import dreambooth, ldm, personalization
from refimpl.captions import VOCAB
from refimpl.captions import tokenize as base_tokenize
from refimpl.core import LineageError
from tests.clitools import assert_refused, refimpl


def _untrained_denoiser(seed: int = 0) -> ldm.LatentDenoiser:
    torch.manual_seed(seed)
    return ldm.LatentDenoiser(**ldm.train_config("quick")["diffusion"]["model"]).eval()


# --- vocabulary ------------------------------------------------------------------------

def test_new_word_tokenisation_round_trip():
    """The identifier gets id len(VOCAB); captions without it tokenise exactly as refimpl.captions.tokenize does;
    detokenize inverts tokenize."""
    words = (dreambooth.IDENTIFIER,)
    tokens = personalization.tokenize([dreambooth.INSTANCE_PROMPT, dreambooth.CLASS_PROMPT, ""], words)
    assert tokens[0].tolist() == [1, VOCAB.index("the"), VOCAB.index("digit"), len(VOCAB), VOCAB.index("three")]
    assert torch.equal(tokens[1:], base_tokenize([dreambooth.CLASS_PROMPT, ""]))
    assert personalization.detokenize(tokens, words) == [dreambooth.INSTANCE_PROMPT, dreambooth.CLASS_PROMPT, ""]
    two = personalization.tokenize(["sks zz three"], ("sks", "zz"))
    assert two[0, 1:4].tolist() == [len(VOCAB), len(VOCAB) + 1, VOCAB.index("three")]


@pytest.mark.parametrize("words, text, fragment", [
    (("three",), "three", "not in the vocabulary"),  # a new word must be new
    (("sks",), "the digit xyz three", "unknown word 'xyz'"),
    (("sks",), "the digit sks three three", "at most 4 fit"),
])
def test_tokenize_refuses(words, text, fragment):
    with pytest.raises(LineageError, match=fragment):
        personalization.tokenize([text], words)


def test_added_row_leaves_old_words_exact():
    """After add_words the caption features of captions without the new word are bit-for-bit those of the base
    model (the base rows are read unchanged), and the new id reads the new row."""
    model = _untrained_denoiser()
    tokens = base_tokenize(["the digit three", "a handwritten 7"])
    before = model.encode_text(tokens)[0]
    row = torch.randn(1, model.width)
    personalization.add_words(model, row)
    assert torch.equal(model.encode_text(tokens)[0], before)
    assert torch.equal(model.text.token(torch.tensor([len(VOCAB)])), row)


# --- loss ------------------------------------------------------------------------------

def test_loss_is_instance_plus_lambda_prior():
    """Eq. (2) on a hand case: a linear 'denoiser' eps(z_t, t, tokens) = 0.5 z_t + 0.01 * tokens.sum(); the loss
    with lambda equals L_simple(instance) + lambda * L_simple(prior) computed by hand from the same generator
    draws; lambda = 0 is the instance term alone. Tolerance: both sides are float32 means of at most 128 squares
    that may be summed in a different order, so they agree to n * 2^-24 ~ 1e-5 relative."""
    from refimpl.schedules import make_schedule, q_sample

    schedule = make_schedule("linear", 1000)
    model = lambda z_t, t, tokens: 0.5 * z_t + 0.01 * tokens.sum(1).float()[:, None, None, None]  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    instance = (torch.randn(3, 2, 4, 4, generator=gen), personalization.tokenize(["the digit sks three"] * 3, ("sks",)))
    prior = (torch.randn(4, 2, 4, 4, generator=gen), base_tokenize(["the digit three"] * 4))

    def by_hand(z, tokens, generator):
        t = torch.randint(0, 1000, (z.shape[0],), generator=generator)
        eps = torch.randn(z.shape, generator=generator)
        return ((eps - model(q_sample(z, t, eps, schedule), t, tokens)) ** 2).mean()

    for lam in (1.0, 0.3):
        loss = dreambooth.dreambooth_loss(model, instance, prior, schedule, lam, torch.Generator().manual_seed(1))
        gen = torch.Generator().manual_seed(1)
        expected = by_hand(*instance, gen) + lam * by_hand(*prior, gen)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    alone = dreambooth.dreambooth_loss(model, instance, prior, schedule, 0.0, torch.Generator().manual_seed(1))
    assert alone.item() == pytest.approx(by_hand(*instance, torch.Generator().manual_seed(1)).item(), rel=1e-5)


# --- learning on the cached quick runs ------------------------------------------------------

@pytest.fixture(scope="module")
def evaluation():
    from figures.zoo.dreambooth import evaluation

    return evaluation("quick")


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), values.std().item() / math.sqrt(values.numel())


def test_identifier_carries_the_writers_slant(evaluation):
    """"the digit sks three" after DreamBooth (lambda = 1) leans at least half way from the base model's threes to
    the subject's mean skew: mean - 3 SE > midpoint (N = 100 samples; SE = sd / sqrt(N); the subject's 5 images are
    fixed, their mean is exact)."""
    from refimpl.styles import skew

    subject = skew(evaluation["subject"]).mean().item()
    base, _ = _mean_se(skew(evaluation["base_class"]))
    tuned, se = _mean_se(skew(evaluation["prior_instance"]))
    assert tuned - 3 * se > (base + subject) / 2, (tuned, se, base, subject)


def test_prior_preservation_keeps_the_class_prompt(evaluation):
    """Language drift (Sec. 4.2): without the prior loss, "the digit three" (no identifier) leans too; with it, it
    stays closer to the base model's threes. Paired on the same z_T: the difference of the absolute shifts
    |d_prior| - |d_no_prior| (per sample) must be negative by more than 3 SE of its mean."""
    from refimpl.styles import skew

    base = skew(evaluation["base_class"])
    shift = (skew(evaluation["prior_class"]) - base).abs() - (skew(evaluation["no_prior_class"]) - base).abs()
    mean, se = _mean_se(shift)
    assert mean + 3 * se < 0, (mean, se)


# --- command line ----------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["train", "--base", "missing", "--out", "db"], "missing"),
    (["train", "--base", "b", "--out", "db", "--prior-weight", "-1"], "prior-weight"),
    (["train", "--base", "b", "--out", "db", "--steps", "0"], "steps"),
    (["sample", "--base", "b", "--ckpt", "missing", "--caption", "the digit sks three", "--out", "x.png"], "missing"),
    (["sample", "--base", "b", "--ckpt", "c", "--caption", "three", "--out", "x.txt"], ".png"),
])
def test_cli_refuses_bad_input(tmp_path, args, fragment):
    assert_refused(refimpl("dreambooth", *args, cwd=tmp_path), fragment)


def test_cli_refuses_a_checkpoint_of_the_other_method(tmp_path):
    """A Textual Inversion checkpoint is not a DreamBooth one (and vice versa): one line, exit 2."""
    from figures.zoo.ldm import ldm_checkpoint
    from figures.zoo.textual_inversion import ti_checkpoint

    result = refimpl("dreambooth", "sample", "--base", str(ldm_checkpoint("quick")), "--ckpt",
                     str(ti_checkpoint("quick")), "--caption", "the digit three", "--out", "x.png", cwd=tmp_path)
    assert_refused(result)
