"""The feature cache's key: everything that changes features, nothing that does not."""

import torch
from lhotse import CutSet

from s3kit import load_upstream
from s3kit.eval.features_cache import extract_features, manifest_identity, upstream_identity
from s3kit.testing import tone_cuts


def test_options_in_non_persistent_buffers_and_sub_modules_change_the_key(tmp_path):
    cuts = tone_cuts(tmp_path / "wav", n=3)
    # LogMel keeps f_min / f_max only in its filterbank, a non-persistent buffer
    default, narrow = load_upstream("mel"), load_upstream("mel", f_min=0, f_max=4000)
    assert upstream_identity(default) != upstream_identity(narrow)
    assert upstream_identity(default) == upstream_identity(load_upstream("mel"))
    a = extract_features(default, cuts, tmp_path / "cache", progress=False)
    b = extract_features(narrow, cuts, tmp_path / "cache", progress=False)
    assert a.directory != b.directory
    cut = cuts[0]
    with torch.no_grad():  # each entry holds its own upstream's features
        wav = torch.from_numpy(cut.load_audio()[0]).float()[None]
        direct = narrow(wav).pooled()[0]
    assert torch.allclose(b.get(cut.id), direct, rtol=1e-3, atol=1e-2)
    assert (a.get(cut.id) - b.get(cut.id)).abs().max() > 1.0
    # Fbank's scale is a plain attribute of the feature sub-module, in no tensor at all
    assert upstream_identity(load_upstream("fbank")) != upstream_identity(load_upstream("fbank", scale=1.0))
    assert upstream_identity(load_upstream("fbank")) != upstream_identity(load_upstream("fbank", snip_edges=True))


def test_train_mode_does_not_change_the_key():
    up = load_upstream("fbank")
    key = upstream_identity(up)
    assert upstream_identity(up.train()) == key


def test_same_in_memory_cutset_twice_hits_the_cache(tmp_path):
    cuts = tone_cuts(tmp_path / "wav", n=4)
    before = manifest_identity(cuts)
    up = load_upstream("fbank")
    first = extract_features(up, cuts, tmp_path / "cache", progress=False)
    # any lhotse sampler (a training loader over the same in-memory cuts) writes
    # custom["dataloading_info"] into these very cut objects
    from s3kit.data.loader import make_loader

    list(make_loader(cuts, max_duration=60.0, shuffle=False))
    assert any((c.custom or {}).get("dataloading_info") for c in cuts)
    assert manifest_identity(cuts) == before
    second = extract_features(up, cuts, tmp_path / "cache", progress=False)
    assert second.directory == first.directory
    assert len(list((tmp_path / "cache").glob("*/index.json"))) == 1
    # a real custom field still counts
    changed = CutSet.from_cuts(c.with_custom("gain", 2.0) for c in cuts)
    assert manifest_identity(changed) != before


def test_manifest_identity_of_a_file_is_remembered_until_the_file_changes(tmp_path):
    from s3kit.data.manifest import save_cuts
    from s3kit.eval import features_cache

    cuts = tone_cuts(tmp_path / "wav", n=4)
    path = save_cuts(cuts, tmp_path / "m.jsonl.gz")
    first = features_cache.manifest_identity_of(path)
    assert first == manifest_identity(cuts)
    calls = []
    real = features_cache.manifest_identity
    features_cache.manifest_identity = lambda c: calls.append(1) or real(c)
    try:
        assert features_cache.manifest_identity_of(path) == first and not calls  # remembered
        save_cuts(CutSet.from_cuts(list(cuts)[:3]), path)  # rewritten: other size and mtime
        assert features_cache.manifest_identity_of(path) != first and calls == [1]
    finally:
        features_cache.manifest_identity = real
