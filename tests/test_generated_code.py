"""The committed generated code is exactly what the protos generate (STYLE: never hand-edited)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_in_sync_with_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "protos" / "generate.sh"), str(tmp_path)],
        check=True,
        env={"VENV_BIN": str(Path(sys.executable).parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
    )
    generated = tmp_path / "flightlog" / "v1"
    committed = ROOT / "client" / "flightlog" / "v1"
    names = sorted(p.name for p in generated.iterdir() if p.is_file())
    assert names, "the generator produced nothing"
    _, mismatch, errors = filecmp.cmpfiles(generated, committed, names, shallow=False)
    assert mismatch == [] and errors == [], f"run 'make proto': {mismatch + errors} differ"
