"""Cold start of the client: `pai-distil --help` against `python -c pass`, measured in the same run.

Prints the median wall time of each over several runs and their ratio. The client must stay
thin: it never imports torch or transformers at start-up.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time

RUNS = 7


def median_seconds(cmd: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    cli = shutil.which("pai-distil")
    client = [cli, "--help"] if cli else [sys.executable, "-m", "pai_distil", "--help"]
    baseline = median_seconds([sys.executable, "-c", "pass"])
    help_time = median_seconds(client)
    imports = median_seconds([sys.executable, "-c", "import pai_distil.cli"])
    print(f"python -c pass        {baseline * 1000:7.1f} ms   1.00x")
    print(f"import pai_distil.cli {imports * 1000:7.1f} ms  {imports / baseline:5.2f}x")
    print(f"pai-distil --help     {help_time * 1000:7.1f} ms  {help_time / baseline:5.2f}x")


if __name__ == "__main__":
    main()
