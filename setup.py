"""Intake's optional native MSH/PID scanner and ACK writer (engine/hl7/_fast.c); the rest: setup.cfg.

`optional=True`: without a C compiler the install goes on and engine.hl7.scan / engine.hl7.ack read
and answer every message in Python (same results, slower). tests/hl7/test_*_native.py fail if it
is missing.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("engine.hl7._fast", ["engine/hl7/_fast.c"], optional=True)])
