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
         [], ["vqa"], [1, 2], {"a": 1}, None]


def random_config(rng: random.Random) -> dict:
    names = list(FIELDS)
    config = {}
    for name in rng.sample(names, rng.randint(1, 6)):
        if rng.random() < 0.15:
            default = FIELDS[name].default
            config[name] = default
        else:
            config[name] = rng.choice(NASTY)
    return config


def test_two_thousand_random_configurations_never_raise_anything_but_vlcli_errors():
    rng = random.Random(20261205)
    tasks = [None, *KNOWN_TASKS, "multitask", "nope", "inf"]
    profiles = [[], *([p] for p in profile_mod.builtin_names())]
    adapters = [None, "lora", "adapter", "prompt", "none", "bogus"]
    outcomes = {"ok": 0, "error": 0}
    slowest = 0.0
    for _ in range(2000):
        config = random_config(rng)
        task, prof, adapter = rng.choice(tasks), rng.choice(profiles), rng.choice(adapters)
        t0 = time.perf_counter()
        try:
            api.load_settings(prof, task=task, adapter=adapter, **config)
            outcomes["ok"] += 1
        except VlcliError:
            outcomes["error"] += 1
        except Exception as exc:  # the defect this test exists to catch
            raise AssertionError(f"{type(exc).__name__}: {exc} for profiles={prof} adapter={adapter} {config!r}") from exc
        slowest = max(slowest, time.perf_counter() - t0)
    assert outcomes["ok"] > 40 and outcomes["error"] > 1000, outcomes  # both outcomes really occur
    assert slowest < 2.0, f"one configuration took {slowest:.1f} s"
