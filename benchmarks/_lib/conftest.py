"""The PyTorch port is collected (for its doctests) only where torch is installed."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("torch") else ["torch_bert.py"]
