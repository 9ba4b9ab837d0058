#!/usr/bin/env python3
"""Peer for `fisherkit bench zonotope`: the same problems solved from Python with
cvxpy + its Clarabel backend (what researchers typically write).

    python3 scripts/zonotope_peer.py qp PROBLEMS.json       # pattern QPs, timed
    python3 scripts/zonotope_peer.py compare COMPARE.json   # gd, adam, greedy per seed

Input files are written by `fisherkit bench zonotope`; output is one JSON line on stdout.
Requires: pip install cvxpy clarabel numpy (benchmark only).
"""
import json
import sys
import time

import cvxpy as cp
import numpy as np


def homogenise(x):
    x = np.asarray(x, dtype=float)
    return np.hstack([x, np.ones((x.shape[0], 1))])


def solve_qp(xt, y, signs, patterns):
    """min (1/n)||sum_j s_j D_j X w_j - y||^2  s.t. (2D_j - I) X w_j >= 0."""
    n, k = xt.shape
    ws = [cp.Variable(k) for _ in signs]
    pred = 0
    cons = []
    for s, p, w in zip(signs, patterns, ws):
        d = np.asarray(p, dtype=float)
        pred = pred + s * cp.multiply(d, xt @ w)
        cons.append(cp.multiply(2 * d - 1, xt @ w) >= 0)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(pred - y) / n), cons)
    prob.solve(solver=cp.CLARABEL)
    if prob.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"QP status {prob.status}")
    w = np.stack([wj.value for wj in ws])
    return loss_of(xt, y, np.asarray(signs, dtype=float), w), w


def loss_of(xt, y, signs, w):
    return float(np.mean((np.maximum(xt @ w.T, 0) @ signs - y) ** 2))


def is_vertex(xt, pattern):
    """LP feasibility of (2p - 1) * X w >= 1."""
    w = cp.Variable(xt.shape[1])
    prob = cp.Problem(cp.Minimize(0), [cp.multiply(2 * pattern - 1, xt @ w) >= 1])
    prob.solve(solver=cp.CLARABEL)
    return prob.status in ("optimal", "optimal_inaccurate")


def feasible_flips(xt, pattern, cache):
    key = pattern.tobytes()
    if key not in cache:
        flips = []
        for i in range(len(pattern)):
            q = pattern.copy()
            q[i] = 1 - q[i]
            if is_vertex(xt, q):
                flips.append(i)
        cache[key] = flips
    return cache[key]


def train(xt, y, signs, w0, optimizer, lr, steps):
    w = w0.copy()
    m1 = np.zeros_like(w)
    m2 = np.zeros_like(w)
    n = len(y)
    for t in range(1, steps + 1):
        pre = xt @ w.T
        r = np.maximum(pre, 0) @ signs - y
        grad = ((2.0 / n) * (r[:, None] * (pre > 0) * signs[None, :])).T @ xt
        if optimizer == "gd":
            w -= lr * grad
        else:
            m1 = 0.9 * m1 + 0.1 * grad
            m2 = 0.999 * m2 + 0.001 * grad * grad
            w -= lr * (m1 / (1 - 0.9**t)) / (np.sqrt(m2 / (1 - 0.999**t)) + 1e-8)
    return loss_of(xt, y, signs, w), w


def greedy(xt, y, signs, patterns, max_steps):
    cache = {}
    cur, _ = solve_qp(xt, y, signs, patterns)
    moves = 0
    for _ in range(max_steps):
        best = None
        for j in range(len(signs)):
            for i in feasible_flips(xt, patterns[j], cache):
                cand = [p.copy() for p in patterns]
                cand[j][i] = 1 - cand[j][i]
                try:
                    loss, _ = solve_qp(xt, y, signs, cand)
                except Exception:  # noqa: BLE001 - skipped like the Rust side
                    continue
                bar = cur if best is None else best[0]
                if loss < bar - 1e-9 * abs(bar):
                    best = (loss, cand)
        if best is None:
            break
        cur, patterns = best
        moves += 1
    return cur, moves


def main():
    mode, path = sys.argv[1], sys.argv[2]
    spec = json.load(open(path))
    if mode == "qp":
        xt = homogenise(spec["x"])
        y = np.asarray(spec["y"], dtype=float)
        losses = []
        start = time.perf_counter()
        for prob in spec["problems"]:
            pats = [np.array([int(c) for c in p]) for p in prob["patterns"]]
            loss, _ = solve_qp(xt, y, prob["signs"], pats)
            losses.append(loss)
        seconds = time.perf_counter() - start
        print(json.dumps({"solves": len(losses), "seconds": seconds,
                          "solves_per_s": len(losses) / seconds, "losses": losses}))
    elif mode == "compare":
        results = []
        start = time.perf_counter()
        for case in spec["seeds"]:
            xt = homogenise(case["x"])
            y = np.asarray(case["y"], dtype=float)
            signs = np.asarray(case["signs"], dtype=float)
            w0 = np.asarray(case["init"], dtype=float)
            gd_loss, _ = train(xt, y, signs, w0, "gd", spec["gd_lr"], spec["steps"])
            adam_loss, _ = train(xt, y, signs, w0, "adam", spec["adam_lr"], spec["steps"])
            patterns = [((xt @ w) > 0).astype(int) for w in w0]
            search_loss, moves = greedy(xt, y, signs, patterns, spec["max_steps"])
            results.append({"seed": case["seed"], "gd": gd_loss, "adam": adam_loss,
                            "search": search_loss, "moves": moves})
        print(json.dumps({"seconds": time.perf_counter() - start, "seeds": results}))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
