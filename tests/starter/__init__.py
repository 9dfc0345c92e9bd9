"""A project laid out as pyramid-cookiecutter-starter 2.1 renders it
(``backend = sqlalchemy``), with pyramid_scheduler added as the docs say.

Its package is ``starter.starterapp`` here (``myproject`` in a rendered
project, installed as ``egg:myproject``); the INI files name it with
``call:``. docs/starter.rst shows this code.
"""
