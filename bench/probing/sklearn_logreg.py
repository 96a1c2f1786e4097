"""Reference for the probing plugin: scikit-learn's LogisticRegression on the same data and split.

Reads a JSON file with x_train, y_train, x_test, y_test, c; standardises with the training mean and
(population) std, fits LogisticRegression(C=c, lbfgs, tight tolerance) and prints JSON with the
held-out accuracy, the test-set probabilities of class 1 and the fit time.
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
start = time.perf_counter()
model = LogisticRegression(C=c, solver="lbfgs", max_iter=10000, tol=1e-10).fit(z_train, y_train)
seconds = time.perf_counter() - start
print(json.dumps({
    "accuracy": float((model.predict(z_test) == y_test).mean()),
    "probabilities": model.predict_proba(z_test)[:, 1].tolist(),
    "seconds": seconds,
}))
