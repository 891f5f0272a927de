"""Configuration: the Settings model, JSONC profiles, compatibility rules and `load` resolution."""

from vlcli.config.resolve import Resolution, resolve
from vlcli.config.settings import ALIASES, FIELDS, SECTION_MODELS, SECTION_TITLES, Settings

__all__ = ["ALIASES", "FIELDS", "SECTION_MODELS", "SECTION_TITLES", "Resolution", "Settings", "resolve"]
