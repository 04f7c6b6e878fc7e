"""Tests for the generic registry, decoder creation and dataclass configs (YAML + dotted overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

import decodelab
from decodelab.config import (
    apply_overrides,
    check_keys,
    from_dict,
    load_config,
    load_yaml,
    parse_value,
    register_to_config,
    to_dict,
)
from decodelab.registry import DECODERS, MODELS, Registry
from decodelab.speculative import create_decoder, list_decoders

# ----------------------------------------------------------------------------- registry


def test_register_get_create_list() -> None:
    reg = Registry("widget")

    @reg.register("small", kind="a", size=1)
    def small(width: int = 1, depth: int = 2) -> tuple[int, int]:
        """A small widget.

        More text.
        """
        return width, depth

    @reg.register(kind="b")
    def large_widget(**kw):
        return kw

    assert "small" in reg and "large_widget" in reg and "medium" not in reg
    entry = reg.get("small")
    assert (entry.kind, entry.description, entry.meta) == ("a", "A small widget.", {"size": 1})
    # None values are dropped, so CLI/config settings can be forwarded blindly.
    assert reg.create("small", width=5, depth=None) == (5, 2)
    assert reg.create("large_widget", a=None, b=0) == {"b": 0}
    assert reg.list() == ["large_widget", "small"]
    assert reg.list("s*") == ["small"]
    assert reg.list(kind="b") == ["large_widget"]
    assert [e.name for e in reg.entries()] == ["large_widget", "small"]


def test_register_rejects_bad_and_duplicate_names() -> None:
    reg = Registry("widget")

    def f():
        return 1

    def g():
        return 2

    reg.register("w")(f)
    reg.register("w")(f)  # re-registering the same function (a module re-import) is fine
    with pytest.raises(ValueError, match="already registered"):
        reg.register("w")(g)
    assert reg.create("w") == 1
    for bad in ("a/b", "a b", "tab\tname", "Upper", "double__underscore", "_lead"):
        with pytest.raises(ValueError, match="snake_case"):
            reg.register(bad)(g)


def test_names_have_one_style_and_hyphens_spell_the_same_name() -> None:
    reg = Registry("widget")

    @reg.register("fmnist-c2i")
    def f():
        return 1

    assert reg.list() == ["fmnist_c2i"]  # registered in snake_case
    assert "fmnist-c2i" in reg and "fmnist_c2i" in reg and reg.create("fmnist-c2i") == 1
    assert reg.list("fmnist-*") == ["fmnist_c2i"]
    assert reg.get("fmnist_c2i").module == __name__  # the entry leads to its file
    for registry in (MODELS, DECODERS):
        for name in registry.list():
            assert name == name.lower() and "-" not in name, name


def test_every_decoder_entry_names_its_module() -> None:
    assert DECODERS.get("sjd").module == "decodelab.speculative.sjd"
    assert DECODERS.get("ar").module == "decodelab.speculative.ar"


def test_unknown_name_lists_registered_and_suggests() -> None:
    reg = Registry("widget")
    for name in ("alpha", "beta", "gamma"):
        reg.register(name)(lambda: None)
    with pytest.raises(ValueError) as e:
        reg.get("alpah")
    msg = str(e.value)
    assert "unknown widget 'alpah'" in msg
    assert "Did you mean 'alpha'" in msg
    assert "alpha, beta, gamma" in msg
    with pytest.raises(ValueError) as e:
        reg.create("zzzzzz")
    assert "Did you mean" not in str(e.value) and "alpha, beta, gamma" in str(e.value)
    with pytest.raises(ValueError, match=r"\(none\)"):
        Registry("thing").get("x")


def test_unknown_model_name_lists_models_with_hint() -> None:
    with pytest.raises(ValueError) as e:
        decodelab.create_model("test_gtp")
    msg = str(e.value)
    assert "Did you mean 'test_gpt'" in msg
    for name in ("llamagen_gpt_b", "llamagen_gpt_xl", "test_gpt", "test_gpt_t2i", "test_vq"):
        assert name in msg
    with pytest.raises(ValueError, match="Did you mean 'llamagen_gpt_b'"):
        MODELS.get("llamagen_gpt_bb")


def test_model_listing_by_kind() -> None:
    gens = decodelab.list_models(kind="generator")
    toks = decodelab.list_models(kind="tokenizer")
    assert {"llamagen_gpt_b", "llamagen_gpt_l", "llamagen_gpt_xl", "test_gpt", "test_gpt_t2i"} <= set(gens)
    assert "test_vq" in toks and not set(gens) & set(toks)
    assert decodelab.list_models("llamagen_gpt_*") == sorted(n for n in gens if n.startswith("llamagen_gpt_"))
    model = decodelab.create_model("test_gpt", n_layer=1, num_classes=None)  # None -> preset default
    assert len(model.layers) == 1 and model.num_classes == 10


def test_unknown_decoder_name() -> None:
    assert "ar" in list_decoders() and "ar" in decodelab.list_decoders()
    with pytest.raises(ValueError) as e:
        create_decoder("arr")
    assert "Did you mean 'ar'" in str(e.value) and "Registered decoders" in str(e.value)


def test_create_decoder_rejects_unknown_kwargs() -> None:
    with pytest.raises(ValueError) as e:
        create_decoder("ar", bogus=1)
    msg = str(e.value)
    assert "'bogus'" in msg and "decoder 'ar'" in msg and "valid arguments: (none)" in msg
    assert create_decoder("ar", bogus=None).name == "ar"  # None values are dropped first


@pytest.fixture
def kw_decoder():
    """A temporary decoder with typed keyword arguments, removed after the test."""

    class _KwDecoder:
        def __init__(self, window: int = 4, threshold: float = 0.5) -> None:
            self.window, self.threshold = window, threshold

    DECODERS.register("test_kw_decoder")(_KwDecoder)
    yield "test_kw_decoder"
    DECODERS._entries.pop("test_kw_decoder", None)


def test_create_decoder_names_valid_arguments(kw_decoder: str) -> None:
    dec = create_decoder(kw_decoder, window=7)
    assert (dec.window, dec.threshold) == (7, 0.5)
    with pytest.raises(ValueError) as e:
        create_decoder(kw_decoder, windw=7, other=1)
    msg = str(e.value)
    assert "'other'" in msg and "'windw'" in msg
    assert "valid arguments: window, threshold" in msg


# ----------------------------------------------------------------------------- configs


@dataclass
class ModelCfg:
    dim: int = 32
    n_layer: int = 2


@dataclass
class RunCfg:
    model: ModelCfg = field(default_factory=ModelCfg)
    lr: float = 1e-3
    name: str = "run"
    tags: list[str] = field(default_factory=list)
    draft: ModelCfg | None = None


def test_from_dict_nested_and_to_dict_round_trip() -> None:
    cfg = from_dict(RunCfg, {"model": {"dim": 64}, "lr": 0.5, "draft": {"n_layer": 1}})
    assert isinstance(cfg.model, ModelCfg) and cfg.model == ModelCfg(dim=64, n_layer=2)
    assert isinstance(cfg.draft, ModelCfg) and cfg.draft.n_layer == 1
    assert cfg.lr == 0.5 and cfg.name == "run"
    d = to_dict(cfg)
    assert d == {
        "model": {"dim": 64, "n_layer": 2},
        "lr": 0.5,
        "name": "run",
        "tags": [],
        "draft": {"dim": 32, "n_layer": 1},
    }
    assert from_dict(RunCfg, d) == cfg


def test_from_dict_unknown_key_names_key_and_valid_ones() -> None:
    with pytest.raises(ValueError) as e:
        from_dict(RunCfg, {"lr": 1.0, "learning_rate": 2.0})
    msg = str(e.value)
    assert "'learning_rate'" in msg and "RunCfg" in msg
    assert "valid keys: draft, lr, model, name, tags" in msg
    with pytest.raises(ValueError) as e:
        from_dict(RunCfg, {"model": {"dims": 3}})
    assert "'dims'" in str(e.value) and "RunCfg.model" in str(e.value) and "dim, n_layer" in str(e.value)
    with pytest.raises(ValueError, match="must be a mapping"):
        from_dict(RunCfg, [1, 2])  # type: ignore[arg-type]


def test_check_keys() -> None:
    check_keys(["a"], ["a", "b"], "here")
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'c', 'd' in here; valid keys: a, b"):
        check_keys(["d", "a", "c"], ["b", "a"], "here")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("0.25", 0.25),
        ("1e-3", 1e-3),
        ("[1, 2]", [1, 2]),
        ("True", True),
        ("true", True),
        ("FALSE", False),
        ("null", None),
        ("None", None),
        ("'quoted'", "quoted"),
        ("plain words", "plain words"),
        ("path/to/x.yaml", "path/to/x.yaml"),
    ],
)
def test_parse_value(text: str, value) -> None:
    out = parse_value(text)
    assert out == value and type(out) is type(value)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_load_config_merges_defaults_and_overrides(tmp_path: Path) -> None:
    p = write_yaml(tmp_path / "run.yaml", "model:\n  dim: 48\nname: exp1\n")
    cfg = load_config(RunCfg, p)
    assert cfg == RunCfg(model=ModelCfg(dim=48, n_layer=2), name="exp1")
    # Overrides may name fields absent from the file (they keep their defaults otherwise).
    cfg = load_config(RunCfg, p, ["model.n_layer=6", "--lr=0.1", "tags=['a', 'b']", "name=exp 2"])
    assert cfg.model == ModelCfg(dim=48, n_layer=6)
    assert cfg.lr == 0.1 and cfg.tags == ["a", "b"] and cfg.name == "exp 2"
    # An empty file gives the defaults.
    assert load_config(RunCfg, write_yaml(tmp_path / "empty.yaml", "")) == RunCfg()


def test_load_config_unknown_keys(tmp_path: Path) -> None:
    p = write_yaml(tmp_path / "bad.yaml", "model:\n  dim: 48\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError) as e:
        load_config(RunCfg, p)
    assert "'learning_rate'" in str(e.value) and "lr" in str(e.value) and "bad.yaml" in str(e.value)
    p = write_yaml(tmp_path / "bad_nested.yaml", "model:\n  width: 48\n")
    with pytest.raises(ValueError) as e:
        load_config(RunCfg, p)
    assert "'width'" in str(e.value) and "dim, n_layer" in str(e.value)


def test_unknown_dotted_override_errors(tmp_path: Path) -> None:
    p = write_yaml(tmp_path / "run.yaml", "name: x\n")
    with pytest.raises(ValueError) as e:
        load_config(RunCfg, p, ["model.dimm=3"])
    msg = str(e.value)
    assert "'model.dimm'" in msg and "dim, n_layer" in msg
    with pytest.raises(ValueError, match="'modle'"):
        load_config(RunCfg, p, ["modle.dim=3"])
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config(RunCfg, p, ["model.dim"])
    with pytest.raises(ValueError, match="'lr.x'"):  # descending into a scalar
        load_config(RunCfg, p, ["lr.x=1"])


def test_apply_overrides_in_place() -> None:
    data = {"a": {"b": 1, "c": {"d": "x"}}, "e": 2}
    out = apply_overrides(data, ["a.c.d=hello", "e=[3]"])
    assert out is data and data == {"a": {"b": 1, "c": {"d": "hello"}}, "e": [3]}


def test_load_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="could not parse"):
        load_yaml(write_yaml(tmp_path / "broken.yaml", "a: [1, 2\n"))
    with pytest.raises(ValueError, match="mapping at the top level"):
        load_yaml(write_yaml(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_register_to_config_records_bound_arguments() -> None:
    class Thing:
        @register_to_config
        def __init__(self, a: int, b: tuple = (1, 2), *, c: str = "x", **kwargs) -> None:
            self.a = a

    t = Thing(5, c="y", extra=ModelCfg(dim=3))
    assert t.a == 5
    assert t.config == {"a": 5, "b": [1, 2], "c": "y", "extra": {"dim": 3, "n_layer": 2}}
    gpt = decodelab.create_model("test_gpt", n_layer=1)
    assert gpt.config["n_layer"] == 1 and gpt.config["dim"] == 32 and gpt.config["rope_base"] == 10000.0


def test_config_scalars_are_type_checked() -> None:
    """A config field's scalar type is enforced: no NaN learning rate, no silent int truncation."""
    import dataclasses

    from decodelab.config import from_dict

    @dataclasses.dataclass
    class C:
        lr: float = 0.1
        steps: int = 1
        flag: bool = False
        name: str = "x"
        opt: float | None = None

    assert from_dict(C, {"lr": "1e-3", "steps": 4.0, "opt": None}) == C(lr=0.001, steps=4, opt=None)
    assert from_dict(C, {"lr": 2}).lr == 2
    for bad, match in (
        ({"lr": "nan"}, "C.lr must be a finite number"),
        ({"lr": float("inf")}, "finite"),
        ({"lr": "fast"}, "C.lr must be a number"),
        ({"steps": 2.5}, "C.steps must be an integer"),
        ({"steps": True}, "integer"),
        ({"flag": "yes"}, "true or false"),
        ({"name": 3}, "string"),
    ):
        with pytest.raises(ValueError, match=match):
            from_dict(C, bad)
