"""Modbus register maps for power meters: data files plus the schema they must follow.

A register map says, for each quantity a meter exposes (total active power, cumulative active
energy), where it lives and how to decode it: register address (0-based, as sent on the wire),
register kind (holding or input), data type, word and byte order, scale factor and unit. The
probe multiplies the decoded number by ``scale`` and then converts ``unit`` to W or J.

Shipped maps are the ``*.toml`` files beside this module, one per meter family, each citing the
vendor document its addresses were checked against. An operator can also give a map inline in
the agent's config, with the same fields.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DataType = Literal["uint16", "int16", "uint32", "int32", "float32", "uint64", "int64", "float64"]
Unit = Literal["W", "kW", "MW", "J", "Wh", "kWh", "MWh"]
POWER_UNITS = ("W", "kW", "MW")
ENERGY_UNITS = ("J", "Wh", "kWh", "MWh")

#: Registers (16-bit words) each data type occupies.
WORDS: dict[str, int] = {
    "uint16": 1, "int16": 1,
    "uint32": 2, "int32": 2, "float32": 2,
    "uint64": 4, "int64": 4, "float64": 4,
}

#: Factor from each unit to the base unit the wire carries (W for power, J for energy).
TO_BASE: dict[str, float] = {
    "W": 1.0, "kW": 1e3, "MW": 1e6,
    "J": 1.0, "Wh": 3600.0, "kWh": 3.6e6, "MWh": 3.6e9,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Register(_Strict):
    """One quantity's location and encoding."""

    address: int = Field(ge=0, le=65535, description="0-based register address (wire address).")
    kind: Literal["holding", "input"] = Field(
        description="Holding registers (function 03) or input registers (function 04)."
    )
    type: DataType
    word_order: Literal["big", "little"] = Field(
        default="big", description="big: the most significant register comes first."
    )
    byte_order: Literal["big", "little"] = Field(
        default="big", description="big: each register's high byte comes first (Modbus norm)."
    )
    scale: float = Field(default=1.0, gt=0, description="Multiplier applied to the raw value.")
    unit: Unit = Field(description="Unit of the raw value after scaling.")

    @property
    def count(self) -> int:
        return WORDS[self.type]

    @model_validator(mode="after")
    def _fits_address_space(self) -> Register:
        if self.address + self.count - 1 > 65535:
            raise ValueError(f"{self.type} at address {self.address} runs past register 65535")
        return self

    def to_base(self, raw: float) -> float:
        """Turn a decoded register value into W or J."""
        return raw * self.scale * TO_BASE[self.unit]


class RegisterMap(_Strict):
    """Where one meter family keeps total active power and cumulative active energy."""

    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    sources: list[str] = Field(
        default_factory=list, description="Documents the addresses were checked against."
    )
    power: Register | None = Field(default=None, description="Total active power.")
    energy: Register | None = Field(default=None, description="Cumulative active energy.")

    @model_validator(mode="after")
    def _reads_something(self) -> RegisterMap:
        if self.power is None and self.energy is None:
            raise ValueError(f"register map {self.name!r} defines neither power nor energy")
        if self.power is not None and self.power.unit not in POWER_UNITS:
            raise ValueError(f"power unit must be one of {POWER_UNITS}, not {self.power.unit!r}")
        if self.energy is not None and self.energy.unit not in ENERGY_UNITS:
            raise ValueError(
                f"energy unit must be one of {ENERGY_UNITS}, not {self.energy.unit!r}"
            )
        return self


class UnknownMapError(ValueError):
    pass


def available_maps() -> list[str]:
    """Names of the shipped register maps (file names without ``.toml``)."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml"))


def load_map(name: str) -> RegisterMap:
    """Load a shipped register map by name; an unknown name lists the valid ones."""
    names = available_maps()
    if name not in names:
        raise UnknownMapError(f"unknown register map {name!r}; shipped maps: {', '.join(names)}")
    source = resources.files(__name__).joinpath(f"{name}.toml")
    with source.open("rb") as fh:
        data = tomllib.load(fh)
    try:
        return RegisterMap.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"shipped register map {source.name} is invalid: {exc}") from exc
