"""DMP connector (IHE XDS.b ITI-41/18/57 with a signed VIHF over mutual TLS) and DMP simulator.

Entry points: `engine.dmp.client.DmpClient`, `engine.dmp.destination.DmpDestination`,
`engine.dmp.gates.check_publishable`, `engine.sim.dmp.DmpSimulator`; models in
`engine.dmp.model`, settings in `engine.dmp.config`. See docs/dmp.md.
"""
