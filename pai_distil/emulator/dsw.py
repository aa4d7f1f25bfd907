"""The PAI-DSW instance API (filled in with the `dsw` commands)."""

from .pop import pop_router


def router(emulator):
    return pop_router()
