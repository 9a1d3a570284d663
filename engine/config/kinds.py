"""Every channel type's settings model, by its `type:` name: the one list config loading reads.

engine/connectors/catalogue.py adds what each type does (direction, connector, services, checks);
a test holds the two lists equal.
"""

from __future__ import annotations

from engine.config.channels import ChannelSettings, MllpInSettings, MllpOutSettings
from engine.config.dmp import DmpChannel
from engine.config.mssante import MssanteChannel

SETTINGS_MODELS: dict[str, type[ChannelSettings]] = {
    "mllp-in": MllpInSettings,
    "mllp-out": MllpOutSettings,
    "dmp": DmpChannel,
    "mssante": MssanteChannel,
}
