"""Typed study configuration: schema, YAML loading with dotted overrides, stable hashing."""

from lorascope.config.load import config_hash, load_config, parse_overrides, result_hash, section_hash
from lorascope.config.schema import StudyConfig

__all__ = ["StudyConfig", "config_hash", "load_config", "parse_overrides", "result_hash", "section_hash"]
