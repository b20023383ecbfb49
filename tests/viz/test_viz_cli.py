"""``nepa viz`` end to end on the tiny run, image input, and one-line errors for bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torchvision.io import decode_png, encode_png, read_file
from torchvision.transforms.v2 import functional as TF

from nepa.cli import main
from nepa.data.base import build_dataset
from nepa.data.images import eval_transform
from nepa.viz import VizError, load_image_input

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path, min_hw: tuple[int, int]) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = decode_png(read_file(str(path)))
    assert img.shape[0] in (3, 4) and img.shape[1] >= min_hw[0] and img.shape[2] >= min_hw[1]
    assert img.float().std() > 10  # not a blank canvas


@pytest.fixture
def rgb_png(tmp_path: Path) -> Path:
    """A 40x30 RGB PNG (not the run's size or channel count)."""
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8, generator=g)
    path = tmp_path / "in.png"
    path.write_bytes(encode_png(img).numpy().tobytes())
    return path


def test_image_file_goes_through_the_eval_transform(tiny_cfg, rgb_png: Path) -> None:
    cfg = tiny_cfg().data
    image = load_image_input(str(rgb_png), cfg)
    rgb = decode_png(read_file(str(rgb_png)))
    gray = TF.rgb_to_grayscale(rgb)  # the run has 1 channel
    expected = eval_transform(cfg, cfg.mean, cfg.std)(gray)
    assert image.x_CHW.shape == (1, 28, 28)
    torch.testing.assert_close(image.x_CHW, expected, atol=0.02, rtol=0)  # decoder's grey mix
    assert image.show_HW3.shape == (28, 28, 3)
    shown = TF.center_crop(TF.resize(gray, [37, 28], antialias=True), [28, 28]).float() / 255
    torch.testing.assert_close(image.show_HW3[..., 0], shown[0], atol=0.01, rtol=0)


def test_split_item_is_the_dataset_item(tiny_cfg) -> None:
    cfg = tiny_cfg().data
    image = load_image_input("test:3", cfg)
    item = build_dataset(cfg, split="test", train=False)[3]
    x, label = item["image"], int(item["label"])
    assert torch.equal(image.x_CHW, x) and image.name == f"test:3 (label {label})"
    assert image.show_HW3.min() >= 0 and image.show_HW3.max() <= 1
    with pytest.raises(VizError, match="out of range"):
        load_image_input("test:100000", cfg)


@pytest.fixture
def no_weights_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "no_weights"
    run.mkdir()
    for name in ("config.json", "meta.json"):
        shutil.copy(tiny_run / name, run / name)
    return run


def test_cli_attention_and_similarity_write_pngs(tiny_run: Path, tmp_path: Path, capsys) -> None:
    att, sim = tmp_path / "att.png", tmp_path / "sim.png"
    argv = [str(tiny_run), "test:0", "--layer", "1", "--attn", "bidirectional"]
    assert main(["viz", "attention", *argv, "--png", str(att), "--query", "5", "3,3"]) == 0
    _check_png(att, (300, 400))
    assert main(["viz", "similarity", *argv, "--png", str(sim), "--patch", "0,0"]) == 0
    _check_png(sim, (150, 400))
    assert capsys.readouterr().out.split() == [str(att), str(sim)]


def test_cli_attention_image_file_random_init(no_weights_run: Path, rgb_png: Path, tmp_path):
    out = tmp_path / "att.png"  # random init needs the run's config only, no weights
    argv = ["viz", "attention", str(no_weights_run), str(rgb_png), "--png", str(out)]
    assert main([*argv, "--head", "0", "--random-init"]) == 0
    _check_png(out, (600, 400))  # default queries: centre and four corners


def _bad_inputs(tiny_run: Path, no_weights_run: Path, tmp_path: Path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    run = str(tiny_run)
    return [
        ([run, str(tmp_path / "missing.png")], "image file not found"),
        ([run, str(garbage)], "cannot decode"),
        ([str(no_weights_run), "test:0"], "has not saved any weights"),
        ([str(tmp_path / "nowhere"), "test:0"], "not a nepa run directory"),
        ([str(tmp_path), "test:0"], "not a nepa run directory"),
        ([run, "test:0", "--query", "16"], "patch index 16 is out of range"),
        ([run, "test:0", "--query", "0,4"], "out of range"),
        ([run, "test:0", "--layer", "3"], "layer 3 is out of range"),
        ([run, "test:0", "--head", "5"], "head 5 is out of range"),
        ([run, "nosplit:0"], "cannot load split 'nosplit'"),
    ]


def test_cli_bad_input_exits_2(tiny_run: Path, no_weights_run: Path, tmp_path: Path, capsys):
    png = tmp_path / "out.png"
    for argv, message in _bad_inputs(tiny_run, no_weights_run, tmp_path):
        assert main(["viz", "attention", *argv, "--png", str(png)]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert not png.exists()


def test_cli_similarity_bad_patch_and_unwritable_png(tiny_run: Path, tmp_path: Path, capsys):
    argv = ["viz", "similarity", str(tiny_run), "test:0"]
    assert main([*argv, "--png", str(tmp_path / "s.png"), "--patch", "-1"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main([*argv, "--png", str(tmp_path / "no" / "dir" / "s.png")]) == 1
    assert "cannot write" in capsys.readouterr().err
