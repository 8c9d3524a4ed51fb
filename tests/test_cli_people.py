"""What a person needs around add-concept: `concepts` says what is learned and where its
files are, `vocab` lists the words an --init can use, add-concept notes how an image
is learned and how an init word is split."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from cli_helpers import cf
from conceptforge.engine.backbone import ModelSource, resolve_source
from conceptforge.engine.export import export_concepts
from conceptforge.manifest import MANIFEST
from conceptforge.shapes.world import vocabulary

RUN_OK = "20250101-120000-em"
RUN_FAILED = "20250102-090000-em"


def _text(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _image(path: Path, size: tuple[int, int], colour=(200, 30, 30)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
def proj(tmp_path) -> Path:
    """A project on the built-in model with <me> and <cat> on one image and <bg> on another."""
    root = tmp_path / "proj"
    assert cf("init", root).exit_code == 0
    one, two = _image(tmp_path / "one.png", (64, 64)), _image(tmp_path / "two.png", (64, 64), (10, 10, 200))
    for args in ((one, "--token", "<me>", "--init", "circle"), (one, "--token", "<cat>", "--init", "star"), (two, "--token", "<bg>", "--background")):
        r = cf("add-concept", root, *args)
        assert r.exit_code == 0, r.output
    return root


def _learned(proj: Path, tokens: list[str], finetune: str = "lora", model: str = "builtin:tiny-shapes") -> None:
    """concepts/ as a finished learn leaves it (embeddings, index, LoRA file) and its run folder."""
    gen = torch.Generator().manual_seed(0)
    export_concepts(proj / "concepts", {t: 0.2 * torch.randn(128, generator=gen) for t in tokens}, None, "none", model, RUN_OK)
    index = json.loads((proj / "concepts" / "concepts.json").read_text())
    index["finetune"] = finetune
    (proj / "concepts" / "concepts.json").write_text(json.dumps(index))
    if finetune == "lora":
        (proj / "concepts" / "pytorch_lora_weights.safetensors").write_bytes(b"lora")
    _run(proj, RUN_OK, {"status": "finished"})


def _run(proj: Path, run_id: str, state: dict) -> None:
    (proj / "runs" / run_id).mkdir(parents=True)
    (proj / "runs" / run_id / "state.json").write_text(json.dumps(state))


# -- concepts ----------------------------------------------------------------------------


def test_concepts_before_learning_says_nothing_is_learned(proj):
    data = _json(cf("concepts", proj, "--json"))
    assert [(c["token"], c["learned"], c["run"], c["files"]) for c in data["concepts"]] == [
        ("<me>", False, None, []), ("<cat>", False, None, []), ("<bg>", False, None, []),
    ]
    assert data["index"] is None and data["weights"] is None and data["exports"] == [] and data["last_run"] is None
    r = cf("concepts", proj)
    assert r.exit_code == 0, r.output
    assert f"Not learned yet: <me>, <cat>, <bg>; `conceptforge learn {proj}` learns them." in _text(r)
    assert "Learned in run" not in r.output and "failed" not in r.output


def test_concepts_shows_the_run_and_files_of_learned_concepts(proj):
    _learned(proj, ["<me>", "<cat>"])
    export = proj / "export" / "a1111"
    export.mkdir(parents=True)
    (export / "me.safetensors").write_bytes(b"x")
    (export / "proj_lora.safetensors").write_bytes(b"x")
    data = _json(cf("concepts", proj, "--json"))
    rows = {c["token"]: c for c in data["concepts"]}
    assert rows["<me>"]["learned"] and rows["<me>"]["run"] == RUN_OK
    assert rows["<me>"]["files"] == ["concepts/me.safetensors", "export/a1111/me.safetensors"]
    assert rows["<cat>"]["files"] == ["concepts/cat.safetensors"] and rows["<cat>"]["run"] == RUN_OK
    assert not rows["<bg>"]["learned"] and rows["<bg>"]["files"] == []
    assert rows["<me>"]["init"] == "circle" and rows["<bg>"]["background"] is True  # the fields it always had
    assert data["index"] == {"run": RUN_OK, "model": "builtin:tiny-shapes", "finetune": "lora", "tokens": ["<me>", "<cat>"]}
    assert data["weights"] == "concepts/pytorch_lora_weights.safetensors"
    assert data["exports"] == [{"format": "a1111", "folder": "export/a1111", "files": 2}]
    assert data["last_run"] == {"id": RUN_OK, "status": "finished", "error": None} and data["notes"] == []

    r = cf("concepts", proj)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert f"Learned in run {RUN_OK} (with a LoRA: concepts/pytorch_lora_weights.safetensors):" in lines
    assert "  <me>  concepts/me.safetensors, export/a1111/me.safetensors" in lines
    assert "  <cat>  concepts/cat.safetensors" in lines
    assert "Exported for a1111: export/a1111/ (2 files)." in lines
    assert f"Not learned yet: <bg>; `conceptforge learn {proj}` learns it." in lines
    table = [line for line in lines if "│" in line]
    assert [line.split("│")[-2].strip() for line in table] == ["yes", "yes", "no"]

    r = cf("concepts", proj, "--quiet")
    assert r.output.splitlines() == [f"one.png <me> {RUN_OK}", f"one.png <cat> {RUN_OK}", "two.png <bg> -"]


def test_concepts_says_the_last_run_failed(proj):
    _learned(proj, ["<me>"], finetune="none")
    _run(proj, RUN_FAILED, {"status": "failed", "error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB.\nmore detail"})
    r = cf("concepts", proj)
    assert r.exit_code == 0, r.output
    text = _text(r)
    assert f"Learned in run {RUN_OK} (tokens only):" in text  # the concepts of the earlier run are still there
    assert (
        f"The last run, {RUN_FAILED}, failed: CUDA out of memory. Tried to allocate 2.00 GiB. Fix the cause and run "
        f"`conceptforge learn {proj}` to resume it, or add --no-resume to start over."
    ) in text
    assert "RuntimeError" not in text and "more detail" not in text
    data = _json(cf("concepts", proj, "--json"))
    assert data["last_run"]["id"] == RUN_FAILED and data["last_run"]["status"] == "failed"
    assert data["last_run"]["error"].startswith("RuntimeError: CUDA out of memory")
    assert {c["token"]: c["run"] for c in data["concepts"]}["<me>"] == RUN_OK


def test_concepts_failed_first_run_without_error_text(proj):
    _run(proj, RUN_FAILED, {"status": "failed"})
    text = _text(cf("concepts", proj))
    assert f"The last run, {RUN_FAILED}, failed: no error was recorded." in text
    assert "Not learned yet: <me>, <cat>, <bg>" in text


@pytest.mark.parametrize(
    "status, needle",
    [("interrupted", "was interrupted; `conceptforge learn"), ("running", "has not finished: it is running now, or was killed")],
)
def test_concepts_says_the_last_run_did_not_finish(proj, status, needle):
    _run(proj, RUN_FAILED, {"status": status})
    r = cf("concepts", proj)
    assert r.exit_code == 0 and f"The last run, {RUN_FAILED}, {needle}" in _text(r)


def test_concepts_notes_missing_files_removed_concepts_and_another_model(proj):
    _learned(proj, ["<me>", "<cat>", "<gone>"], model="builtin:other")
    (proj / "concepts" / "cat.safetensors").unlink()
    (proj / "concepts" / "pytorch_lora_weights.safetensors").unlink()
    data = _json(cf("concepts", proj, "--json"))
    rows = {c["token"]: c for c in data["concepts"]}
    assert rows["<me>"]["learned"] and not rows["<cat>"]["learned"] and rows["<cat>"]["files"] == []
    assert "<gone>" not in rows and data["weights"] is None
    notes = " ".join(data["notes"])
    assert "lists <cat>, but its file is missing from concepts/" in notes
    assert f"concepts/ also holds <gone>, learned in run {RUN_OK} but no longer a concept of the manifest" in notes
    assert "learned on the model builtin:other, but the project now uses builtin:tiny-shapes" in notes
    assert "The LoRA file concepts/pytorch_lora_weights.safetensors that concepts/concepts.json names is missing" in notes
    text = _text(cf("concepts", proj))
    assert all(" ".join(n.split()) in text for n in data["notes"])


def test_concepts_lists_a_project_whose_index_is_damaged(proj):
    (proj / "concepts").mkdir()
    (proj / "concepts" / "concepts.json").write_text("{not json")
    r = cf("concepts", proj)
    assert r.exit_code == 0, r.output
    assert "concepts.json is damaged: it is not valid JSON" in _text(r) and "Not learned yet: <me>, <cat>, <bg>" in _text(r)
    assert not any(c["learned"] for c in _json(cf("concepts", proj, "--json"))["concepts"])


# -- vocab -------------------------------------------------------------------------------


def test_vocab_of_the_builtin_model_is_its_trained_words(tmp_path):
    data = _json(cf("vocab", "--json"))
    words = data["words"]
    assert data["model"] == "builtin:tiny-shapes" and data["count"] == len(words) and data["contains"] is None
    assert words == sorted(w for w in vocabulary() if len(w) >= 2)
    assert {"background", "circle", "triangle", "red", "yellow", "object", "shape"} <= set(words)
    assert not {"ack", "ange", "cle", "b", "a", "1"} & set(words)  # BPE word endings, letters, digits

    r = cf("vocab")
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"builtin:tiny-shapes knows {len(words)} words as single tokens (the words of its training captions):")
    shown = r.output.splitlines()[1:-1]
    assert 1 < len(shown) < len(words)  # in columns
    assert sorted(w for line in shown for w in line.split()) == words
    assert "Any of them can be an --init word" in r.output

    r = cf("vocab", "--contains", "RE")
    assert r.exit_code == 0, r.output
    assert f"3 of the {len(words)} words builtin:tiny-shapes knows" in _text(r) and "contain 'RE'" in _text(r)
    assert r.output.splitlines()[1].split() == ["green", "red", "square"]
    assert cf("vocab", "--contains", "re", "-q").output.splitlines() == ["green", "red", "square"]
    assert cf("vocab", "--contains", "zz").output.startswith("0 of the")
    assert _json(cf("vocab", "--model", "builtin:tiny-shapes", "--json", "--contains", "ack"))["words"] == ["background", "black"]


def _big_vocab_model(root: Path) -> tuple[Path, list[str]]:
    """A model folder holding only a tokenizer whose BPE has 512 made-up words (plus 8 syllables) as single tokens."""
    from transformers import CLIPTokenizer

    from conceptforge.shapes.model import write_tokenizer_files

    syllables = ["ka", "lo", "mi", "ne", "pu", "ra", "si", "tu"]
    words = ["".join(p) for p in itertools.product(syllables, repeat=3)]
    write_tokenizer_files(root / "src", words)
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "src"), model_max_length=24, pad_token="<|endoftext|>")
    model = root / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    tokenizer.save_pretrained(str(model / "tokenizer"))
    return model, sorted(words + syllables)


def test_vocab_of_a_big_vocabulary_shows_the_first_words_with_a_note(tmp_path):
    from conceptforge.cli.vocab import SHOWN_MAX

    model, words = _big_vocab_model(tmp_path)
    assert len(words) > SHOWN_MAX
    r = cf("vocab", "--model", model)
    assert r.exit_code == 0, r.output
    head, *rest = r.output.splitlines()
    assert head == (
        f"{model} knows {len(words)} words as single tokens; below are the first {SHOWN_MAX} in the tokenizer's order "
        "(common words first). --contains TEXT searches all of them; --all or --json prints every one."
    )
    shown = [w for line in rest[:-1] for w in line.split()]
    assert len(shown) == SHOWN_MAX and set(shown) <= set(words) and {"ka", "lo"} <= set(shown)
    assert sorted(w for line in cf("vocab", "--model", model, "--all").output.splitlines()[1:-1] for w in line.split()) == words
    data = _json(cf("vocab", "--model", model, "--json"))
    assert data["words"] == words and data["count"] == len(words)
    assert cf("vocab", "--model", model, "-q").output.split() == words
    r = cf("vocab", "--model", model, "--contains", "kaka")
    assert _text(r).startswith(f"15 of the {len(words)} words {model} knows as single tokens contain 'kaka':")


def test_vocab_of_a_project_uses_its_model(tmp_path, tiny_model):
    from tiny_models import WORDS

    proj = tmp_path / "p"
    assert cf("init", proj, "--model", tiny_model).exit_code == 0
    words = _json(cf("vocab", proj, "--json"))["words"]
    assert {w for w in WORDS if len(w) >= 2} <= set(words) and "a" not in words
    assert "ach" in words  # a word ending of its BPE ("beach"): only the built-in model's trained words are known


@pytest.mark.parametrize(
    "args, needle",
    [
        (["PROJ", "--model", "builtin:tiny-shapes"], "Give a project folder or --model, not both."),
        (["--model-config", "."], "--model-config goes with --model"),
        (["--model", "builtin:nope"], "Unknown built-in model"),
        (["NOWHERE"], "does not exist"),
    ],
)
def test_vocab_refusals(tmp_path, proj, args, needle):
    args = [str(proj) if a == "PROJ" else str(tmp_path / "nowhere") if a == "NOWHERE" else a for a in args]
    r = cf("vocab", *args)
    assert r.exit_code == 2, r.output
    assert _text(r).startswith("error:") and needle in _text(r)


def test_whole_words_decodes_byte_level_entries():
    from conceptforge.cli.vocab import _byte_decoder

    decoder = _byte_decoder()
    assert len(decoder) == 256 and sorted(decoder.values()) == list(range(256))
    assert bytes(decoder[c] for c in "cafÃ©").decode("utf-8") == "café"  # how CLIP's vocab.json spells é
    assert bytes(decoder[c] for c in "aĠb") == b"a b"


# -- add-concept notes -------------------------------------------------------------------


def _add(proj: Path, image: Path, token: str, *extra: str):
    r = cf("add-concept", proj, image, "--token", token, *extra)
    assert r.exit_code == 0, r.output
    return r


def test_add_concept_notes_a_large_or_non_square_image(tmp_path):
    proj = tmp_path / "p"
    assert cf("init", proj).exit_code == 0
    r = _add(proj, _image(tmp_path / "photo.png", (1024, 768)), "<me>", "--init", "circle")
    assert (
        "Note: the image is 1024x768; the model learns at 64x64 px, so the image is learned at that size, resized to a "
        "square (crop it to a square around the concept first to keep its proportions)."
    ) in _text(r)
    r = _add(proj, _image(tmp_path / "square.png", (300, 300), (1, 2, 3)), "<sq>")
    assert "Note: the image is 300x300; the model learns at 64x64 px, so the image is learned at that size." in _text(r)
    r = _add(proj, _image(tmp_path / "wide.png", (96, 64), (4, 5, 6)), "<w>")
    assert "Note: the image is 96x64, not square; it is resized to a square of 64x64 px to be learned" in _text(r)
    for size, colour in (((256, 256), (7, 8, 9)), ((64, 64), (9, 9, 9)), ((100, 99), (3, 3, 3))):  # up to 4x the side, square enough
        r = _add(proj, _image(tmp_path / f"ok{size[0]}.png", size, colour), f"<ok{size[0]}>")
        assert "Note" not in r.output
    r = _add(proj, _image(tmp_path / "quiet.png", (1024, 768), (5, 5, 5)), "<q>", "--quiet")
    assert r.output.splitlines() == ["quiet.png <q>"]


def test_add_concept_size_follows_the_model_and_the_image_size_setting(tmp_path, tiny_model):
    from conceptforge.cli.concepts import model_image_size

    assert model_image_size(resolve_source("builtin:tiny-shapes")) == 64
    assert model_image_size(resolve_source(str(tiny_model))) == 32  # sample_size 16 x VAE factor 2
    assert model_image_size(resolve_source(str(tiny_model)), {"image_size": 48}) == 48
    assert model_image_size(ModelSource("x.safetensors", "single_file", tmp_path / "x.safetensors")) is None
    assert model_image_size(ModelSource("no/where", "hub")) is None

    proj = tmp_path / "p"
    assert cf("init", proj, "--model", tiny_model).exit_code == 0
    r = _add(proj, _image(tmp_path / "a.png", (160, 160)), "<a>", "--init", "dog")
    assert "the model learns at 32x32 px, so the image is learned at that size." in _text(r)
    data = yaml.safe_load((proj / MANIFEST).read_text())
    data["settings"] = {"image_size": 48}
    (proj / MANIFEST).write_text(yaml.safe_dump(data, sort_keys=False))
    assert "Note" not in _add(proj, _image(tmp_path / "b.png", (160, 160), (1, 1, 1)), "<b>").output
    assert "learns at 48x48 px" in _text(_add(proj, _image(tmp_path / "c.png", (200, 200), (2, 2, 2)), "<c>"))


def test_add_concept_notes_an_init_word_split_into_pieces(tmp_path):
    proj = tmp_path / "p"
    assert cf("init", proj).exit_code == 0
    image = _image(tmp_path / "a.png", (64, 64))
    r = _add(proj, image, "<ball>", "--init", "ball")
    assert (
        "Note: the model's tokenizer splits the init word 'ball' into 4 pieces (b a l l</w>); the first, b, seeds <ball>. "
        f"`conceptforge vocab {proj}` lists the words the model has as one token."
    ) in _text(r)
    assert "Note" not in _add(proj, image, "<c>", "--init", "circle").output
    assert "Note" not in _add(proj, image, "<d>", "--init", "triangle").output
    r = _add(proj, image, "<e>", "--init", "ball", "-q")
    assert r.output.splitlines() == ["a.png <e>"]
    # every word `vocab` lists is one token, so it never gets the note
    for k, word in enumerate(_json(cf("vocab", proj, "--json"))["words"]):
        assert "Note" not in _add(proj, image, f"<w{k}>", "--init", word).output, word
