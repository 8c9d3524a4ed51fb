"""Hostile and careless input to generate, export, masks and evaluate, as a table.

Each case damages a copy of one learned project (or passes a bad value) and
runs one command.  A refused command exits 2 (bad input) or 1 (a failure while
running) with one sentence on stderr naming the file or value, no traceback,
no bare exception class name, and the project byte-for-byte unchanged; an
accepted one exits 0 with the right result.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from cli_helpers import FAST_SETTINGS, cf, learned_project, tree_digest

CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Interrupt)\b:")
LIBRARY_NOTICE = "[transformers]"  # an import-time notice of transformers, which `conceptforge` (cli.main.run) silences


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_model) -> Path:
    """One project learned once (2 EM + 2 joint steps, LoRA); every case works on a copy."""
    return learned_project(tmp_path_factory.mktemp("hostile"), tiny_model)


# --------------------------------------------------------------------------- damage


def _run(proj: Path) -> Path:
    return next(p for p in (proj / "runs").iterdir() if p.is_dir())


def _concept(proj: Path, name: str = "v1") -> Path:
    return proj / "concepts" / f"{name}.safetensors"


def _width(proj: Path) -> int:
    from safetensors.torch import load_file

    return next(iter(load_file(str(_concept(proj))).values())).shape[-1]


def _write_vec(value: float | None = None, key: str = "<v1>", width: int | None = None, extra: bool = False):
    def setup(proj: Path, tmp: Path) -> None:
        w = width or _width(proj)
        vec = torch.full((1, w), value) if value is not None else torch.zeros(1, w)
        data = {key: vec}
        if extra:
            data["<other>"] = torch.zeros(1, w)
        save_file(data, str(_concept(proj)))

    return setup


def _all_wide(width: int):
    def setup(proj: Path, tmp: Path) -> None:
        for name in ("v1", "v2", "v3"):
            save_file({f"<{name}>": torch.zeros(1, width)}, str(_concept(proj, name)))

    return setup


def _garbage(relative: str, text: str = "not what it should be"):
    def setup(proj: Path, tmp: Path) -> None:
        (proj / relative).write_text(text)

    return setup


def _index(**changes):
    def setup(proj: Path, tmp: Path) -> None:
        path = proj / "concepts" / "concepts.json"
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))

    return setup


def _remove(relative: str):
    def setup(proj: Path, tmp: Path) -> None:
        (proj / relative).unlink()

    return setup


def _blocker(proj: Path, tmp: Path) -> None:
    (tmp / "blocker").write_text("a file where a folder is expected")


def _failed_run(proj: Path, tmp: Path) -> None:
    run = _run(proj)
    (run / "state.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: CUDA out of memory while sampling"}))
    (run / "metrics.jsonl").write_text("")
    shutil.rmtree(run / "masks")


def _damaged_metrics(proj: Path, tmp: Path) -> None:
    (_run(proj) / "metrics.jsonl").write_text('{"kind": "estep", "iteration": "x", "masks": 3}\n')


def _damaged_mask(proj: Path, tmp: Path) -> None:
    for path in (_run(proj) / "masks").rglob("v1.png"):
        path.write_text("not a png")


def _nan_lora(proj: Path, tmp: Path) -> None:
    from safetensors.torch import load_file

    path = proj / "concepts" / "pytorch_lora_weights.safetensors"
    data = load_file(str(path))
    key = sorted(data)[0]
    data[key] = torch.full_like(data[key], float("nan"))
    save_file(data, str(path))


def _hub_model(proj: Path, tmp: Path) -> None:
    manifest = proj / "conceptforge.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["model"] = "someone/not-in-the-cache"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))


def _no_gt_masks(proj: Path, tmp: Path) -> None:
    run = _run(proj)
    lines = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for m in rec.get("masks", []) if rec.get("kind") == "estep" else []:
            m["iou_gt"] = None
        lines.append(json.dumps(rec))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    args: Callable[[Path, Path], list]  # (project, tmp) -> command line
    code: int
    needle: str  # in the output; {proj} and {tmp} are filled in
    setup: Callable[[Path, Path], None] | None = None
    check: Callable[[Path, Path, object], None] | None = None  # extra checks on (project, tmp, result)
    marks: list = field(default_factory=list)


def gen(*extra: str) -> Callable[[Path, Path], list]:
    return lambda p, t: ["generate", p, "a photo of <v1>", "-n", "1", "--steps", "2", *extra]


def _no_samples(proj: Path, tmp: Path, r) -> None:
    assert not (proj / "samples").exists() and not list(tmp.rglob("*.png"))


def _verbatim_out(proj: Path, tmp: Path, r) -> None:
    folder = tmp / "f[/]x" / "[bnb]"
    written = sorted(folder.glob("*.png"))
    assert len(written) == 1 and str(written[0]) in r.stdout.splitlines()


def _stays_inside(proj: Path, tmp: Path, r) -> None:
    assert sorted(p.name for p in tmp.iterdir()) == [], "nothing may be written beside the project"


def _version(proj: Path, tmp: Path, r) -> None:
    from importlib.metadata import version

    assert r.stdout.strip() == f"conceptforge {version('conceptforge')}"


def _note_no_gt(proj: Path, tmp: Path, r) -> None:
    assert "no mask IoU to measure" in r.stderr


no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
no_mps = pytest.mark.skipif(bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()), reason="this machine has MPS")

CASES = [
    # generate: devices
    Case("generate-device-bogus", gen("--device", "bogus"), 2, "'bogus'"),
    Case("generate-device-cuda-without-cuda", gen("--device", "cuda"), 2, "no CUDA device", marks=[no_cuda]),
    Case("generate-device-mps-without-mps", gen("--device", "mps"), 2, "no Apple MPS device", marks=[no_mps]),
    Case("generate-device-cuda-index-bogus", gen("--device", "cuda:x"), 2, "'cuda:x'"),
    # generate: the concept files
    Case("generate-concept-damaged", gen(), 2, "{proj}/concepts/v1.safetensors is damaged", _garbage("concepts/v1.safetensors")),
    Case("generate-concept-1e30", gen(), 2, "v1.safetensors cannot be used", _write_vec(1e30), _no_samples),
    Case("generate-concept-nan", gen(), 2, "NaN", _write_vec(float("nan")), _no_samples),
    Case("generate-concept-inf", gen(), 2, "infinite", _write_vec(float("inf")), _no_samples),
    Case("generate-concept-wrong-key", gen(), 2, "holds the token '<zz>'", _write_vec(0.0, key="<zz>")),
    Case("generate-concept-two-tensors", gen(), 2, "holds 2 tensors", _write_vec(0.0, extra=True)),
    Case("generate-concept-wrong-width", gen(), 2, "48 values wide but the model's text embeddings are 32", _all_wide(48)),
    Case("generate-concept-too-wide", gen(), 2, "100000 values wide", _write_vec(0.0, width=100_000)),
    Case("generate-concept-integer", gen(), 2, "of type int64, not floating point", lambda p, t: save_file({"<v1>": torch.zeros(1, 32, dtype=torch.int64)}, str(_concept(p)))),
    Case("generate-concept-missing", gen(), 2, "v2.safetensors is missing", _remove("concepts/v2.safetensors")),
    Case("generate-index-damaged", gen(), 2, "concepts.json is damaged: it is not valid JSON", _garbage("concepts/concepts.json", "{broken")),
    Case("generate-index-not-object", gen(), 2, "concepts.json is damaged: it is not a JSON object", _garbage("concepts/concepts.json", "[1, 2]")),
    Case("generate-index-token-path", gen(), 2, "'../../evil' is not a token", _index(tokens=["<v1>", "../../evil"])),
    Case("generate-index-finetune-bogus", gen(), 2, "finetune 'most'", _index(finetune="most")),
    Case("generate-lora-missing", gen(), 2, "pytorch_lora_weights.safetensors is missing", _remove("concepts/pytorch_lora_weights.safetensors")),
    Case("generate-lora-damaged", gen(), 2, "pytorch_lora_weights.safetensors is damaged", _garbage("concepts/pytorch_lora_weights.safetensors")),
    Case("generate-lora-nan", gen(), 2, "pytorch_lora_weights.safetensors holds NaN or infinite values", _nan_lora, _no_samples),
    # generate: values
    Case("generate-guidance-nan", gen("--guidance", "nan"), 2, "--guidance nan"),
    Case("generate-guidance-negative", gen("--guidance", "-3"), 2, "--guidance -3"),
    Case("generate-seed-negative", gen("--seed", "-1"), 2, "--seed -1"),
    Case("generate-seed-huge", gen("--seed", str(2**70)), 2, f"--seed {2**70}"),
    Case("generate-prompt-empty", lambda p, t: ["generate", p, "  ", "-n", "1"], 2, "prompt is empty"),
    Case("generate-prompt-unknown-token", lambda p, t: ["generate", p, "a <nobody>", "-n", "1"], 2, "<nobody>"),
    Case("generate-prompt-cuts-token", lambda p, t: ["generate", p, "a photo of " * 10 + "<v1>", "-n", "1", "--steps", "2"], 2, "leaves out <v1>"),
    Case("generate-out-under-file", lambda p, t: [*gen("--out", t / "blocker" / "sub")(p, t)], 2, "{tmp}/blocker is a file", _blocker),
    Case("generate-out-markup-kept", lambda p, t: [*gen("--out", t / "f[/]x" / "[bnb]")(p, t)], 0, "[bnb]", check=_verbatim_out),
    Case("generate-error-markup-kept", lambda p, t: [*gen("--out", t / "blocker" / "[bnb]" / "x[/]y")(p, t)], 2, "[bnb]/x[/]y", _blocker),
    Case("generate-out-in-runs", lambda p, t: [*gen("--out", p / "runs" / "x")(p, t)], 2, "inside the project's runs/ folder"),
    Case("generate-hub-offline", gen(), 2, "someone/not-in-the-cache is a hub id, and the hub is off (HF_HUB_OFFLINE=1)", _hub_model),
    # export
    *[
        Case(f"export-{fmt}-out-under-file", lambda p, t, f=fmt: ["export", p, "--format", f, "--out", t / "blocker" / "x"], 2, "{tmp}/blocker is a file", _blocker)
        for fmt in ("diffusers", "a1111", "kohya")
    ],
    Case("export-out-is-file", lambda p, t: ["export", p, "-f", "kohya", "--out", t / "blocker"], 2, "exists and is not a folder", _blocker),
    Case("export-into-concepts", lambda p, t: ["export", p, "-f", "a1111", "--out", p / "concepts"], 2, "inside the project's concepts/ folder"),
    Case("export-format-unknown", lambda p, t: ["export", p, "-f", "onnx", "--out", t / "x"], 2, "'onnx'"),
    Case("export-concept-nan", lambda p, t: ["export", p, "-f", "diffusers", "--out", t / "x"], 2, "NaN", _write_vec(float("nan"))),
    Case("export-concept-damaged", lambda p, t: ["export", p, "-f", "a1111", "--out", t / "x"], 2, "v1.safetensors is damaged", _garbage("concepts/v1.safetensors")),
    Case("export-lora-damaged", lambda p, t: ["export", p, "-f", "a1111", "--out", t / "x"], 2, "pytorch_lora_weights.safetensors is damaged", _garbage("concepts/pytorch_lora_weights.safetensors")),
    Case("export-index-damaged", lambda p, t: ["export", p, "-f", "kohya", "--out", t / "x"], 2, "concepts.json is damaged", _garbage("concepts/concepts.json", "{")),
    Case("export-index-run-path", lambda p, t: ["export", p, "-f", "kohya", "--out", t / "x"], 2, "run '../../..' is not the name of a run folder", _index(run="../../..")),
    Case("export-kohya-image-damaged", lambda p, t: ["export", p, "-f", "kohya", "--out", t / "x"], 2, "{proj}/images/first.png is damaged", _garbage("images/first.png")),
    Case("export-kohya-mask-damaged", lambda p, t: ["export", p, "-f", "kohya", "--out", t / "x"], 2, "v1.png is damaged", _damaged_mask),
    # masks
    Case("masks-sheet-unknown-extension", lambda p, t: ["masks", p, "--sheet", t / "sheet.xyz"], 2, "sheet.xyz ends in .xyz", check=_stays_inside),
    Case("masks-sheet-no-extension", lambda p, t: ["masks", p, "--sheet", t / "sheet"], 2, "has no extension", check=_stays_inside),
    Case("masks-sheet-under-file", lambda p, t: ["masks", p, "--sheet", t / "blocker" / "s.png"], 2, "{tmp}/blocker exists and is not a folder", _blocker),
    Case("masks-sheet-over-an-image", lambda p, t: ["masks", p, "--sheet", p / "images" / "first.png"], 2, "inside the project's images/ folder"),
    Case("masks-failed-run", lambda p, t: ["masks", p], 2, "failed before writing masks (CUDA out of memory while sampling)", _failed_run),
    Case("masks-metrics-damaged", lambda p, t: ["masks", p], 2, "metrics.jsonl is damaged", _damaged_metrics),
    Case("masks-sheet-image-damaged", lambda p, t: ["masks", p, "--sheet", t / "s.png"], 2, "{proj}/images/first.png is damaged", _garbage("images/first.png")),
    Case("masks-sheet-mask-damaged", lambda p, t: ["masks", p, "--sheet", t / "s.png"], 2, "v1.png is damaged", _damaged_mask),
    Case("masks-iteration-missing", lambda p, t: ["masks", p, "-i", "99"], 2, "no E-step 99"),
    Case("masks-run-missing", lambda p, t: ["masks", p, "--run", "../.."], 2, "'../..'"),
    # evaluate
    Case("evaluate-failed-run", lambda p, t: ["evaluate", p, "--no-generation"], 2, "failed before writing masks (CUDA out of memory", _failed_run),
    Case("evaluate-metrics-damaged", lambda p, t: ["evaluate", p, "--no-generation"], 2, "metrics.jsonl is damaged", _damaged_metrics),
    Case("evaluate-plot-unknown-extension", lambda p, t: ["evaluate", p, "--no-generation", "--plot", t / "iou.xyz"], 2, "iou.xyz ends in .xyz"),
    Case("evaluate-plot-not-png", lambda p, t: ["evaluate", p, "--no-generation", "--plot", t / "iou.jpg"], 2, "iou.jpg ends in .jpg"),
    Case("evaluate-plot-in-concepts", lambda p, t: ["evaluate", p, "--no-generation", "--plot", p / "concepts" / "iou.png"], 2, "inside the project's concepts/ folder"),
    Case("evaluate-clip-missing", lambda p, t: ["evaluate", p, "--clip", t / "no-clip"], 2, "{tmp}/no-clip does not exist"),
    Case("evaluate-device-bogus", lambda p, t: ["evaluate", p, "--device", "tpu"], 2, "'tpu'"),
    Case("evaluate-seed-negative", lambda p, t: ["evaluate", p, "--seed", "-4"], 2, "--seed -4"),
    Case("evaluate-concept-damaged", lambda p, t: ["evaluate", p, "-n", "2", "--steps", "1"], 2, "v1.safetensors is damaged", _garbage("concepts/v1.safetensors")),
    Case("evaluate-no-gt-masks", lambda p, t: ["evaluate", p, "--no-generation"], 0, "mask IoU with GT", _no_gt_masks, _note_no_gt),
    # the app
    Case("version", lambda p, t: ["--version"], 0, "conceptforge ", check=_version),
]


def _ok_output(r) -> None:
    assert "Traceback" not in r.output, r.output
    assert not CLASS_NAME.search(r.output), r.output


def _stderr_lines(r) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.strip() and LIBRARY_NOTICE not in line]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_hostile_input(case: Case, learned: Path, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(learned, proj)
    side = tmp_path / "side"  # where a case puts its own files and outputs
    side.mkdir()
    if case.setup is not None:
        case.setup(proj, side)
    before = tree_digest(proj)
    r = cf(*case.args(proj, side))
    needle = case.needle.format(proj=proj, tmp=side)
    assert r.exit_code == case.code, r.output
    _ok_output(r)
    assert needle in r.output, r.output
    if case.code != 0:
        lines = _stderr_lines(r)
        assert len(lines) == 1 and lines[0].startswith("error: "), r.output  # one sentence
        assert lines[0].rstrip().endswith((".", ")")), lines[0]
        assert tree_digest(proj) == before  # refused: the project is as it was
    if case.check is not None:
        case.check(proj, side, r)


# --------------------------------------------------------------------------- cases that need more than a table row


def test_ctrl_c_exits_130_with_one_sentence(learned, tmp_path, monkeypatch):
    from conceptforge.engine import generate as engine_generate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_generate, "generate", interrupted)
    r = cf("generate", learned, "a <v1>", "-n", "1")
    assert r.exit_code == 130
    assert _stderr_lines(r) == ["error: Interrupted; every file written so far is complete, and none was left half-written."]


def test_unexpected_error_is_one_sentence_without_class_name(learned, monkeypatch):
    from conceptforge.engine import interop

    def broken(*args, **kwargs):
        raise ValueError("the [red]unexpected[/] happened")

    monkeypatch.setattr(interop, "export_project", broken)
    r = cf("export", learned, "--format", "kohya")
    assert r.exit_code == 1
    assert _stderr_lines(r) == [
        "error: conceptforge failed unexpectedly: the [red]unexpected[/] happened (set CONCEPTFORGE_DEBUG=1 for the traceback)."
    ]
    _ok_output(r)


def test_os_error_names_the_file(learned, monkeypatch):
    from conceptforge.engine import interop

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/out/v1.safetensors")

    monkeypatch.setattr(interop, "export_project", denied)
    r = cf("export", learned, "--format", "kohya")
    assert r.exit_code == 2
    assert _stderr_lines(r) == ["error: Could not use /data/out/v1.safetensors: permission denied."]


@pytest.mark.parametrize(
    "raised, code, needle",
    [
        (ConnectionError("connection refused"), 1, "the hub could not be reached (connection refused)"),
        (RuntimeError("size mismatch for conv_in.weight"), 2, "damaged or not a Stable-Diffusion-architecture model (size mismatch"),
        (OSError("no file named model_index.json"), 2, "no file named model_index.json."),
        (LookupError("something else"), 1, "Could not load model"),
    ],
)
def test_model_load_failure_is_one_sentence(learned, monkeypatch, raised, code, needle):
    from diffusers import StableDiffusionPipeline

    def failing(*args, **kwargs):
        raise raised

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", failing)
    before = tree_digest(learned)
    r = cf("generate", learned, "a <v1>", "-n", "1")
    assert r.exit_code == code, r.output
    lines = _stderr_lines(r)
    assert len(lines) == 1 and lines[0].startswith("error: Could not load model ") and needle in lines[0], r.output
    _ok_output(r)
    assert tree_digest(learned) == before


def test_nan_image_is_never_written(learned, tmp_path, monkeypatch):
    """Whatever makes the sampler return NaN (here: a stand-in), no black PNG is written and the exit code is 1."""
    from types import SimpleNamespace

    from diffusers import StableDiffusionPipeline

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", lambda self, *a, **k: SimpleNamespace(images=np.full((1, 8, 8, 3), np.nan, np.float32)))
    r = cf("generate", learned, "a <v1>", "-n", "2", "--out", tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert _stderr_lines(r) == [
        "error: The model produced NaN or infinite values for seed 0, so no image was written for it (0 written before); "
        "the model or its fine-tuned weights are damaged or overflow at this precision."
    ]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_broken_learned_embedding_is_never_saved(tmp_path):
    from conceptforge.engine.tokens import MAX_EMBEDDING_NORM, check_embedding, save_concept_files
    from conceptforge.errors import ConceptforgeError, InputError

    good, huge = torch.full((32,), 0.01), torch.full((32,), MAX_EMBEDDING_NORM)
    with pytest.raises(ConceptforgeError, match="<v2>.*norm"):
        save_concept_files(tmp_path, {"<v1>": good, "<v2>": huge})
    assert list(tmp_path.iterdir()) == []  # not even the good one
    assert save_concept_files(tmp_path, {"<v1>": good}) == [tmp_path / "v1.safetensors"]
    assert torch.equal(check_embedding("<v1>", good.reshape(1, -1), "x", width=32), good)
    with pytest.raises(InputError, match="x cannot be used for <v1>: it is 32 values wide but the model's text embeddings are 48 wide"):
        check_embedding("<v1>", good, "x", width=48)


@pytest.mark.parametrize(
    "requested, expected",
    [("auto", "cuda"), ("cuda", "cuda"), ("cuda:0", "cuda:0"), ("cpu", "cpu"), (" CPU ", "cpu"), ("cuda:1", None), ("tpu", None), ("cuda:", None)],
)
def test_pick_device_on_a_machine_with_one_cuda_device(monkeypatch, requested, expected):
    from conceptforge.engine.backbone import pick_device
    from conceptforge.errors import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    if expected is None:
        with pytest.raises(InputError, match="--device"):
            pick_device(requested)
    else:
        assert pick_device(requested) == torch.device(expected)


def test_read_only_output_folder_is_refused(learned, tmp_path, monkeypatch):
    """A folder this user may not write to (root ignores chmod, so os.access answers here)."""
    import os

    out = tmp_path / "ro"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out and mode & os.W_OK else real(p, mode, **kw))
    for args in (("export", learned, "-f", "kohya", "--out", out / "k"), ("generate", learned, "a <v1>", "-n", "1", "--out", out)):
        r = cf(*args)
        assert r.exit_code == 2 and _stderr_lines(r) == [f"error: The output folder {args[-1]} cannot be written: {out} is not writable."], r.output
    assert list(out.iterdir()) == []


def test_kohya_export_stays_in_its_folder_whatever_the_manifest_says(learned, tmp_path):
    """A hand-edited image name that climbs out of images/ writes nothing outside the export folder."""
    proj = tmp_path / "proj"
    shutil.copytree(learned, proj)
    manifest = proj / "conceptforge.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["images"][0]["file"] = "../../escape.png"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copyfile(proj / "images" / "first.png", tmp_path / "escape.png")
    out = tmp_path / "deep" / "er" / "kohya"
    before = {p for p in tmp_path.rglob("*")}
    r = cf("export", proj, "--format", "kohya", "--out", out)
    assert r.exit_code == 2, r.output
    assert "escape.png" in r.output and len(_stderr_lines(r)) == 1
    assert {p for p in tmp_path.rglob("*")} == before


@pytest.mark.parametrize("name", ["../../escape.png", "sub/../../escape.png", "/tmp/escape.png", "..", "a\\b.png"])
def test_kohya_export_refuses_an_image_name_that_is_not_plain(learned, tmp_path, name):
    """Even past the project loader (an in-memory project), the export reads and writes plain names only."""
    from conceptforge.engine.interop import export_project
    from conceptforge.errors import InputError
    from conceptforge.project import Project

    project = Project.load(learned)
    project.images[0].file = name
    out = tmp_path / "deep" / "kohya"
    with pytest.raises(InputError, match="not a plain file name"):
        export_project(project, "kohya", out)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_on_builtin_project_with_images_of_another_size(tmp_path):
    """The recogniser reads 64x64; a 128x128 image with a 128x128 GT mask is compared at one size."""
    from conceptforge.shapes.world import sample_scene

    scene = sample_scene(5, n_objects=1)
    image, mask = tmp_path / "big.png", tmp_path / "big_mask.png"
    scene.image.resize((128, 128), Image.NEAREST).save(image)
    Image.fromarray(scene.objects[0].mask.astype(np.uint8) * 255).resize((128, 128), Image.NEAREST).save(mask)
    proj = tmp_path / "p"
    assert cf("init", proj).exit_code == 0  # builtin:tiny-shapes
    assert cf("add-concept", proj, image, "--token", "<v1>", "--init", "square", "--gt-mask", mask).exit_code == 0
    assert cf("add-concept", proj, image, "--token", "<bg>", "--background", "--init", "background").exit_code == 0
    manifest = proj / "conceptforge.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["settings"] = dict(FAST_SETTINGS)
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    assert cf("learn", proj, "--em-steps", "2", "--joint-steps", "0", "-q").exit_code == 0
    r = cf("evaluate", proj, "-n", "2", "--steps", "2", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert [c["token"] for c in result["generation"]["concepts"]] == ["<v1>", "<bg>"]
    assert [c["token"] for c in result["masks"]["concepts"]] == ["<v1>"]
    v1 = result["generation"]["concepts"][0]
    assert (v1["colors"], v1["shape"]) == (scene.objects[0].colors, scene.objects[0].shape)  # read off the 128x128 image


def test_every_option_has_help_a_default_and_a_word_for_its_type():
    import typer

    from cli_helpers import runner
    from conceptforge.cli.main import app

    group = typer.main.get_command(app)
    for name in ("generate", "export", "masks", "evaluate"):
        command = group.commands[name]
        for param in command.params:
            assert param.help, f"{name} {param.name} has no help"
            if param.param_type_name == "option" and not param.is_flag and not param.required:
                assert param.show_default is not False, f"{name} {param.name} hides its default"
        text = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"}).output
        assert not re.search(r"<(bool|str|path|int|float)[^>]*>|\{", text), text  # types in words, usage without braces
        assert f"conceptforge {name} [OPTIONS] DIR" in text
        for param in command.params:
            if param.param_type_name == "option" and not param.is_flag and not param.required:
                long = max(param.opts, key=len)
                row = next(line for line in text.splitlines() if f" {long} " in line)
                assert "[default:" in row, row
