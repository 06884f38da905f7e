#!/usr/bin/env python3
"""Single-thread onnxruntime latency (median of N runs, models interleaved round-robin).

  python bench_ort.py 50 ../surface-defect-f32.onnx ../surface-defect-int8.onnx
"""
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    runs, paths = int(sys.argv[1]), sys.argv[2:]
    sessions = []
    for p in paths:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sessions.append(ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]))
    x = np.random.default_rng(12345).uniform(-2, 2, (1, 3, 128, 128)).astype(np.float32)
    for s in sessions:
        for _ in range(3):
            s.run(None, {"input": x})
    times = [[] for _ in sessions]
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, {"input": x})
            times[i].append((time.perf_counter() - t0) * 1e3)
    meds = []
    for p, t in zip(paths, times):
        t = sorted(t)
        meds.append(t[len(t) // 2])
        print(f"{p:<50} median {meds[-1]:8.3f} ms  min {t[0]:8.3f}  p90 {t[len(t) * 9 // 10]:8.3f}  (n={len(t)})")
    for p, m in zip(paths[1:], meds[1:]):
        print(f"speedup {p} vs {paths[0]}: {meds[0] / m:.2f}x")


if __name__ == "__main__":
    main()
