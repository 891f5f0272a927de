"""The built-in demo: a synthetic "shapes" world in the original data layout and tiny backbones (docs/demo.md)."""

from vlcli.demo.backbone import DEMO_SIZES, demo_config, make_backbones
from vlcli.demo.world import DEFAULT_SIZES, DemoWorldError, load_scenes, make_world, world_corpus

__all__ = [
    "DEFAULT_SIZES",
    "DEMO_SIZES",
    "DemoWorldError",
    "demo_config",
    "load_scenes",
    "make_backbones",
    "make_world",
    "world_corpus",
]
