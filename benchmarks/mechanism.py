"""Gradient cancellation, shown exactly: where plain gradient descent stops and DSGD moves.

    python benchmarks/mechanism.py   # benchmarks/results/mechanism/, docs/method.md's block

The model is logistic regression on ten points of a line (parameters w, b; class
1 when w x + b > 0): eight of class 1 and two of class 0, at -0.9 and 0.7. Full
batch, float64 NumPy, no randomness.

1. Newton's method finds plain fine-tuning's fixed point, the minimum of the mean
   cross-entropy. There the model predicts class 1 for every point (collapsed:
   80%, the majority rate), and the gradient of the two wrong examples exactly
   cancels that of the eight correct ones: g_W = -g_C != 0, cos(g_W, g_C) = -1.
2. Plain gradient descent from that point does not move.
3. DSGD from that point, lambda(t) rising linearly from 0 to beta over the first
   ``ramp`` steps and then held: its first update is -lr * g_W / n, so it moves
   toward the wrong examples. With beta = 1, once lambda reaches 1 DSGD's update
   *is* the plain gradient, so DSGD's fixed points are FFT's and the run is pulled
   back to FFT's collapsed minimum (a convex problem has no other). With beta < 1
   its fixed points differ: here the decision boundary holds at the minority
   point -0.9 (the update chatters there, as each side of the boundary flips that
   example between wrong, weight 1, and correct, weight lambda).

What that implies for beta: with beta = 1 DSGD can end anywhere FFT can end; what
it changes is the path, which in a non-convex network can reach another basin
before lambda reaches 1, and where the run is when a finite budget stops it.
A beta below 1 changes the destination itself, toward the wrong examples.

The test suite checks these numbers against independent references (a two-pass
gradient, and the library's own ``dsgd_jax.make_dsgd_loss``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

X = np.array([-0.8, 0.2, 0.2, 0.3, 1.4, 2.3, 2.9, 3.0, -0.9, 0.7])
Y = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
LR, RAMP, STEPS = 0.5, 200, 1000
OUT = Path("benchmarks/results/mechanism")  # run from the repository root


def per_example_grads(theta: np.ndarray) -> np.ndarray:
    """Gradients of each example's cross-entropy at ``theta = (w, b)``: [n, 2]."""
    w, b = theta
    p = 1.0 / (1.0 + np.exp(-(w * X + b)))
    return np.stack([(p - Y) * X, p - Y], axis=1)


def correct(theta: np.ndarray) -> np.ndarray:
    """Which examples the model classifies right (class 1 where w x + b > 0)."""
    w, b = theta
    return (w * X + b > 0).astype(int) == Y


def mean_loss(theta: np.ndarray) -> float:
    w, b = theta
    z = w * X + b
    return float(np.mean(np.logaddexp(0.0, z) - Y * z))


def fft_fixed_point(iterations: int = 50) -> np.ndarray:
    """The minimum of the mean cross-entropy, by Newton's method from (0, 0)."""
    theta = np.zeros(2)
    for _ in range(iterations):
        w, b = theta
        p = 1.0 / (1.0 + np.exp(-(w * X + b)))
        s = p * (1 - p)
        hessian = np.array([[np.mean(s * X * X), np.mean(s * X)], [np.mean(s * X), np.mean(s)]])
        theta = theta - np.linalg.solve(hessian, per_example_grads(theta).mean(axis=0))
    return theta


def dsgd_gradient(theta: np.ndarray, lam: float) -> np.ndarray:
    """(1/n) (sum over wrong examples + lam * sum over correct ones) of the gradients."""
    weights = np.where(correct(theta), lam, 1.0)
    return (weights[:, None] * per_example_grads(theta)).sum(axis=0) / len(X)


