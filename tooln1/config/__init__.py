"""``tooln1-train``'s configuration: the typed schema of every key (:mod:`.schema`), the named
presets a config spec picks (:mod:`.presets`), the checks run before anything is built
(:mod:`.validation`), config files (:mod:`.files`), the help and docs rendered from the schema
(:mod:`.reference`) and the runtime objects a config describes (:mod:`.runtime`, which needs JAX and
is imported on its own)."""
from tooln1.config.files import load_config, load_file
from tooln1.config.presets import (
    DATA,
    MESHES,
    MODELS,
    RECIPES,
    REWARDS,
    apply_data,
    apply_mesh,
    apply_model,
    apply_recipe,
    apply_reward,
    apply_spec,
    parse_spec,
)
from tooln1.config.schema import Config, ConfigError, base_config, typed
from tooln1.config.validation import (
    check_override_keys,
    mesh_batch_shards,
    parse_ratios,
    source_kind,
    split_specs,
    validate_config,
)

__all__ = [
    "DATA", "MESHES", "MODELS", "RECIPES", "REWARDS", "Config", "ConfigError", "apply_data", "apply_mesh",
    "apply_model", "apply_recipe", "apply_reward", "apply_spec", "base_config", "check_override_keys", "load_config",
    "load_file", "mesh_batch_shards", "parse_ratios", "parse_spec", "source_kind", "split_specs", "typed",
    "validate_config",
]
