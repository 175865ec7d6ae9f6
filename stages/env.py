"""env: record what can change a number (llmbench.envinfo). `always_changed` in dvc.yaml; its
output is cached, so the measuring stages that depend on it rerun only when the content changes.

    python -m stages.env <out.json> [<folder to create> ...]

The extra folders (paths.failures) must exist before the aggregate, which depends on them."""
import json
import sys
from pathlib import Path

from llmbench.envinfo import collect
from llmbench.io import write_bytes_atomic

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "data/env.json")
    for folder in sys.argv[2:]:
        Path(folder).mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, (json.dumps(collect(), indent=2, sort_keys=True) + "\n").encode())
