"""Typed, documented run configuration: presets (TOML) -> validated dataclasses.

Standard library only, so the TUI can validate a launch form without importing torch.
"""

from dswb.config.load import apply_overrides, config_to_toml, load_config, parse_overrides
from dswb.config.schema import Config

__all__ = ["Config", "apply_overrides", "config_to_toml", "load_config", "parse_overrides"]
