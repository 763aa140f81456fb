#!/usr/bin/env bash
# The GPU checks in one run: the CPU/GPU agreement tests, then the time per pair of the default
# pipeline on the GPU (and on the machine's CPUs, for the ratio), and how far apart the two
# devices' fields are on generated 256^3 cases.
#
#   scripts/device_check.sh OUT_DIR [CASES]
#
# Run it from the repository root on a machine with an NVIDIA GPU whose python3 has a CUDA
# build of PyTorch. CASES (default 3) synthetic cases (0.5 mm, 256^3, families in turn) are
# generated first. Writes to OUT_DIR: gpu.txt (nvidia-smi), pytest.txt, time_cuda.txt and
# time_cpu.txt (/usr/bin/time -v of each whole registration run), timings_*.json,
# metrics_*.json and summary.txt. Without a CUDA device it runs the CPU half only and says so.
#
# If the project is not installed there (python3 -c "import remind2reg" fails), it is
# installed into /tmp/site without network: the packages the machine lacks must lie as wheels
# in .whl/ (ignored by git). For a machine that has PyTorch, SciPy and Matplotlib but not
# nibabel or nilearn, made here with network:
#   python3 -m pip download --no-deps -d .whl nibabel==5.4.2 nilearn==0.14.1
# (the versions of constraints.txt; both are pure Python).
set -euo pipefail

out=${1:?usage: scripts/device_check.sh OUT_DIR [CASES]}
cases=${2:-3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
py=${PYTHON:-python3}

if ! "$py" -c "import remind2reg" 2>/dev/null; then
    echo "== installing the project into /tmp/site (no network)"
    wheels=()
    if compgen -G ".whl/*.whl" >/dev/null; then wheels=(.whl/*.whl); fi
    "$py" -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site "${wheels[@]}" .
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

cuda=$("$py" -c "import torch; print(int(torch.cuda.is_available()))")
{
    echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    if [ "$cuda" = 1 ]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    else
        echo "no CUDA device: the CPU half only"
    fi
    echo "CPU cores: $(nproc)"
} | tee "$out/gpu.txt"

echo "== tests marked gpu (CPU/GPU agreement)"
# The tests import tests.conftest, so they run from the repository root.
"$py" -m pytest -m gpu -v -p no:cacheprovider tests 2>&1 | tee "$out/pytest.txt" || true

echo "== $cases synthetic cases, 256^3 at 0.5 mm"
"$py" -m remind2reg -q synth --out "$work/data" --cases "$cases" --seed 0 \
    --family post-resection pre-resection tissue-echo weak-contrast

devices=(cpu)
if [ "$cuda" = 1 ]; then devices=(cuda cpu); fi
for device in "${devices[@]}"; do
    echo "== registering on $device"
    /usr/bin/time -v -o "$out/time_$device.txt" \
        "$py" -m remind2reg -q register --input "$work/data" --output "$work/pred_$device" \
        --device "$device" --threads "$(nproc)"
    cp "$work/pred_$device/timings.json" "$out/timings_$device.json"
    "$py" -m remind2reg -q evaluate --data "$work/data" --pred "$work/pred_$device" \
        --json "$out/metrics_$device.json" >/dev/null
done

"$py" - "$work" "$out" "${devices[@]}" <<'EOF' | tee "$out/summary.txt"
"""Seconds per pair (timings.json: the case's time shared by its pairs), whole-run wall time
and peak memory (/usr/bin/time -v), mean TRE, and the CPU/GPU difference of every field (mm)."""
import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

work, out, devices = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]


def wall_and_peak(path: Path) -> tuple[str, float]:
    text = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    peak_kb = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return wall, peak_kb / 2**20


for device in devices:
    timings = json.loads((out / f"timings_{device}.json").read_text())
    pairs = timings["pairs"]
    for name, pair in pairs.items():
        stages = " ".join(f"{k} {v:.2f}" for k, v in pair["stages"].items())
        print(f"{device}: {name}: {pair['total_s']:.2f} s a pair ({pair['case_total_s']:.2f} s the case; {stages})")
    mean_s = np.mean([pair["total_s"] for pair in pairs.values()])
    wall, peak = wall_and_peak(out / f"time_{device}.txt")
    tre = json.loads((out / f"metrics_{device}.json").read_text())["aggregates"]
    print(
        f"{device}: {mean_s:.2f} s a pair over {len(pairs)} pairs; whole run {wall} (h:mm:ss), "
        f"peak RSS {peak:.2f} GiB; TRE {tre['TRE_initial']['mean']:.2f} -> {tre['TRE_lm']['mean']:.2f} mm, "
        f"folding {tre['folding_percent']['mean']:.3f} %"
    )
if "cuda" in devices:
    for gpu_file in sorted((work / "pred_cuda").glob("disp_*.nii.gz")):
        gpu_img = nib.load(gpu_file)
        cpu = np.asarray(nib.load(work / "pred_cpu" / gpu_file.name).dataobj, dtype=np.float64)
        gpu = np.asarray(gpu_img.dataobj, dtype=np.float64)
        spacing = np.sqrt((gpu_img.affine[:3, :3] ** 2).sum(0))
        diff = np.linalg.norm((gpu - cpu) * spacing, axis=-1)  # fields in voxels -> mm
        print(
            f"{gpu_file.name}: |gpu - cpu| mean {diff.mean():.4f} mm, "
            f"99th percentile {np.quantile(diff, 0.99):.4f} mm, max {diff.max():.4f} mm"
        )
EOF
