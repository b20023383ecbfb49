"""Registries, config validation and overrides, and the encoder contract over every encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from tiny_recipe import TINY_RECIPE, tiny, tiny_with

from nepa.batch import LABEL, LABEL_FIELD, FieldSpec
from nepa.cli import main
from nepa.config import (
    ConfigError,
    apply_overrides,
    import_file,
    load_recipe,
    parse_value,
    validate,
)
from nepa.encoders.base import ENCODERS, build_encoder
from nepa.encoders.image import ImageEncoder, ImageEncoderConfig
from nepa.encoders.scans import scan_coords, scan_order
from nepa.registry import Registry, RegistryError
from nepa.schema import ComponentConfig
from nepa.tokens import Tokens

# The user's 1-D plugin registers `conv1d_patch`; import it the way the CLI does (same module
# name), so the parametrisation below covers a user-registered encoder too.
USER_PLUGIN = Path(__file__).resolve().parent / "user_plugins" / "signal_1d.py"
import_file(USER_PLUGIN)

# One small valid example per registered encoder: the field it reads, that field's per-sample
# shape, and its config. A new encoder must add a line here: `test_every_encoder_has_an_example`
# fails until it does.
ENCODER_EXAMPLES: dict[str, tuple[str, tuple[int, ...], dict]] = {
    "image": ("image", (3, 12, 16), {"patch_size": 4, "scan": "hilbert"}),
    "conv1d_patch": ("signal", (6, 64), {"patch_size": 8, "scan": "snake"}),
    "spectrogram": ("fbank", (32, 64), {"patch_time": 16, "patch_freq": 16, "scan": "column"}),
    "sensor": (
        "signal",
        (3, 64),
        {"patch": 16, "stride": 8, "channels": "independent", "scan": "snake", "revin": True},
    ),
    "video": ("video", (1, 4, 16, 16), {"tubelet": (2, 8, 8), "scan": "hilbert"}),
    # registered by docs/examples/waveform.py when tests/test_guide_modality.py imports it
    "waveform_frames": ("wave", (1, 1600), {"frame": 400}),
}


def _fields(field: str, shape: tuple[int, ...]) -> dict[str, FieldSpec]:
    """A data declaration with one input field and the usual label."""
    return {field: FieldSpec(shape), LABEL: LABEL_FIELD}


# ------------------------------------------------------------------------------ registry


class _ThingConfig(ComponentConfig):
    kind: Literal["thing"] = "thing"
    size: int = 1


def test_registry_register_get_build() -> None:
    reg: Registry = Registry("widget")

    @reg.register("thing", config=_ThingConfig)
    def make(cfg, *, scale: int):
        return cfg.size * scale

    assert reg.get("thing") is make
    assert reg.config_class("thing") is _ThingConfig
    assert "thing" in reg and len(reg) == 1 and list(reg) == ["thing"]


def test_registry_duplicate_name_raises() -> None:
    reg: Registry = Registry("widget")
    reg.register("a")(object())
    with pytest.raises(RegistryError, match="widget 'a' is already registered"):
        reg.register("a")(object())


def test_registry_unknown_name_lists_known() -> None:
    reg: Registry = Registry("widget")
    for name in ("beta", "alpha"):
        reg.register(name)(object())
    with pytest.raises(RegistryError) as e:
        reg.get("gamma")
    assert str(e.value) == "unknown widget 'gamma'; known: alpha, beta"
    with pytest.raises(RegistryError, match="known: alpha, beta"):
        reg.config_class("gamma")
    with pytest.raises(RegistryError, match="without a config class"):
        reg.config_class("alpha")


def test_registry_config_kind_must_equal_name() -> None:
    reg: Registry = Registry("widget")
    with pytest.raises(RegistryError, match=r"must have a field `kind: Literal\['other'\]"):
        reg.register("other", config=_ThingConfig)(object())

    class NoDefault(ComponentConfig):  # kind without a default
        pass

    with pytest.raises(RegistryError, match="kind"):
        reg.register("nodefault", config=NoDefault)(object())
    assert "other" not in reg and "nodefault" not in reg


def test_builtin_registries_hold_the_builtins() -> None:
    from nepa.data.base import DATASETS
    from nepa.encoders.scans import SCANS
    from nepa.objectives.base import OBJECTIVES

    assert "image" in ENCODERS
    assert "nepa" in OBJECTIVES
    assert {"image_npz", "image_folder"} <= set(DATASETS.names())
    assert {"raster", "snake", "hilbert", "spiral", "random"} <= set(SCANS.names())


# ------------------------------------------------------------------------------ encoders


def test_every_encoder_has_an_example() -> None:
    missing = sorted(set(ENCODERS.names()) - set(ENCODER_EXAMPLES))
    assert not missing, f"add a sample shape for encoder(s) {missing} to ENCODER_EXAMPLES"


@pytest.mark.parametrize("kind", ENCODERS.names())
def test_encoder_contract(kind: str) -> None:
    """Every registered encoder: Tokens of the right shapes, finite, all parameters trained."""
    if kind not in ENCODER_EXAMPLES:
        pytest.fail(f"no example for encoder {kind!r}: add one to ENCODER_EXAMPLES")
    field, shape, kw = ENCODER_EXAMPLES[kind]
    cfg = ENCODERS.config_class(kind).model_validate({"kind": kind, **kw})
    fields = _fields(field, shape)
    cfg.check_fields(fields)
    torch.manual_seed(0)
    enc = build_encoder(cfg, dim=16, fields=fields)
    batch = {field: torch.randn(3, *shape), LABEL: torch.zeros(3, dtype=torch.int64)}
    tok = enc(batch)
    assert isinstance(tok, Tokens)
    T = tok.emb.shape[1]
    assert tok.emb.shape == (3, T, 16) and tok.emb.dtype == torch.float32
    assert tok.coords.shape == (T, enc.n_axes) and tok.coords.dtype == torch.long
    assert len(tok.grid) == enc.n_axes == tok.n_axes and tuple(enc.grid) == tuple(tok.grid)
    assert int(np.prod(tok.grid)) == T
    grid = torch.tensor(tok.grid)
    assert ((tok.coords >= 0) & (tok.coords < grid)).all()
    assert len({tuple(c) for c in tok.coords.tolist()}) == T  # every cell exactly once
    assert torch.isfinite(tok.emb).all()
    (tok.emb * torch.randn_like(tok.emb)).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{kind}: no gradient reaches {name}"


@pytest.mark.parametrize("kind", ENCODERS.names())
def test_encoder_rejects_bad_shapes(kind: str) -> None:
    field, shape, kw = ENCODER_EXAMPLES[kind]
    cfg = ENCODERS.config_class(kind).model_validate({"kind": kind, **kw})
    cfg.check_fields(_fields(field, shape))  # the example itself is fine
    with pytest.raises(ValueError):
        cfg.check_fields(_fields(field, (*shape, 1)))  # one axis too many
    with pytest.raises(ValueError):
        cfg.check_fields(_fields(field, (*shape[:-1], shape[-1] + 1)))  # not divisible by patch
    with pytest.raises(ValueError, match=f"reads field {field!r}, which the data does not"):
        cfg.check_fields(_fields("other", shape))  # the field it reads is missing


def test_image_encoder_patch_embedding_by_hand() -> None:
    """Token at grid cell (r, c) is the conv of exactly the pixels of patch (r, c)."""
    torch.manual_seed(0)
    fields = {"image": FieldSpec((2, 6, 9))}
    enc = ImageEncoder(ImageEncoderConfig(patch_size=(2, 3)), dim=5, fields=fields)
    x = torch.randn(2, 2, 6, 9)
    tok = enc({"image": x})
    assert tok.grid == (3, 3)
    W = enc.proj.weight.reshape(5, -1)  # (D, C*ph*pw)
    for i, (r, c) in enumerate(tok.coords.tolist()):
        patch = x[:, :, 2 * r : 2 * r + 2, 3 * c : 3 * c + 3].reshape(2, -1)
        torch.testing.assert_close(tok.emb[:, i], patch @ W.T + enc.proj.bias)


@pytest.mark.parametrize("scan", ["hilbert", "snake", "spiral", "random"])
def test_scan_order_wiring(scan: str) -> None:
    """coords = scan_coords(scan, grid); embeddings are the raster ones, permuted the same way."""
    shape = (3, 24, 32)
    fields = {"image": FieldSpec(shape)}
    torch.manual_seed(0)
    raster = ImageEncoder(ImageEncoderConfig(patch_size=4, scan="raster"), dim=8, fields=fields)
    other = ImageEncoder(
        ImageEncoderConfig(patch_size=4, scan=scan, scan_seed=3), dim=8, fields=fields
    )
    other.load_state_dict(raster.state_dict())
    x = {"image": torch.randn(2, *shape)}
    tr, to = raster(x), other(x)
    grid = (6, 8)
    assert tr.grid == to.grid == grid
    np.testing.assert_array_equal(to.coords.numpy(), scan_coords(scan, grid, seed=3))
    np.testing.assert_array_equal(tr.coords.numpy(), scan_coords("raster", grid))
    order = torch.from_numpy(scan_order(scan, grid, seed=3))
    assert not torch.equal(order, torch.arange(48))  # the test means something
    torch.testing.assert_close(to.emb, tr.emb[:, order], rtol=0, atol=0)
    # Same per-token embedding at the same coordinate, whatever the order.
    row_major = to.coords[:, 0] * grid[1] + to.coords[:, 1]
    torch.testing.assert_close(to.emb, tr.emb[:, row_major], rtol=0, atol=0)


# ------------------------------------------------------------------------------ configs


def test_tiny_recipe_round_trips_through_json() -> None:
    cfg = tiny()
    again = validate(cfg.model_dump(mode="json"))
    assert again == cfg and again.fingerprint() == cfg.fingerprint()
    assert apply_overrides(cfg, []) == cfg


def test_override_sets_and_revalidates() -> None:
    cfg = apply_overrides(
        tiny(),
        [
            "optim.lr=3e-4",
            "predictor.rope_rescale=[0.5, 2]",
            "encoder.scan=hilbert",
            "optim.clip_grad=null",
        ],
    )
    assert cfg.optim.lr == 3e-4 and cfg.predictor.rope_rescale == (0.5, 2.0)
    assert cfg.encoder.scan == "hilbert" and cfg.optim.clip_grad is None
    assert tiny().optim.lr == 3e-3  # the original is untouched
    with pytest.raises(ConfigError, match="heads"):  # cross-field check runs again
        apply_overrides(tiny(), ["predictor.heads=3"])


@pytest.mark.parametrize(
    "text,value",
    [
        ("3e-4", 3e-4),
        ("true", True),
        ("null", None),
        ("None", None),
        ("[0.5, 2]", [0.5, 2]),
        ("(1, 2)", (1, 2)),
        ("hilbert", "hilbert"),
        ("12", 12),
    ],
)
def test_parse_value(text: str, value) -> None:
    assert parse_value(text) == value


def test_unknown_override_key_names_it_and_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides(tiny(), ["optim.lrr=1"])
    msg = str(e.value)
    assert "'optim.lrr'" in msg and "'lrr' is not in optim" in msg
    assert "valid keys: lr, weight_decay, betas, eps, warmup, min_lr_ratio, clip_grad" in msg
    with pytest.raises(
        ConfigError, match="'bad' is not in the top level; valid keys: name, seed, data"
    ):
        apply_overrides(tiny(), ["bad.key=1"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides(tiny(), ["optim.lr"])


def test_bad_literal_lists_valid_values() -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides(tiny(), ["predictor.attn=foo"])
    msg = str(e.value)
    assert "predictor.attn" in msg
    assert "'causal', 'bidirectional' or 'prefix'" in msg


def test_image_not_divisible_by_patch_fails_at_config_time() -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides(tiny(), ["encoder.patch_size=5"])
    msg = str(e.value)
    assert "28x28" in msg and "5x5" in msg and "encoder.patch_size" in msg
    with pytest.raises(ValidationError, match="28x28 is not divisible by the patch size 5x5"):
        tiny().model_validate(
            {**tiny().model_dump(), "encoder": {"kind": "image", "patch_size": 5}}
        )


def test_encoder_that_cannot_read_the_data_fails_at_config_time() -> None:
    """The image encoder reading a field the data lacks, and a 1-D encoder on image data."""
    with pytest.raises(ConfigError) as e:
        apply_overrides(tiny(), ["encoder.field=pixels"])
    msg = str(e.value)
    assert "encoder 'image' cannot read data 'image_npz'" in msg
    assert "reads field 'pixels', which the data does not declare" in msg
    assert "image (1, 28, 28) float32" in msg  # what the data does declare
    data = tiny().model_dump(mode="json")
    data["encoder"] = {"kind": "conv1d_patch", "patch_size": 7}
    with pytest.raises(ConfigError, match="encoder 'conv1d_patch' cannot read data 'image_npz'"):
        validate(data)


def test_unknown_encoder_kind_lists_known_kinds() -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides(tiny(), ["encoder.kind=nope"])
    msg = str(e.value)
    assert "encoder" in msg and "unknown encoder 'nope'" in msg
    assert "known: " in msg and "image" in msg and "conv1d_patch" in msg


def test_unknown_key_inside_a_registered_component_names_it() -> None:
    data = tiny().model_dump(mode="json")
    data["encoder"]["patchsize"] = 4
    with pytest.raises(ConfigError) as e:
        validate(data)
    assert (
        "encoder.patchsize: unknown key; valid keys here: kind, field, patch_size, scan, scan_seed"
        in str(e.value)
    )


def test_unknown_scan_and_missing_kind() -> None:
    with pytest.raises(ConfigError, match="unknown scan order 'nope'; known: .*hilbert"):
        apply_overrides(tiny(), ["encoder.scan=nope"])
    data = tiny().model_dump(mode="json")
    del data["objective"]["kind"]
    with pytest.raises(ConfigError, match="missing key 'kind'; known objective kinds: .*nepa"):
        validate(data)


def test_cross_field_errors_say_how_to_fix() -> None:
    with pytest.raises(ConfigError, match="batch_size=16 must be divisible by train.accum=3"):
        apply_overrides(tiny(), ["train.accum=3"])
    with pytest.raises(ConfigError, match="prefix_len > 0"):
        apply_overrides(tiny(), ["predictor.attn=prefix"])
    with pytest.raises(ConfigError, match="prefix_len is only used with attn='prefix'"):
        apply_overrides(tiny(), ["predictor.prefix_len=2"])
    with pytest.raises(ConfigError, match="must be even"):
        apply_overrides(tiny(), ["predictor.dim=30", "predictor.heads=2"])


def test_configs_are_frozen() -> None:
    cfg = tiny()
    with pytest.raises(ValidationError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


def test_load_recipe_by_path_and_module(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, canonical = load_recipe(TINY_RECIPE, ["train.steps=3"])
    assert cfg == tiny_with("train.steps=3")
    assert canonical == TINY_RECIPE  # absolute path kept, so evaluation can re-import it
    cfg2, canonical2 = load_recipe("nepa.demo_recipe:demo")
    assert canonical2 == "nepa.demo_recipe:demo" and cfg2.name == "demo"
    with pytest.raises(ConfigError, match="no recipe function 'nope'; functions there: .*tiny"):
        load_recipe(TINY_RECIPE.replace(":tiny", ":nope"))
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe("/nonexistent/recipe.py:tiny")
    with pytest.raises(ConfigError, match="MODULE_OR_FILE:FUNCTION"):
        load_recipe("tiny_recipe")


def test_cli_bad_override_exits_2_with_message(
    capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    code = main(["train", TINY_RECIPE, "--out", str(tmp_path / "run"), "--set", "bad.key=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown config key 'bad.key'" in err and "valid keys: name, seed" in err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_a_recipe_file_that_fails_to_import_fails_every_time(tmp_path: Path) -> None:
    bad = tmp_path / "bad_recipe.py"
    bad.write_text("def tiny():\n    return None\n\nraise RuntimeError('user bug at import')\n")
    for _ in range(2):
        with pytest.raises(
            ConfigError, match="bad_recipe.py:4 raised RuntimeError on import: user bug"
        ) as e:
            load_recipe(f"{bad}:tiny")
        assert isinstance(e.value.__cause__, RuntimeError)


@pytest.mark.parametrize("kind", ["image", "spectrogram", "sensor", "video"])
def test_patches_are_what_the_projection_reads(kind: str) -> None:
    """Each token's raw patch, projected by the encoder's own weights, is its embedding."""
    field, shape, kw = ENCODER_EXAMPLES[kind]
    cfg = ENCODERS.config_class(kind).model_validate({"kind": kind, **kw})
    torch.manual_seed(0)
    enc = build_encoder(cfg, dim=8, fields=_fields(field, shape))
    batch = {field: torch.randn(2, *shape)}
    tok, raw = enc(batch), enc.patches(batch)
    assert torch.equal(tok.coords, raw.coords) and raw.emb.shape[:2] == tok.emb.shape[:2]
    assert raw.emb.shape[2] == enc.patch_dim
    W = enc.proj.weight.reshape(8, -1)
    torch.testing.assert_close(raw.emb @ W.T + enc.proj.bias, tok.emb, rtol=1e-4, atol=1e-5)
