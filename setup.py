"""Intake's optional native hot path (engine/_hotpath.c); the rest of the package: setup.cfg.

It reads MSH/PID, writes the ACK and keeps the duplicate-key filter in the common case. With
`optional=True`, without a C compiler the install goes on and the engine does all of it in Python
(same results, slower); tests/hl7/test_*_native.py and tests/journal/test_keyfilter.py then fail.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("engine._hotpath", ["engine/_hotpath.c"], optional=True)])
