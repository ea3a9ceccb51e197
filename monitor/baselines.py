"""Per-slice baselines given by the provider (a service card's tested rates).

File format (YAML or JSON)::

    baselines:
      - model: asr-en          # optional; omitted or "*" applies to every model
        slice: {accent: scottish, noise: quiet}   # {} is the whole population
        metric: wer            # optional; defaults to the config's first metric
        value: 0.12

A slice the file does not list learns its baseline from the reference period (unless
``baseline.fallback_to_reference`` is false, in which case it is not tested for drift).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitor.config import ConfigError


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "*"
    slice: dict[str, str] = Field(default_factory=dict)
    metric: str | None = None
    value: float = Field(ge=0)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    baselines: list[_Entry]


class Baselines:
    def __init__(self, entries: dict[tuple[str, frozenset[tuple[str, str]], str], float]):
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: Path, default_metric: str) -> Baselines:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            parsed = _File.model_validate(data)
        except OSError as exc:
            raise ConfigError(str(path), [("", f"cannot read: {exc.strerror or exc}")]) from None
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), [("", f"not valid YAML/JSON: {exc}")]) from None
        except ValidationError as exc:
            problems = [(".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "["), e["msg"])
                        for e in exc.errors()]
            raise ConfigError(str(path), problems) from None
        entries = {}
        for e in parsed.baselines:
            entries[(e.model, frozenset(e.slice.items()), e.metric or default_metric)] = e.value
        return cls(entries)

    def lookup(self, model: str, slice_: dict[str, str], metric: str) -> float | None:
        items = frozenset(slice_.items())
        value = self._entries.get((model, items, metric))
        if value is None:
            value = self._entries.get(("*", items, metric))
        return value


class Lineage:
    """Which tracked combinations are ancestors of which, nearest first.

    A slice's ancestors are the slices with one of its ``dimension = value`` pairs removed,
    recursively up to the population ``{}``. Only tracked combinations hold estimates, so for
    each combination this lists, level by level (one pair removed, two, ..., all), the tracked
    combinations at that level that it contains, with where their dimensions sit in its values.

    >>> Lineage(((), (0,), (1,), (0, 1))).levels[3]
    [[(1, (0,)), (2, (1,))], [(0, ())]]
    """

    def __init__(self, combos: tuple[tuple[int, ...], ...]):
        self.levels: list[list[list[tuple[int, tuple[int, ...]]]]] = []
        for combo in combos:
            levels = []
            for size in range(len(combo) - 1, -1, -1):
                level = [(j, tuple(combo.index(d) for d in sub)) for j, sub in enumerate(combos)
                         if len(sub) == size and set(sub) <= set(combo)]
                if level:
                    levels.append(level)
            self.levels.append(levels)

    def ancestors(self, combo: int, values: tuple[str, ...]) -> list[list[tuple[int, tuple[str, ...]]]]:
        """``(combination, values)`` of each ancestor, grouped by level, nearest level first."""
        return [[(j, tuple(values[p] for p in pos)) for j, pos in level] for level in self.levels[combo]]
