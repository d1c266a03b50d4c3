"""The tables of ``bench_infer.py``: stage labels, end to end against the bound, the CPU-side cost per
input, the GPU-like ceiling, and the busy time per stage."""

from __future__ import annotations

from typing import Any

# the package's stage names (``infer/pipeline.STAGES``) -> the lines of the table; indented = inside "reconstruct"
LABELS = {
    "load image": "load image",
    "preprocess image": "preprocess 2-D",
    "load volume": "load NIfTI",
    "preprocess volume": "preprocess volume",
    "reconstruct": "reconstruct_slices (all passes)",
    "encoder": "  encoder forward",
    "noise": "  noise",
    "network": "  U-Net forward",
    "post-process volume": "post-process volume (erode, median)",
    "post-process images": "post-process images (median)",
    "to image grid": "map back to the image grid",
    "boxes": "boxes (median, label, top-k)",
    "pictures": "pictures (PNG with boxes)",
    "write json": "JSON outputs",
    "to input grid": "map back to the input grid",
    "write nifti": "write NIfTI",
    "volume preview": "volume preview PNG",
    "image preview": "image preview PNG",
    "brain mask": "brain mask (2-D images with skull)",
    "brain-mask network": "  brain-mask network",
}


# stages outside the networks: the CPU-side cost; the noise is drawn on the network's device, and the
# brain-mask network runs there too (it is inside "brain mask", whose rest is CPU-side reading)
NETWORK_STAGES = {"reconstruct", "encoder", "network", "noise", "brain-mask network"}
NESTED_NETWORKS = {"brain-mask network"}  # inside a CPU-side stage: subtracted from it


def cpu_side(parts: dict[str, tuple[float, int, float]]) -> float:
    """CPU seconds of the stages outside the networks (``parts``: label -> (seconds, calls, CPU seconds))."""
    inside = {LABELS[k] for k in NETWORK_STAGES}
    return sum(cpu for label, (_, _, cpu) in parts.items() if label not in inside) - nested_networks(parts)


def nested_networks(parts: dict[str, tuple[float, int, float]]) -> float:
    """CPU seconds of the networks that run inside a CPU-side stage (the brain-mask network in "brain mask")."""
    return sum(parts.get(LABELS[k], (0.0, 0, 0.0))[2] for k in NESTED_NETWORKS)


def table(title: str, columns: list[tuple[str, int]], lines: list[list[Any]]) -> None:
    """One printed table: ``columns`` are (name, width), the first left-aligned."""
    print(f"\n{title}\n")
    head = " ".join(f"{n:<{w}}" if i == 0 else f"{n:>{w}}" for i, (n, w) in enumerate(columns))
    print(head + "\n" + "-" * len(head))
    for line in lines:
        print(" ".join(f"{v:<{w}}" if i == 0 else f"{v:>{w}}" for i, (v, (_, w)) in enumerate(zip(line, columns))))


def print_tables(rows: list[tuple[Any, ...]], breakdowns: dict[str, Any], repeats: int, n_t: int) -> None:
    """The three tables (end to end vs the bound, CPU-side cost, GPU-like ceiling) and the breakdowns."""
    table(f"fastest of {repeats} runs after one warm-up (e2e and bound alternating); bound = U-Net forward "
          f"passes alone on the same slices x {n_t} timesteps; all networks: the U-Net, the encoder once per "
          "slice and, for localize (--brain-mask auto), the brain-mask network on each image",
          [("pipeline", 50), ("thr", 3), ("slices", 6), ("e2e s", 7), ("e2e sl/s", 8), ("bound s", 7), ("ratio", 6),
           ("", 14), ("all networks s", 14), ("ratio", 6)],
          [[name, threads, n, f"{e2e:.2f}", f"{n / e2e:.1f}", f"{bnd:.2f}", f"{100 * bnd / e2e:.0f}%",
            "" if bnd / e2e >= 0.8 else "< 80% target", f"{both:.2f}" if both != bnd else "",
            f"{100 * both / e2e:.0f}%" if both != bnd else ""]
           for name, threads, _, _, n, e2e, bnd, _, _, both in rows if bnd != float("inf")])

    reading = {LABELS[k] for k in ("load image", "preprocess image", "load volume", "preprocess volume", "brain mask")}
    lines = []
    for name, threads, n_in, unit, _, _, _, _, parts, _ in rows:
        total = 1000 * cpu_side(parts) / n_in
        read = 1000 * (sum(cpu for label, (_, _, cpu) in parts.items() if label in reading)
                       - nested_networks(parts)) / n_in
        noise = 1000 * parts.get(LABELS["noise"], (0.0, 0, 0.0))[2] / n_in
        target = 400 if unit == "volume" else 5
        lines.append([name, threads, f"{total:.1f}", f"{read:.1f}", f"{total - read:.1f}", f"{noise:.1f}",
                      f"<={target}", "" if total - read <= target else "above"])
    table("CPU-side cost, ms per input: CPU time of the stages outside the networks (reading, with the brain "
          "mask's own steps but not its network; after the network: post-processing, mapping back, writing, "
          "previews, boxes, pictures); the noise apart (drawn on the network's device on a GPU)",
          [("pipeline", 50), ("thr", 3), ("ms/input", 9), ("reading", 8), ("after", 8), ("noise", 7),
           ("target", 7), ("", 6)], lines)

    table("GPU-like: the networks replaced by stand-ins of known cost, the pipeline's own ceiling (targets: "
          "reconstruct >= 5 volumes/s, localize >= 150 images/s); CPU ms: the whole process's CPU time",
          [("pipeline", 50), ("thr", 3), ("inputs", 6), ("e2e s", 7), ("inputs/s", 8), ("CPU ms/input", 12)],
          [[name, threads, n_in, f"{e2e:.2f}", f"{n_in / e2e:.1f}", f"{1000 * cpu / n_in:.1f}"]
           for name, threads, n_in, _, _, e2e, _, cpu, _, _ in rows if name.startswith("GPU-like")])

    for name, (total, parts) in breakdowns.items():
        print(f"\nbusy time per stage for {name} ({total:.2f} s end to end; indented = inside the line above; "
              f"reading and writing run in threads beside the network, so the shares overlap; CPU: the "
              f"reporting thread's own):")
        for label, (sec, calls, cpu) in sorted(parts.items(), key=lambda kv: _order(kv[0])):
            print(f"  {label:<40} {sec:>7.3f} s {100 * sec / total:>5.1f}%  CPU {cpu:>7.3f} s  ({calls} call(s))")


_ORDER = ["load image", "load NIfTI", "preprocess 2-D", "preprocess volume", "reconstruct_slices (all passes)",
          "  encoder forward", "  noise", "  U-Net forward", "post-process volume (erode, median)",
          "post-process images (median)",
          "map back to the image grid", "boxes (median, label, top-k)", "pictures (PNG with boxes)",
          "map back to the input grid", "write NIfTI", "volume preview PNG", "image preview PNG", "JSON outputs",
          "brain mask (2-D images with skull)", "  brain-mask network"]


def _order(label: str) -> int:
    return _ORDER.index(label) if label in _ORDER else len(_ORDER)
