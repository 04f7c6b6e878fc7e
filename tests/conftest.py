"""Test-wide isolation: no network, no user caches, no user data folders.

Every test runs with ``HF_HUB_OFFLINE=1`` and with ``HOME``, ``DECODELAB_CACHE``,
``DECODELAB_DATA``, ``HF_HOME`` and ``TORCH_HOME`` pointing at fresh temporary folders, so a test
can neither download anything nor read or write the user's ``~/.cache`` (a test that wants a cache
or a data folder fills the temporary one). Outbound sockets to non-loopback addresses are refused.
Torch runs single-threaded (``DECODELAB_TEST_THREADS`` overrides it).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

# Set before anything imports huggingface_hub / transformers: both read these flags at import time.
for _flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_flag] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# The test models are tiny: intra-op threads only add overhead, and on a shared 2-core machine
# OpenMP's spin-waiting makes a run several times slower. Set DECODELAB_TEST_THREADS to change it.
torch.set_num_threads(int(os.environ.get("DECODELAB_TEST_THREADS", "1")))

_LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _is_remote(sock: socket.socket, address) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    host = address[0] if isinstance(address, tuple) else address
    return str(host) not in _LOOPBACK


def _guarded_connect(self: socket.socket, address) -> None:
    if _is_remote(self, address):
        raise OSError(f"network access is disabled in decodelab's tests (tried to connect to {address!r})")
    return _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address) -> int:
    if _is_remote(self, address):
        raise OSError(f"network access is disabled in decodelab's tests (tried to connect to {address!r})")
    return _connect_ex(self, address)


@pytest.fixture(autouse=True)
def _offline_isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every cache / data / home variable at a fresh temporary folder and forbid the network."""
    root = tmp_path_factory.mktemp("env")
    dirs = {
        "HOME": root / "home",
        "DECODELAB_CACHE": root / "decodelab_cache",
        "DECODELAB_DATA": root / "decodelab_data",
        "HF_HOME": root / "hf_home",
        "HF_HUB_CACHE": root / "hf_home" / "hub",
        "TORCH_HOME": root / "torch_home",
    }
    for var, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(path))
    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(flag, "1")
    # huggingface_hub snapshots its settings at import time: patch the live module too.
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)
        monkeypatch.setattr(constants, "HF_HOME", str(dirs["HF_HOME"]), raising=False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(dirs["HF_HUB_CACHE"]), raising=False)
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    return root
