from megafin.config.errors import ConfigError
from megafin.config.load import config_to_dict, load_config
from megafin.config.schema import Config
from megafin.config.validate import validate

__all__ = ["Config", "ConfigError", "config_to_dict", "load_config", "validate"]
