"""Configuration: load and validate a YAML file, and describe the result."""

from watchgate.config.describe import describe_config
from watchgate.config.errors import ConfigError
from watchgate.config.loader import load_config
from watchgate.config.model import Config

__all__ = ["Config", "ConfigError", "describe_config", "load_config"]
