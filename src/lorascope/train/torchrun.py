"""torchrun integration (placeholder until data-parallel training lands): single process runs return None."""

from __future__ import annotations

import os


def launch_if_distributed(cfg, spec, out_dir, data_dir):
    """Under torchrun (WORLD_SIZE > 1) data-parallel training is not implemented yet: say so clearly."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from lorascope.errors import LorascopeError

        raise LorascopeError("data-parallel training under torchrun is not implemented yet (single process only)")
    return None
