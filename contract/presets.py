"""The families and presets a job may name, read from the family registry (no torch here: the API
server validates specs with these)."""

from wtacrs.families import FAMILIES, Family

__all__ = ["FAMILIES", "PRESETS", "PRETRAINED"]


def _presets(families: dict[str, Family]) -> dict[str, tuple[str, dict]]:
    presets: dict[str, tuple[str, dict]] = {}
    for name, record in families.items():
        for preset, overrides in record.presets.items():
            if preset in presets:
                raise ValueError(f"preset {preset!r} is defined by families {presets[preset][0]!r} and {name!r}")
            presets[preset] = (name, dict(overrides))
    return presets


# preset -> (family, config overrides)
PRESETS: dict[str, tuple[str, dict]] = _presets(FAMILIES)
# presets whose real weights and tokenizer ship in an installed package (module name)
PRETRAINED: dict[str, str] = {p: m for record in FAMILIES.values() for p, m in record.pretrained.items()}
