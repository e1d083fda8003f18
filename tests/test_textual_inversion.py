"""refimpl.textual_inversion: only the new embedding v* is trained (every other weight bit-for-bit unchanged), it
starts from the coarse descriptor's embedding, the CLI's refusals, and learning on the cached quick run of
figures/zoo/textual_inversion.py (trained once, shared with the figures)."""

import math

import pytest
import torch

from refimpl import ldm, textual_inversion
from refimpl.captions import VOCAB
from tests.clitools import assert_refused, refimpl


@pytest.fixture(scope="module")
def base_run():
    from figures.zoo.ldm import ldm_checkpoint

    return ldm_checkpoint("quick")


def test_only_the_new_embedding_changes(base_run):
    """Sec. 3: the text-to-image model stays frozen. After 5 steps of inversion on the cached quick LDM every base
    parameter and buffer is bitwise equal to the base run's, the only trainable tensor is v* (width numbers), and
    v* has moved away from its initialisation, the embedding of "three"."""
    _, base, _, _ = ldm.load(base_run)
    config = textual_inversion.train_config("quick", steps=5)
    _, model, _, _, _ = textual_inversion.train(config, base_run, progress=False)
    trained = model.state_dict()
    new = trained.pop("text.token.new")
    renamed = {k.replace("text.token.base.", "text.token."): v for k, v in trained.items()}
    assert renamed.keys() == base.state_dict().keys()
    assert all(torch.equal(renamed[k], v) for k, v in base.state_dict().items())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0].numel() == model.width == new.numel()
    init = base.text.token.weight[VOCAB.index(textual_inversion.INIT_WORD)]
    assert not torch.equal(new[0], init)


@pytest.fixture(scope="module")
def evaluation():
    from figures.zoo.textual_inversion import evaluation

    return evaluation("quick")


def test_new_word_leans_toward_the_subject(evaluation):
    """Samples of "the digit s*" lean further right (toward the subject's skew, about +0.44) than "the digit three"
    from the same z_T: the paired per-sample difference has mean > 3 SE (N = 100; SE = sd / sqrt(N))."""
    from refimpl.styles import skew

    diff = skew(evaluation["word"]) - skew(evaluation["plain"])
    mean, se = diff.mean().item(), diff.std().item() / math.sqrt(diff.numel())
    assert mean > 3 * se, (mean, se)


def test_new_word_stays_among_the_shapes_the_model_can_draw(evaluation):
    """v* started from "three" and the subject is slanted threes; the frozen model can only pick among shapes it
    already draws: the upright 3 and the slanted 7. The digits classifier reads most samples of "the digit s*"
    as 3 or 7 (rate - 3 binomial SE > 1/2), and reads them as 3 far above chance (rate - 3 SE > 1/10), N = 100.
    (With the dependencies of earlier builds ~95 % read as 3; with today's, the same code gives ~50 % 3 and
    ~25 % 7: how far one word moves this small model is not stable, and the page says so.)"""
    from refimpl.digits_eval import classifier

    n = evaluation["word"].shape[0]
    with torch.no_grad():
        read = classifier()(evaluation["word"].clamp(-1, 1)).argmax(1)
    for p, bar in (((read == 3) | (read == 7)).float().mean().item(), 0.5), ((read == 3).float().mean().item(), 0.1):
        assert p - 3 * math.sqrt(p * (1 - p) / n) > bar, (p, bar, torch.bincount(read, minlength=10).tolist())


@pytest.mark.parametrize("args, fragment", [
    (["train", "--base", "missing", "--out", "ti"], "missing"),
    (["train", "--base", "b", "--out", "ti", "--preset", "huge"], "huge"),
    (["sample", "--base", "b", "--ckpt", "c", "--caption", "the digit s*", "--out", "x.png", "--n", "0"], "n"),
])
def test_cli_refuses_bad_input(tmp_path, args, fragment):
    assert_refused(refimpl("textual-inversion", *args, cwd=tmp_path), fragment)


def test_cli_refuses_unknown_word_and_other_checkpoint(tmp_path, base_run):
    """A caption with a word the run did not learn, and a DreamBooth checkpoint given to textual-inversion."""
    from figures.zoo.dreambooth import dreambooth_checkpoint
    from figures.zoo.textual_inversion import ti_checkpoint

    common = ["sample", "--base", str(base_run), "--out", "x.png", "--n", "2"]
    result = refimpl("textual-inversion", *common, "--ckpt", str(ti_checkpoint("quick")), "--caption", "the sks",
                     cwd=tmp_path)
    assert_refused(result, "unknown word 'sks'")
    result = refimpl("textual-inversion", *common, "--ckpt", str(dreambooth_checkpoint("quick")), "--caption", "s*",
                     cwd=tmp_path)
    assert_refused(result)