def run(theta: np.ndarray, beta: float | None, *, steps=STEPS, ramp=RAMP, lr=LR) -> dict:
    """Gradient descent from ``theta``: plain (``beta=None``) or DSGD with a linear ramp.

    Returns per step (before the update): lambda, theta, the accuracy, the decision
    boundary -b / w, and the update's norm.
    """
    path = {"lambda": [], "theta": [], "accuracy": [], "boundary": [], "update_norm": []}
    for t in range(steps):
        lam = 1.0 if beta is None else beta * min(t / ramp, 1.0)
        grad = dsgd_gradient(theta, lam)
        path["lambda"].append(lam)
        path["theta"].append(theta.tolist())
        path["accuracy"].append(float(correct(theta).mean()))
        path["boundary"].append(float(-theta[1] / theta[0]))
        path["update_norm"].append(float(lr * np.linalg.norm(grad)))
        theta = theta - lr * grad
    path["final_theta"] = theta.tolist()
    path["final_accuracy"] = float(correct(theta).mean())
    path["final_boundary"] = float(-theta[1] / theta[0])
    return path


def demonstrate() -> dict:
    """Every number of the demonstration."""
    start = fft_fixed_point()
    grads = per_example_grads(start)
    right = correct(start)
    g_w, g_c = grads[~right].sum(axis=0), grads[right].sum(axis=0)
    gd = run(start, None)
    betas = {f"dsgd_beta{b:g}": run(start, b) for b in (1.0, 0.5)}
    moved = {
        name: float(np.max(np.linalg.norm(np.array(p["theta"]) - start, axis=1)))
        for name, p in {"gd": gd, **betas}.items()
    }
    return {
        "command": "python benchmarks/mechanism.py",
        "data": {"x": X.tolist(), "y": Y.tolist()},
        "lr": LR,
        "ramp": RAMP,
        "steps": STEPS,
        "fft_fixed_point": start.tolist(),
        "fft_accuracy": float(right.mean()),
        "majority_rate": float(np.mean(Y == 1)),
        "fft_predicts_one_class": bool(len(set((start[0] * X + start[1] > 0).tolist())) == 1),
        "g_wrong": g_w.tolist(),
        "g_correct": g_c.tolist(),
        "total_gradient_norm": float(np.linalg.norm(g_w + g_c) / len(X)),
        "cosine": float(g_w @ g_c / np.linalg.norm(g_w) / np.linalg.norm(g_c)),
        "largest_move": moved,
        "runs": {"gd": gd, **betas},
    }


MARKER = "docs:mechanism"


def _tiny(norm: float) -> str:
    """A norm as the page states it: float64 rounding (below 1e-15) is machine-dependent,
    so it reads as zero to that precision, not as its digits."""
    return "0 to float64 precision (below 1e-15)" if norm < 1e-15 else f"{norm:.0e}"


