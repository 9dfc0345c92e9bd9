"""Job functions for tests/security: a module that imports ``os``,
``subprocess`` and ``logging``, as a real jobs module does, so references
such as ``security.refjobs:os.system`` resolve unless the rule refuses them."""

import logging
import os
import subprocess

__all__ = ["Tasks", "harmless", "logging", "os", "run", "subprocess"]

RAN: list[str] = []

#: Another module's function under a name of this one.
run = os.system


def harmless(tag):
    RAN.append(tag)


class Tasks:
    @classmethod
    def klass(cls, tag):
        RAN.append(f"klass:{tag}")

    @staticmethod
    def static(tag):
        RAN.append(f"static:{tag}")

    #: Another module's function as a class attribute.
    shell = staticmethod(subprocess.getoutput)
