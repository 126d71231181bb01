"""The client SDK needs only grpcio and protobuf: importing it pulls in no torch and no services."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'spec_decode', 'orchestrator',
                                  'target_service', 'draft_service'):
            raise ImportError(f'the SDK must not import {name}')
        return None
sys.meta_path.insert(0, Block())
import specd_client
from specd_client import SpecdClient, AsyncSpecdClient, Message
print('ok')
"""


def test_sdk_imports_without_torch():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