def readme_text(result: dict) -> str:
    """The method page's block on the demonstration, every number from ``result``."""
    runs, moved = result["runs"], result["largest_move"]
    start = np.round(result["fft_fixed_point"], 3)
    half = runs["dsgd_beta0.5"]
    return "\n".join(
        [
            f"<!-- {MARKER} -->",
            f"`{result['command']}`: logistic regression on ten points of a line, eight of "
            f"class 1 and two of class 0, full batch, learning rate {result['lr']:g}, "
            f"lambda rising linearly to beta over {result['ramp']} steps, then held, "
            f"{result['steps']} steps in all. Plain fine-tuning's fixed point, "
            f"(w, b) = ({start[0]}, {start[1]}), predicts class 1 for every point "
            f"({100 * result['fft_accuracy']:.0f}%, the majority rate). There the two wrong "
            f"examples' gradient has norm {np.linalg.norm(result['g_wrong']):.3f} and "
            f"cos(g_W, g_C) = {result['cosine']:.6f}: the mean gradient is "
            f"{_tiny(result['total_gradient_norm'])}, and plain gradient descent moves "
            f"{moved['gd']:g} in {result['steps']} steps. DSGD's first update is the "
            "wrong examples' gradient alone; with beta = 1 it gets the class-0 point at -0.9 "
            f"right ({100 * max(runs['dsgd_beta1']['accuracy']):.0f}%) while lambda < 1, and "
            "once lambda reaches 1 its update is the plain gradient again and it returns to "
            f"FFT's fixed point ({100 * runs['dsgd_beta1']['final_accuracy']:.0f}%). With beta "
            f"= 0.5 it ends elsewhere, boundary at {half['final_boundary']:.3f}, "
            f"{100 * half['final_accuracy']:.0f}%.",
            "",
            "![gradient cancellation](benchmarks/results/mechanism/mechanism.png)",
            f"<!-- /{MARKER} -->",
        ]
    )


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 3.6))
    ax_path, ax_boundary, ax_lambda = fig.subplots(1, 3)
    start = np.array(result["fft_fixed_point"])
    w = np.linspace(-0.1, 1.4, 120)
    b = np.linspace(-0.2, 1.3, 120)
    grid = np.array([[mean_loss(np.array([wi, bi])) for wi in w] for bi in b])
    ax_path.contour(w, b, grid, levels=20, colors="lightgray", linewidths=0.7)
    styles = {"gd": ("black", "plain GD"), "dsgd_beta1": ("tab:blue", "DSGD, beta 1"),
              "dsgd_beta0.5": ("tab:orange", "DSGD, beta 0.5")}  # fmt: skip
    steps = np.arange(result["steps"])
    for name, (color, label) in styles.items():
        p = result["runs"][name]
        theta = np.array(p["theta"])
        ax_path.plot(theta[:, 0], theta[:, 1], color=color, linewidth=1.0, label=label)
        ax_boundary.plot(steps, p["boundary"], color=color, linewidth=1.0, label=label)
        ax_lambda.plot(steps, p["lambda"], color=color, linewidth=1.0, label=label)
    ax_path.scatter(*start, color="red", zorder=5, s=30, label="FFT's fixed point")
    ax_path.set_xlabel("w")
    ax_path.set_ylabel("b")
    ax_path.set_title("path (contours: the mean loss)", fontsize=9)
    ax_path.legend(fontsize=7, loc="lower right")
    for xi, yi in zip(X, Y, strict=True):
        if yi == 0:
            ax_boundary.axhline(xi, color="red", linestyle=":", linewidth=0.8)
    ax_boundary.set_xlabel("step")
    ax_boundary.set_ylabel("decision boundary -b / w")
    ax_boundary.set_title("boundary; dotted: the class-0 points", fontsize=9)
    ax_boundary.set_ylim(-1.2, 0.9)
    ax_lambda.set_xlabel("step")
    ax_lambda.set_ylabel("lambda(t) (plain GD: every weight 1)")
    ax_lambda.set_title("the scale of the correct examples", fontsize=9)
    fig.suptitle(
        "Gradient cancellation at FFT's fixed point: g_W = -g_C, plain GD stays, DSGD moves",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> int:
    del argv
    result = demonstrate()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "mechanism.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, OUT / "mechanism.png")
    from _lib.readme import PAGES, ROOT, fill_block

    fill_block(ROOT / PAGES[MARKER], MARKER, readme_text(result))
    runs = result["runs"]
    print(
        f"FFT's fixed point {np.round(result['fft_fixed_point'], 4)}: accuracy "
        f"{result['fft_accuracy']:.2f} (one class for every input: "
        f"{result['fft_predicts_one_class']}), |g_W| {np.linalg.norm(result['g_wrong']):.4f}, "
        f"cos(g_W, g_C) {result['cosine']:.6f}, |mean gradient| "
        f"{result['total_gradient_norm']:.1e}"
    )
    for name, moved in result["largest_move"].items():
        print(
            f"{name}: largest distance from the fixed point {moved:.3g}, final accuracy "
            f"{runs[name]['final_accuracy']:.2f}, final boundary {runs[name]['final_boundary']:.4f}"
        )
    print(f"Wrote {OUT / 'mechanism.json'} and {OUT / 'mechanism.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
