"""Every recipe on a tiny fixture in the corpus's real layout (real file and label-file names),
written here with soundfile; plus a malformed label file per corpus (error names file and line)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from s3kit.data.manifest import get_label, load_cuts
from s3kit.data.recipes import CORPORA, RecipeError, prepare

SR = 16_000


def wav(path: Path, seconds: float = 0.25, sr: int = SR, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr)).astype(np.float32)
    sf.write(path, x, sr, format="FLAC" if path.suffix == ".flac" else "WAV")
    return path


def labels(cuts, key):
    return sorted(str(get_label(c, key)) for c in cuts)


# ---------------------------------------------------------------- IEMOCAP


def iemocap_fixture(root: Path) -> Path:
    emo = {1: [("F000", "neu"), ("M000", "exc"), ("F001", "fru"), ("M001", "ang")], 2: [("F000", "sad"), ("M000", "hap"), ("F001", "neu"), ("M001", "ang"), ("F002", "sad")]}
    for sess, utts in emo.items():
        dialog = f"Ses0{sess}F_impro01"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for i, (spk, e) in enumerate(utts):
            utt = f"{dialog}_{spk}"
            wav(root / f"Session{sess}" / "sentences" / "wav" / dialog / f"{utt}.wav", seed=i)
            lines += [f"[{i}.0000 - {i}.5000]\t{utt}\t{e}\t[2.5000, 2.5000, 2.5000]", f"C-E1:\tNeutral;\t()", ""]
        path = root / f"Session{sess}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return root


def test_iemocap_four_classes_sessions_and_folds(tmp_path):
    root = iemocap_fixture(tmp_path / "IEMOCAP_full_release")
    out = tmp_path / "out"
    splits = prepare("iemocap", root, out)
    all_cuts = splits["all"]
    # fru is dropped, exc merges into hap
    assert labels(all_cuts, "emotion") == sorted(["neu", "hap", "ang", "sad", "hap", "neu", "ang", "sad"])
    cut = next(c for c in all_cuts if c.id == "Ses01F_impro01_M000")
    assert get_label(cut, "speaker") == "Ses01M" and get_label(cut, "gender") == "male"
    assert get_label(cut, "session") == 1
    # leave-one-session-out: fold 1 tests on session 1 only; train+dev hold the rest
    assert {get_label(c, "session") for c in splits["fold1_test"]} == {1}
    assert len(splits["fold1_test"]) == 3
    # dev = round(20 % of the 5 session-2 utterances) = 1
    assert (len(splits["fold1_train"]), len(splits["fold1_dev"])) == (4, 1)
    assert {get_label(c, "session") for c in splits["fold1_dev"]} == {2}
    assert (out / "iemocap_fold2_test.jsonl.gz").exists()
    # idempotent: a second run reads the manifests back
    again = prepare("iemocap", root, out)
    assert [c.id for c in again["all"]] == [c.id for c in all_cuts]
    assert labels(load_cuts(out / "iemocap_all.jsonl.gz"), "emotion") == labels(all_cuts, "emotion")


def test_iemocap_malformed_label_line(tmp_path):
    root = iemocap_fixture(tmp_path / "IEMOCAP_full_release")
    bad = root / "Session2" / "dialog" / "EmoEvaluation" / "Ses02F_impro01.txt"
    lines = bad.read_text().splitlines()
    lines[2] = "[0.0000 - ]\tSes02F_impro01_F000\tsad"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecipeError, match=re.escape(f"{bad}:3")):
        prepare("iemocap", root, tmp_path / "out")
    assert not (tmp_path / "out" / "iemocap_all.jsonl.gz").exists()


# ---------------------------------------------------------------- Speech Commands


def speechcommands_fixture(root: Path) -> Path:
    part = root / "speech_commands_v0.01"
    test = root / "speech_commands_test_set_v0.01"
    files = {
        "yes/aaaa1111_nohash_0.wav": "train",
        "yes/bbbb2222_nohash_0.wav": "valid",
        "yes/cccc3333_nohash_0.wav": "test-list",
        "no/aaaa1111_nohash_0.wav": "train",
        "bed/aaaa1111_nohash_0.wav": "train",
        "bed/bbbb2222_nohash_0.wav": "valid",
    }
    for i, rel in enumerate(files):
        wav(part / rel, 1.0, seed=i)
    wav(part / "_background_noise_" / "white_noise.wav", 3.5, seed=10)
    wav(part / "_background_noise_" / "running_tap.wav", 2.2, seed=11)
    (part / "validation_list.txt").write_text("".join(f"{r}\n" for r, s in files.items() if s == "valid"))
    (part / "testing_list.txt").write_text("".join(f"{r}\n" for r, s in files.items() if s == "test-list"))
    wav(test / "yes" / "dddd4444_nohash_0.wav", 1.0, seed=20)
    wav(test / "_unknown_" / "bed_dddd4444_nohash_0.wav", 1.0, seed=21)
    wav(test / "_silence_" / "silence_0.wav", 1.0, seed=22)
    return root


def test_speechcommands_superb_twelve_classes(tmp_path):
    root = speechcommands_fixture(tmp_path / "sc")
    splits = prepare("speechcommands_superb", root, tmp_path / "out")
    # train: yes, no, bed -> _unknown_, and white_noise (3.5 s) -> 3 whole 1 s _silence_ windows
    assert labels(splits["train"], "keyword") == sorted(["yes", "no", "_unknown_"] + ["_silence_"] * 3)
    # valid: yes, bed -> _unknown_, running_tap (2.2 s) -> 2 windows, as lhotse puts it in valid
    assert labels(splits["valid"], "keyword") == sorted(["yes", "_unknown_", "_silence_", "_silence_"])
    assert labels(splits["test"], "keyword") == ["_silence_", "_unknown_", "yes"]
    assert all(abs(c.duration - 1.0) < 1e-6 for c in splits["train"])
    yes = next(c for c in splits["train"] if get_label(c, "keyword") == "yes")
    assert get_label(yes, "speaker") == "aaaa1111"
    assert (tmp_path / "out" / "speechcommands_superb_test.jsonl.gz").exists()


def test_speechcommands_plain_keeps_words(tmp_path):
    root = speechcommands_fixture(tmp_path / "sc")
    splits = prepare("speechcommands", root, tmp_path / "out")
    assert labels(splits["train"], "keyword") == ["_background_noise_", "bed", "no", "yes"]


def test_speechcommands_malformed_list(tmp_path):
    root = speechcommands_fixture(tmp_path / "sc")
    lst = root / "speech_commands_v0.01" / "validation_list.txt"
    lst.write_text("yes/bbbb2222_nohash_0.wav\nbed bbbb2222_nohash_0.wav\n")
    with pytest.raises(RecipeError, match=re.escape(f"{lst}:2")):
        prepare("speechcommands_superb", root, tmp_path / "out")


# ---------------------------------------------------------------- Fluent Speech Commands

FSC_HEADER = ",path,speakerId,transcription,action,object,location\n"


def fsc_fixture(root: Path) -> Path:
    rows = {
        "train": [("spkA", "u1", "Turn on the lights in the kitchen", "activate", "lights", "kitchen"), ("spkB", "u2", "Change language", "change language", "none", "none")],
        "valid": [("spkC", "u3", "Volume up", "increase", "volume", "none")],
        "test": [("spkD", "u4", "Stop the music", "deactivate", "music", "none")],
    }
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        lines = [FSC_HEADER]
        for i, (spk, uid, text, a, o, loc) in enumerate(items):
            rel = f"wavs/speakers/{spk}/{uid}.wav"
            wav(root / rel, seed=i)
            lines.append(f"{i},{rel},{spk},{text},{a},{o},{loc}\n")
        (root / "data" / f"{split}_data.csv").write_text("".join(lines))
    (root / "data" / "speaker_demographics.csv").write_text(
        "speakerId,Self-reported fluency level ,First Language spoken,Current language used for work/school,gender,ageRange\n"
        "spkA,native,English (United States),English (United States),female,22-40\n"
    )
    return root


def test_fsc_intent_speaker_demographics(tmp_path):
    root = fsc_fixture(tmp_path / "fluent_speech_commands_dataset")
    splits = prepare("slu", root, tmp_path / "out")
    assert {s: len(c) for s, c in splits.items()} == {"train": 2, "valid": 1, "test": 1}
    cut = next(c for c in splits["train"] if get_label(c, "speaker") == "spkA")
    assert get_label(cut, "intent") == {"action": "activate", "object": "lights", "location": "kitchen"}
    assert get_label(cut, "text") == "Turn on the lights in the kitchen"
    assert get_label(cut, "gender") == "female" and get_label(cut, "age") == "22-40"
    reread = load_cuts(tmp_path / "out" / "slu_test.jsonl.gz")
    assert get_label(next(iter(reread)), "intent")["object"] == "music"


def test_fsc_malformed_csv(tmp_path):
    root = fsc_fixture(tmp_path / "fsc")
    bad = root / "data" / "valid_data.csv"
    bad.write_text(FSC_HEADER + "0,wavs/speakers/spkC/u3.wav,spkC,Volume up,increase\n")
    with pytest.raises(RecipeError, match=re.escape(f"{bad}:2")):
        prepare("slu", root, tmp_path / "out")


# ---------------------------------------------------------------- LibriSpeech


def librispeech_fixture(root: Path) -> Path:
    for part, spk, chap in (("train-clean-100", "19", "198"), ("dev-clean", "84", "121123")):
        d = root / part / spk / chap
        lines = []
        for u in range(2):
            uid = f"{spk}-{chap}-{u:04d}"
            wav(d / f"{uid}.flac", seed=u)
            lines.append(f"{uid} HELLO WORLD NUMBER {u}\n")
        (d / f"{spk}-{chap}.trans.txt").write_text("".join(lines))
    (root / "SPEAKERS.TXT").write_text(
        "; ID  |SEX| SUBSET           |MINUTES| NAME\n19   | F | train-clean-100  | 25.19 | Kara Shallenberg\n84   | F | dev-clean        |  8.02 | Christie Nowak\n"
    )
    return root


def test_librispeech_wraps_lhotse(tmp_path):
    root = librispeech_fixture(tmp_path / "LibriSpeech")
    splits = prepare("librispeech", root, tmp_path / "out")
    assert sorted(splits) == ["dev-clean", "train-clean-100"]
    cut = next(c for c in splits["train-clean-100"] if c.id.endswith("0001"))
    assert get_label(cut, "text") == "HELLO WORLD NUMBER 1"
    assert get_label(cut, "speaker") == "19" and get_label(cut, "gender") == "female"
    assert cut.load_audio().shape[-1] == 4000
    assert (tmp_path / "out" / "librispeech_dev-clean.jsonl.gz").exists()


def test_librispeech_malformed_transcript(tmp_path):
    root = librispeech_fixture(tmp_path / "LibriSpeech")
    bad = root / "dev-clean" / "84" / "121123" / "84-121123.trans.txt"
    bad.write_text("84-121123-0000 HELLO\n84-121123-0001\n")
    with pytest.raises(RecipeError, match=re.escape(f"{bad}:2")):
        prepare("librispeech", root, tmp_path / "out")


# ---------------------------------------------------------------- VoxCeleb1

VOX_HEADER = "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"


def voxceleb_fixture(root: Path, iden: bool = True) -> Path:
    meta = [("id10001", "A.J._Buckley", "m", "Ireland", "dev"), ("id10002", "A.R._Rahman", "m", "India", "dev"), ("id10270", "Eartha_Kitt", "f", "USA", "test")]
    (root).mkdir(parents=True, exist_ok=True)
    (root / "vox1_meta.csv").write_text(VOX_HEADER + "".join("\t".join(m) + "\n" for m in meta))
    iden_lines = []
    for spk, *_ in meta:
        for u, which in enumerate("123"):
            rel = f"{spk}/vid{u}/0000{u + 1}.wav"
            wav(root / "wav" / rel, seed=u)
            iden_lines.append(f"{which} {rel}\n")
    if iden:
        (root / "iden_split.txt").write_text("".join(iden_lines))
    return root


def test_voxceleb_identification_split(tmp_path):
    root = voxceleb_fixture(tmp_path / "voxceleb1")
    splits = prepare("voxceleb", root, tmp_path / "out")
    assert sorted(splits) == ["dev", "test", "train"]
    for cuts in splits.values():  # SID: every speaker in every split
        assert labels(cuts, "speaker") == ["id10001", "id10002", "id10270"]
    kitt = next(c for c in splits["test"] if get_label(c, "speaker") == "id10270")
    assert get_label(kitt, "gender") == "female"


def test_voxceleb_without_iden_split_uses_lhotse_split(tmp_path):
    root = voxceleb_fixture(tmp_path / "voxceleb1", iden=False)
    splits = prepare("voxceleb", root, tmp_path / "out")
    assert sorted(splits) == ["test", "train"]
    assert set(labels(splits["test"], "speaker")) == {"id10270"}


def test_voxceleb_malformed_meta(tmp_path):
    root = voxceleb_fixture(tmp_path / "voxceleb1")
    (root / "vox1_meta.csv").write_text(VOX_HEADER + "id10001\tA.J._Buckley\tm\tIreland\tdev\nid10002 A.R._Rahman m India dev\n")
    with pytest.raises(RecipeError, match=re.escape(f"{root / 'vox1_meta.csv'}:3")):
        prepare("voxceleb", root, tmp_path / "out")


# ---------------------------------------------------------------- MUSAN, noise folder


def musan_fixture(root: Path) -> Path:
    wav(root / "music" / "fma" / "music-fma-0000.wav")
    wav(root / "music" / "fma" / "music-fma-0001.wav", seed=1)
    (root / "music" / "fma" / "ANNOTATIONS").write_text("music-fma-0000 rock,pop Y Someone\nmusic-fma-0001 classical N Other\n")
    wav(root / "noise" / "free-sound" / "noise-free-sound-0000.wav", seed=2)
    wav(root / "speech" / "librivox" / "speech-librivox-0000.wav", seed=3)
    return root


def test_musan_parts(tmp_path):
    splits = prepare("musan", musan_fixture(tmp_path / "musan"), tmp_path / "out")
    assert {p: len(c) for p, c in splits.items()} == {"music": 2, "speech": 1, "noise": 1}
    rock = next(c for c in splits["music"] if c.id == "music-fma-0000")
    assert rock.supervisions[0].custom["genres"] == ["rock", "pop"]
    assert (tmp_path / "out" / "musan_noise.jsonl.gz").exists()


def test_musan_malformed_annotations(tmp_path):
    root = musan_fixture(tmp_path / "musan")
    bad = root / "music" / "fma" / "ANNOTATIONS"
    bad.write_text("music-fma-0000 rock,pop Y Someone\nmusic-fma-0001\n")
    with pytest.raises(RecipeError, match=re.escape(f"{bad}:2")):
        prepare("musan", root, tmp_path / "out")


def test_noise_folder(tmp_path):
    root = tmp_path / "audioset"
    wav(root / "balanced_train_segments" / "--4gqARaEJE.wav", 0.5)
    wav(root / "eval_segments" / "--4gqARaEJE.flac", 0.5, seed=1)  # same stem, other folder: ids stay unique
    wav(root / "clip.wav", 0.5, sr=44_100, seed=2)
    (root / "README.txt").write_text("not audio")
    splits = prepare("noise", root, tmp_path / "out")
    cuts = splits["all"]
    assert len(cuts) == 3 and len({c.id for c in cuts}) == 3
    assert labels(cuts, "noise_class") == [".", "balanced_train_segments", "eval_segments"]
    assert (tmp_path / "out" / "noise_all.jsonl.gz").exists()


def test_noise_folder_corrupt_file(tmp_path):
    root = tmp_path / "noise"
    wav(root / "ok.wav")
    (root / "broken.wav").write_bytes(b"RIFF....not really a wav")
    with pytest.raises(RecipeError, match="broken.wav"):
        prepare("noise", root, tmp_path / "out")


# ---------------------------------------------------------------- SpEAT


def test_speat_stimulus_csv(tmp_path):
    root = tmp_path / "speat"
    for name in ("us_01", "us_02", "kr_01", "kr_02", "pleasant_01", "unpleasant_01"):
        wav(root / "clips" / f"{name}.wav")
    (root / "us_korean.csv").write_text(
        "path,concept,group,gender\n"
        "clips/us_01.wav,US,target_x,female\nclips/us_02.wav,US,target_x,male\n"
        "clips/kr_01.wav,Korean,target_y,female\nclips/kr_02.wav,Korean,target_y,m\n"
        "clips/pleasant_01.wav,pleasant,attribute_a,\nclips/unpleasant_01.wav,unpleasant,attribute_b,\n"
    )
    splits = prepare("speat", root, tmp_path / "out")
    cuts = splits["us_korean"]
    assert labels(cuts, "concept") == ["Korean", "Korean", "US", "US", "pleasant", "unpleasant"]
    assert labels(cuts, "group") == ["attribute_a", "attribute_b", "target_x", "target_x", "target_y", "target_y"]
    assert labels(cuts, "gender") == ["None", "None", "female", "female", "male", "male"]
    assert (tmp_path / "out" / "speat_us_korean.jsonl.gz").exists()


def test_speat_malformed_row(tmp_path):
    root = tmp_path / "speat"
    wav(root / "a.wav")
    bad = root / "set.csv"
    bad.write_text("path,concept,group\na.wav,young,target_x\nb.wav,,target_y\n")
    with pytest.raises(RecipeError, match=re.escape(f"{bad}:3")):
        prepare("speat", bad, tmp_path / "out")


def test_registry_and_unknown_corpus(tmp_path):
    assert {"librispeech", "speechcommands", "speechcommands_superb", "slu", "voxceleb", "musan", "iemocap", "noise", "speat"} <= set(CORPORA)
    with pytest.raises(RecipeError, match="did you mean 'iemocap'"):
        prepare("iemocp", tmp_path, tmp_path / "out")


def test_cli_prepare(tmp_path, capsys):
    import argparse

    from s3kit.commands import data as cmd

    root = iemocap_fixture(tmp_path / "IEMOCAP_full_release")
    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(["data", "prepare", "iemocap", str(root), str(tmp_path / "out"), "--test-sessions", "2"])
    assert args.func(args) == 0
    assert "iemocap fold2_test: 5 cuts" in capsys.readouterr().out
    assert (tmp_path / "out" / "iemocap_fold2_train.jsonl.gz").exists()
    assert not (tmp_path / "out" / "iemocap_fold1_train.jsonl.gz").exists()
