"""Put on PYTHONPATH by test_torch_layouts.py: every process of the test (spawned workers too)
patches torch into the layout named by ``CDL_TORCH_LAYOUT`` before anything else runs."""

import os

if os.environ.get("CDL_TORCH_LAYOUT"):
    import tests.core.torch_layouts as torch_layouts

    torch_layouts.apply(os.environ["CDL_TORCH_LAYOUT"])
