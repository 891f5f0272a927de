"""Fuzz: random configurations through api.load_settings are accepted or a VlcliError — never another exception."""

from __future__ import annotations

import random
import time

from vlcli import api
from vlcli.config import profiles as profile_mod
from vlcli.config.settings import FIELDS
from vlcli.config.types import KNOWN_TASKS
from vlcli.errors import VlcliError

NASTY = ["", " ", "inf", "-inf", "nan", "NaN", "-1", "0", "1", "2", "0.5", "1e-3", "2147483648", "-2147483649",
         "1e309", "9" * 40, "~nouser/x", "~/x", "a" * 300, "/" + "b" * 5000, "x\x00y", "[a]", "{}", "vqa,,gqa",
         "none", "null", "true", "false", "yes", "(1,2)", "3x3", "0,0", "-5,7", "1,2,3", "auto", "t5-bse",
         "t5-base", "facebook/bart-base", "/dev/null", "/", ".", "..", "snap/test", "vqa", "vqa/acc", "vqa/accuracy",
         "average", "RN50", "raw_RN50", "butd", "\u00e9\u00e8", "\n", "--lr", "=", "a=b", "vqa.questions=/x",
         True, False, 0, -1, 1, 3, 10**12, -(10**12), 0.0, 1.5, float("nan"), float("inf"), -float("inf"),
         [], ["vqa"], [1, 2], {"a": 1}, None,
         # undecodable command-line bytes, other file-system trouble, odd numbers
         "\udcff", "x\udcffy", "\ud800", "~root/x", "a/" * 3000, "/tmp/" + "c" * 256 + "/x", "vqa\x00", "t5-base\x00",
         "1_000", "0x10", "+5", " 5 ", "5.0", "1e3", "-0.0", "4294967296", 2**63, -(2**63), 1e-320, "224,0", "0x0",
         "448,448,448", [[1], [2]], [224.5, 224], {"vqa.questions": "\udcff"}]


def random_config(rng: random.Random) -> dict:
    names = list(FIELDS)
    config = {}
    for name in rng.sample(names, rng.randint(1, 6)):
        if rng.random() < 0.35:  # keep a share of configurations valid so that both outcomes are exercised
            default = FIELDS[name].default
            config[name] = default
        else:
            config[name] = rng.choice(NASTY)
    return config


def test_two_thousand_random_configurations_never_raise_anything_but_vlcli_errors():
    rng = random.Random(20261205)
    tasks = [None, *KNOWN_TASKS, "multitask", "nope", "inf", "", "\udcff"]
    profiles = [[], *([p] for p in profile_mod.builtin_names()), ["~nouser/p.json"], ["a" * 300], ["x\x00y"]]
    adapters = [None, "lora", "adapter", "prompt", "none", "bogus", "\udcff"]
    commands = ["finetune", "pretrain", "eval", "submit", "inspect-config", "extract-features", None]
    api.load_settings()  # imports and caches warm before the clock starts
    outcomes = {"ok": 0, "error": 0}
    slowest = 0.0
    for _ in range(2000):
        config = random_config(rng)
        task, prof, adapter = rng.choice(tasks), rng.choice(profiles), rng.choice(adapters)
        command = rng.choice(commands)
        t0 = time.perf_counter()
        try:
            api.load_settings(prof, task=task, adapter=adapter, command=command, **config)
            outcomes["ok"] += 1
        except VlcliError:
            outcomes["error"] += 1
        except Exception as exc:  # the defect this test exists to catch
            raise AssertionError(f"{type(exc).__name__}: {exc!r} for command={command} task={task!r} profiles={prof} "
                                 f"adapter={adapter!r} {config!r}") from exc
        slowest = max(slowest, time.perf_counter() - t0)
    assert outcomes["ok"] > 50 and outcomes["error"] > 1000, outcomes  # both outcomes really occur
    assert slowest < 1.0, f"one configuration took {slowest:.2f} s"
