"""Independent reference for the probing plugin's tests: scikit-learn (Debian python3-sklearn 1.2.1).

Reads a JSON request from the file named on the command line and prints a JSON answer:
  op "logreg": LogisticRegression(C, class_weight, lbfgs, tol, max_iter) on x_train/y_train as given
               (no scaling here); returns coef, intercept, test probabilities of class 1, accuracy.
  op "svc":    LinearSVC(loss, C=1, tol, max_iter) on x/y; returns coef (one row per class problem).
  op "split":  train_test_split(arange(n), test_size, random_state) for each n; returns train/test.
  op "cd":     Luckfort/CD's per-layer probe: train_test_split(X, y, test_size=0.4, random_state=42),
               LogisticRegression(penalty='l2') (defaults), accuracy, binary F1 and ROC-AUC per layer.
"""
import json
import sys
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.svm import LinearSVC

warnings.simplefilter("ignore", ConvergenceWarning)
with open(sys.argv[1]) as f:
    req = json.load(f)
op = req["op"]
if op == "logreg":
    xt, yt = np.array(req["x_train"], dtype=np.float64), np.array(req["y_train"])
    xs = np.array(req["x_test"], dtype=np.float64)
    m = LogisticRegression(C=req["c"], class_weight=req.get("class_weight"), solver="lbfgs",
                           tol=req.get("tol", 1e-4), max_iter=req.get("max_iter", 100)).fit(xt, yt)
    out = {"coef": m.coef_[0].tolist(), "intercept": float(m.intercept_[0]),
           "probabilities": m.predict_proba(xs)[:, 1].tolist(), "n_iter": int(m.n_iter_[0])}
elif op == "svc":
    x, y = np.array(req["x"], dtype=np.float64), np.array(req["y"])
    m = LinearSVC(loss=req["loss"], tol=req.get("tol", 1e-4), max_iter=req.get("max_iter", 1000)).fit(x, y)
    out = {"coef": m.coef_.tolist(), "intercept": m.intercept_.tolist()}
elif op == "split":
    out = {"splits": []}
    for n in req["n"]:
        train, test = train_test_split(np.arange(n), test_size=req["test_size"], random_state=req["seed"])
        out["splits"].append({"n": n, "train": train.tolist(), "test": test.tolist()})
elif op == "cd":
    y = np.array(req["y"])
    out = {"layers": []}
    for x in req["layers"]:
        x = np.array(x, dtype=np.float32)
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.4, random_state=42)
        m = LogisticRegression(penalty="l2").fit(x_train, y_train)
        pred = m.predict(x_test)
        out["layers"].append({"accuracy": float(accuracy_score(y_test, pred)), "f1": float(f1_score(y_test, pred)),
                              "auc": float(roc_auc_score(y_test, m.predict_proba(x_test)[:, 1])), "n_iter": int(m.n_iter_[0])})
else:
    raise SystemExit(f"unknown op {op}")
print(json.dumps(out))
