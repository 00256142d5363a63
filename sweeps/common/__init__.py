"""Small helpers the example training scripts share.

The examples put ``sweeps/`` on ``sys.path`` and import from here, so each ``train.py``
stays short: ``args`` reads ``--key=value`` overrides, ``data`` loads the bundled
scikit-learn data sets, ``training`` holds the PyTorch loop (device, optimiser, one epoch).
``args`` and ``data`` do not import torch, so the scikit-learn example can use them too.
"""
