"""Suite-wide settings: tests use tiny models, for which one intra-op thread is fastest (and two
threads per process thrash when pytest shares 2 cores with anything else)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
