"""Coverage-guided fuzzing (atheris) of the two decoders that take bytes from outside: the
control protocol's and the inference request's. Bounded in time (FUZZ_SECONDS, default
20 each); the committed corpus (tests/fuzz/corpus/) is replayed first and holds every
input that once crashed a decoder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gputuned.testing.processes import REPO_ROOT

pytestmark = pytest.mark.integration
SECONDS = int(os.environ.get("FUZZ_SECONDS", "20"))


@pytest.mark.parametrize("target", ["control", "inference"])
def test_the_decoder_survives_coverage_guided_fuzzing(tmp_path, target):
    corpus = REPO_ROOT / "tests" / "fuzz" / "corpus" / target
    command = [
        sys.executable,
        str(REPO_ROOT / "tests" / "fuzz" / f"fuzz_{target}.py"),
        f"-max_total_time={SECONDS}",
        "-timeout=5",
        "-rss_limit_mb=4096",
        f"-artifact_prefix={tmp_path}/",
        str(tmp_path / "new"),
        str(corpus),  # new inputs go to the first directory, not into the repository
    ]
    (tmp_path / "new").mkdir()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    summary = [line for line in result.stderr.splitlines() if line.startswith("Done ")]
    print(f"\nfuzz {target}: {summary[-1] if summary else 'no summary'}; seed corpus {len(list(corpus.iterdir()))} inputs")
    crashes = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(("crash-", "timeout-", "oom-")))
    assert result.returncode == 0 and crashes == [], result.stderr[-3000:]
