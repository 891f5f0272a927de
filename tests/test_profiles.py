import subprocess
import sys
import zipfile

import pytest

from vlcli.config import profiles, resolve
from vlcli.errors import ProfileError

RECIPES = [
    "full_finetuning", "multiple_adapters", "half_shared_adapters", "single_adapter", "hyperformer",
    "multiple_compacters", "single_compacter", "multiple_lora", "single_lora", "multiple_prompts", "single_prompt",
]


def test_builtin_profiles_present():
    names = profiles.builtin_names()
    assert set(RECIPES) <= set(names)
    for name in names:
        _, path = profiles.find(name)
        assert profiles.summary(path), f"{name} has no description comment"


@pytest.mark.parametrize("name", profiles.builtin_names())
def test_every_builtin_profile_validates(name):
    for command in ("finetune", "inspect-config"):
        res = resolve(command, None, [name], {}, env={})
        assert res.errors == [], [str(e) for e in res.errors]
        assert res.warnings == [], [str(w) for w in res.warnings]


def test_recipe_values_and_sources():
    res = resolve("inspect-config", None, ["single_lora"], {}, env={})
    s = res.settings
    assert s.peft.use_lora and s.peft.use_single_lora and s.peft.lora_dim == 128 and s.peft.lora_train_biases
    assert s.train.lr == 1e-3 and res.sources["lr"] == "profile:single_lora"
    assert s.model.backbone == "facebook/bart-base" and res.sources["backbone"] == "profile:paper_image"
    assert s.multitask.tasks == ["vqa", "gqa", "nlvr", "caption"] and s.model.downsample
    assert s.derived.feat_dim == 2048 and s.derived.per_task["gqa"].batch_size == 833


def test_profiles_merge_left_to_right_and_cli_wins(tmp_path):
    a = tmp_path / "a.jsonc"
    a.write_text('// a\n{"lr": 0.5, "epochs": 3,}')
    b = tmp_path / "b.json"
    b.write_text('{"lr": 0.25}')
    res = resolve("inspect-config", None, [str(a), str(b)], {"epochs": "7"})
    assert res.settings.train.lr == 0.25 and res.sources["lr"] == f"profile:{b}"
    assert res.settings.train.epochs == 7 and res.sources["epochs"] == "cli"


def test_extends_chain_and_cycle(tmp_path):
    (tmp_path / "base.jsonc").write_text('{"epochs": 2, "lr": 0.1}')
    (tmp_path / "child.jsonc").write_text('{"extends": "base.jsonc", "lr": 0.2}')
    res = resolve("inspect-config", None, [str(tmp_path / "child.jsonc")], {})
    assert res.settings.train.epochs == 2 and res.settings.train.lr == 0.2
    (tmp_path / "x.jsonc").write_text('{"extends": "y.jsonc"}')
    (tmp_path / "y.jsonc").write_text('{"extends": "x.jsonc"}')
    with pytest.raises(ProfileError, match="circular"):
        resolve("inspect-config", None, [str(tmp_path / "x.jsonc")], {})


def test_unknown_profile_suggests():
    with pytest.raises(ProfileError, match="did you mean 'single_lora'"):
        profiles.find("single_lor")


def test_unknown_key_in_profile_names_file(tmp_path):
    p = tmp_path / "p.jsonc"
    p.write_text('{"reduction_factr": 8}')
    res = resolve("inspect-config", None, [str(p)], {})
    assert res.errors[0].rule == "unknown" and str(p) in res.errors[0].message and "reduction_factor" in res.errors[0].message


def test_profile_must_be_object(tmp_path):
    p = tmp_path / "p.json"
    p.write_text("[1, 2]")
    with pytest.raises(ProfileError, match="must be a JSON object"):
        resolve("inspect-config", None, [str(p)], {})


@pytest.mark.parametrize(
    "choice,flag",
    [("adapter", "use_adapter"), ("hyperformer", "use_hyperformer"), ("compacter", "use_compacter"),
     ("lradapter", "use_lradapter"), ("lora", "use_lora")],
)
def test_adapter_shorthand_applies_method_only(choice, flag):
    res = resolve("finetune", "vqa", [], {}, adapter=choice, env={})
    assert res.errors == [], [str(e) for e in res.errors]
    s = res.settings
    assert s.get(flag) is True and s.train.lr == 1e-3
    assert s.multitask.tasks == ["vqa"]  # the recipe's experiment set-up (4 tasks, BART, RN101) is not applied
    assert s.model.backbone == "t5-base" and s.dataset.feature_type == "butd" and s.train.output == "snap/test"
    assert res.sources[flag].startswith(f"adapter:{choice}")


def test_adapter_lora_is_shared_rank_128():
    s = resolve("finetune", "vqa", [], {}, adapter="lora", env={}).settings
    assert s.peft.use_single_lora and s.peft.lora_dim == 128 and s.train.lr == 1e-3


def test_adapter_none_switches_methods_off():
    res = resolve("finetune", None, ["single_adapter"], {}, adapter="none", env={})
    assert not res.settings.peft.use_adapter and not res.settings.peft.use_lora


def test_adapter_multiple_variant_via_flag():
    s = resolve("finetune", "vqa", [], {"use_single_lora": "false"}, adapter="lora", env={}).settings
    assert s.peft.use_lora and not s.peft.use_single_lora


def test_unknown_adapter():
    with pytest.raises(ProfileError, match="did you mean 'lora'"):
        resolve("finetune", "vqa", [], {}, adapter="lorra")


def test_wheel_ships_builtin_profiles(tmp_path):
    """`pip install` (not editable) must carry the profiles inside the package."""
    from tests.conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [wheel] = list(tmp_path.glob("vlcli-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "vlcli/_profiles/single_adapter.jsonc" in names
    assert "vlcli/_profiles/paper_image.jsonc" in names
