"""Print the newest Ray Train checkpoint folder (one holding state.pt) under the runs whose folder
starts with the given prefix, for ``boneage train --resume``; exit 1 when there is none."""

from __future__ import annotations

import sys
from pathlib import Path

prefix = Path(sys.argv[1])
found = sorted((p.parent for p in prefix.parent.glob(f"{prefix.name}*/**/state.pt")), key=lambda p: p.stat().st_mtime)
if not found:
    sys.exit(1)
print(found[-1])
