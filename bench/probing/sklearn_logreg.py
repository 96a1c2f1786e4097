"""Reference for the probing plugin: scikit-learn's LogisticRegression on the same data and split.

Reads a JSON file with x_train, y_train, x_test, y_test, c (and optionally tol, max_iter,
class_weight; defaults: a tight tol 1e-10, max_iter 10000, no class weights); standardises with the
training mean and (population) std, fits LogisticRegression(C=c, lbfgs, tol, max_iter) and prints
JSON with the held-out accuracy, the test-set probabilities of class 1, the fit time and the
iterations. With "repeats": r, the fit is timed r times: the median and the minimum wall time and
the minimum CPU time of the process (all its threads) are reported.
"""
import json
import sys
import time

import numpy as np
from sklearn.linear_model import LogisticRegression

with open(sys.argv[1]) as f:
    data = json.load(f)
x_train, x_test = np.array(data["x_train"], dtype=np.float64), np.array(data["x_test"], dtype=np.float64)
y_train, y_test = np.array(data["y_train"]), np.array(data["y_test"])
c = float(data["c"])
mean = x_train.mean(axis=0)
std = np.maximum(x_train.std(axis=0), 1e-8)
z_train = (x_train - mean) / std
z_test = (x_test - mean) / std
times = []
cpu = []
for _ in range(int(data.get("repeats", 1))):
    start = time.perf_counter()
    start_cpu = time.process_time()
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=int(data.get("max_iter", 10000)), tol=float(data.get("tol", 1e-10)),
                               class_weight=data.get("class_weight")).fit(z_train, y_train)
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
seconds = sorted(times)[len(times) // 2]
path_seconds = None
if "c_path" in data:
    # The C grid fitted in increasing order, each fit warm-started from the previous one.
    path_times = []
    for _ in range(int(data.get("repeats", 1))):
        start = time.perf_counter()
        path_model = LogisticRegression(solver="lbfgs", max_iter=int(data.get("max_iter", 10000)), tol=float(data.get("tol", 1e-10)),
                                        class_weight=data.get("class_weight"), warm_start=True)
        for c_value in data["c_path"]:
            path_model.set_params(C=float(c_value)).fit(z_train, y_train)
        path_times.append(time.perf_counter() - start)
    path_seconds = min(path_times)
print(json.dumps({
    "path_min_seconds": path_seconds,
    "accuracy": float((model.predict(z_test) == y_test).mean()),
    "probabilities": model.predict_proba(z_test)[:, 1].tolist(),
    "seconds": seconds,
    "min_seconds": min(times),
    "min_cpu_seconds": min(cpu),
    "iterations": int(model.n_iter_[0]),
}))
