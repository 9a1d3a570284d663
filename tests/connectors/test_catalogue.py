"""One catalogue of channel types: it names every settings model, and config loading reads no other list."""

from engine.config.kinds import SETTINGS_MODELS
from engine.connectors.catalogue import CATALOGUE


def test_catalogue_and_settings_models_name_the_same_types():
    assert set(CATALOGUE) == set(SETTINGS_MODELS)


def test_every_destination_has_a_connector_and_every_source_none():
    for name, kind in CATALOGUE.items():
        assert kind.direction in ("in", "out", "both"), name
        assert (kind.connector is None) == (kind.direction == "in"), name
