"""PAI-DLC (placeholder, filled in below)."""
from .pop import pop_router


def router(emulator):
    return pop_router()
