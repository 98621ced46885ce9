"""Assemble BENCHMARKS.md from the per-benchmark result files in benchmarks/results/.

    python benchmarks/make_benchmarks_md.py

Each bench_*.py writes its own markdown (exact command, machine, numbers, targets met or missed) to
benchmarks/results/<name>.md; this script only concatenates them under one header, in a fixed order.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["lce", "train", "stream", "laws", "prediction", "adaptive", "sweep", "cbs", "gpu"]
HEADER = """# Benchmarks

Measured side by side in one run per table (ratios, not absolute times, are the claims), on the
machines named in each section. Regenerate a section with the command it names, then this file with
`python benchmarks/make_benchmarks_md.py`.

GPU figures (the fused loss against Liger-Kernel and CCE at V=128256, training MFU on an H200) come from
one session's 15 minutes on one device (section "GPU"); everything else was measured on CPUs.

"""


def main() -> None:
    results = ROOT / "benchmarks" / "results"
    names = [n for n in ORDER if (results / f"{n}.md").is_file()]
    names += sorted(p.stem for p in results.glob("*.md") if p.stem not in ORDER)
    parts = [HEADER]
    for n in names:
        text = (results / f"{n}.md").read_text().strip()
        # demote the file's own headings one level under this page's title
        text = "\n".join("#" + ln if ln.startswith("#") else ln for ln in text.splitlines())
        parts.append(f"{text}\n\n<sub>source: benchmarks/results/{n}.md</sub>\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote BENCHMARKS.md from {len(names)} result files: {', '.join(names)}")


if __name__ == "__main__":
    main()
