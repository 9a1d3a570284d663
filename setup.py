"""The optional native MSH/PID scanner (engine/hl7/_fast.c); everything else is in setup.cfg.

`optional=True`: without a C compiler the install goes on and engine.hl7.scan reads every
message in Python (same results, slower). tests/hl7/test_scan_native.py fails if it is missing.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("engine.hl7._fast", ["engine/hl7/_fast.c"], optional=True)])
