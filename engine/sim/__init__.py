"""Simulators of the national services the engine cannot reach from a test bench: features that
integrators use (`pfi sim dmp`, `pfi mss sim`), kept apart from the product's connectors.

- `engine.sim.dmp`: the DMP (ITI-41/18/57 over mutual TLS), checking what it receives as strictly
  as the national service (`engine.sim.dmp_checks`);
- `engine.sim.mss`: an MSSanté operator (SMTP submission and IMAP over TLS, in memory).
"""
