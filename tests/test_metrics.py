"""Probing metrics against hand-computed values."""

import pytest
import torch

from s3kit.eval import metrics
from s3kit.eval.heads import ctc_loss, slot_argmax, slot_cross_entropy


@pytest.mark.parametrize(
    "ref,hyp,dist",
    [
        ("", "", 0),
        ("abc", "abc", 0),
        ("abc", "", 3),  # 3 deletions
        ("", "ab", 2),  # 2 insertions
        ("kitten", "sitting", 3),  # k->s, e->i, +g
        ("flaw", "lawn", 2),  # -f, +n
        ("intention", "execution", 5),
    ],
)
def test_edit_distance_known_cases(ref, hyp, dist):
    assert metrics.edit_distance(list(ref), list(hyp)) == dist
    assert metrics.edit_distance(list(hyp), list(ref)) == dist  # symmetric


def test_per_is_corpus_level():
    # utt1: "sil ah b" vs "sil b": 1 deletion / 3; utt2: "k ae t" vs "k ae t s": 1 insertion / 3 -> 2/6
    assert metrics.per(["sil ah b", "k ae t"], ["sil b", "k ae t s"]) == pytest.approx(2 / 6)
    # a substitution on a 1-phone ref and a perfect 4-phone utterance: 1/5, not mean(1, 0) = 0.5
    assert metrics.per(["aa", "b c d e"], ["iy", "b c d e"]) == pytest.approx(1 / 5)


def test_wer_hand_computed():
    ref = ["the cat sat on the mat", "hello world"]
    hyp = ["the cat sit on mat", "hello world again"]
    # utt1: sat->sit (S) + deleted "the" (D) = 2 of 6; utt2: one insertion of 2 -> 3 / 8
    assert metrics.wer(ref, hyp) == pytest.approx(3 / 8)
    with pytest.raises(ValueError):
        metrics.wer([""], ["x"])


def test_accuracy_and_all_slots():
    assert metrics.accuracy(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])) == pytest.approx(0.75)
    pred = torch.tensor([[0, 1, 2], [0, 1, 2], [1, 1, 2]])
    target = torch.tensor([[0, 1, 2], [0, 0, 2], [1, 1, 2]])
    assert metrics.all_slots_accuracy(pred, target) == pytest.approx(2 / 3)  # one slot wrong fails the item


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks():
    # frame argmaxes: [1 1 0 1 2 2 0 0] -> merge repeats -> 1 0 1 2 0 -> drop blanks -> [1, 1, 2]
    best = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 0], [3, 3, 3, 0, 0, 0, 0, 0]])
    logits = torch.nn.functional.one_hot(best, 4).float()
    assert metrics.ctc_greedy_decode(logits, torch.tensor([8, 2])) == [[1, 1, 2], [3]]


def test_slot_cross_entropy_sums_slots():
    logits = torch.zeros(1, 5)  # slots of size 2 and 3, uniform -> CE = log 2 + log 3
    loss = slot_cross_entropy(logits, torch.tensor([[1, 2]]), [2, 3])
    assert loss.item() == pytest.approx(float(torch.log(torch.tensor(6.0))), rel=1e-6)
    logits = torch.tensor([[0.0, 5.0, 1.0, 0.0, 9.0]])
    assert slot_argmax(logits, [2, 3]).tolist() == [[1, 2]]


def test_ctc_loss_hand_computed():
    # T=1, V=2, target [1]: the only alignment is "1", loss = -log p(1) / len(target)
    logits = torch.log(torch.tensor([[[0.25, 0.75]]]))
    loss = ctc_loss(logits, torch.tensor([1]), [torch.tensor([1])])
    assert loss.item() == pytest.approx(-torch.log(torch.tensor(0.75)).item(), rel=1e-5)


def _reference_levenshtein(ref, hyp):
    """The former pure-Python dynamic programme, kept as the parity reference."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def test_edit_distance_matches_the_dynamic_programme():
    import random

    rng = random.Random(0)
    phones = ["aa", "iy", "s", "sh", "ə", "ɪ", "t", "tʃ"]  # multi-character and non-ASCII tokens
    for _ in range(300):
        ref = [rng.choice(phones) for _ in range(rng.randint(0, 12))]
        hyp = [rng.choice(phones) for _ in range(rng.randint(0, 12))]
        assert metrics.edit_distance(ref, hyp) == _reference_levenshtein(ref, hyp)
        assert metrics.edit_distance(" ".join(ref), " ".join(hyp)) == _reference_levenshtein(" ".join(ref), " ".join(hyp))
