"""diffusers schedulers of the conditional pipelines' exports: built from a stored config, and made to run a searched
(non-uniform) schedule when a stock pipeline calls ``set_timesteps(num_inference_steps)``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from search.errors import ConfigError


def scheduler_from_config(config: Mapping[str, Any]) -> Any:
    """The diffusers scheduler a config names (its extra ``timesteps`` key left out)."""
    import diffusers

    cfg = {k: v for k, v in config.items() if k != "timesteps"}
    cls = getattr(diffusers, str(cfg.get("_class_name", "")), None)
    if cls is None:
        raise ConfigError("scheduler", f"unknown diffusers scheduler {cfg.get('_class_name')!r}")
    return cls.from_config(cfg)


def searched_scheduler(cls: type, timesteps: tuple[int, ...]) -> type:
    """A subclass of the scheduler class ``cls`` whose ``set_timesteps`` runs ``timesteps`` unless told others."""

    def set_timesteps(self: Any, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any) -> Any:
        if kwargs.get("timesteps") is None:
            kwargs["timesteps"] = list(timesteps)
        return cls.set_timesteps(self, None, device, **kwargs)

    searched = type(cls.__name__, (cls,), {"set_timesteps": set_timesteps, "searched_timesteps": timesteps})
    searched.__module__ = cls.__module__
    return searched


def searched_scheduler_for(scheduler_config: Mapping[str, Any], timesteps: Sequence[int]) -> Any:
    """The scheduler of ``scheduler_config`` running ``timesteps`` whenever a pipeline calls it without explicit
    ones; ConfigError (``solver``) for a scheduler class that cannot take explicit timesteps."""
    scheduler = scheduler_from_config(scheduler_config)
    if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ConfigError(
            "solver",
            f"diffusers' {type(scheduler).__name__} cannot run a searched (non-uniform) schedule: sample this "
            "export with its sampler (export.sample), or search with solver dpmsolver++",
        )
    return searched_scheduler(type(scheduler), tuple(int(t) for t in timesteps)).from_config(scheduler.config)
