"""Pictures of segmentations for the report: a case's CT in an abdominal window on three orthogonal slices
through the largest lesion of each class, reference and prediction as contours, pixel aspect from the spacing
and the patient directions at the edges."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from workflow_scripts.io import image_array, pyplot, read_image, write_figure

LEVEL, WIDTH = 40, 400  # abdominal window (HU)
REFERENCE, PREDICTION = "lime", "magenta"
OPPOSITE = dict(zip("LRPAIS", "RLAPSI"))


def largest_lesion_centre(mask: np.ndarray) -> tuple[int, int, int] | None:
    """The voxel (z, y, x) nearest the centroid of the mask's largest 26-connected component, inside it."""
    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(components), components, np.arange(1, n + 1))
    largest = np.argwhere(components == int(np.argmax(sizes)) + 1)
    centroid = largest.mean(axis=0)
    return tuple(int(v) for v in largest[np.argmin(((largest - centroid) ** 2).sum(axis=1))])


def views(volume: np.ndarray, centre, spacing_xyz, code: str) -> list[dict]:
    """Axial, coronal and sagittal slices through ``centre``: the 2D array (rows down unless ``lower``), its pixel
    aspect, and the patient direction at each edge (``code``: where x, y, z indices increase, e.g. LPS)."""
    z, y, x = centre
    sx, sy, sz = spacing_xyz
    cx, cy, cz = code
    return [
        {"name": "axial", "slice": lambda a: a[z], "aspect": sy / sx, "lower": False,
         "edges": (OPPOSITE[cx], cx, OPPOSITE[cy], cy)},
        {"name": "coronal", "slice": lambda a: a[:, y, :], "aspect": sz / sx, "lower": True,
         "edges": (OPPOSITE[cx], cx, cz, OPPOSITE[cz])},
        {"name": "sagittal", "slice": lambda a: a[:, :, x], "aspect": sz / sy, "lower": True,
         "edges": (OPPOSITE[cy], cy, cz, OPPOSITE[cz])},
    ]


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    total = int(reference.sum() + prediction.sum())
    return 1.0 if total == 0 else 2.0 * int((reference & prediction).sum()) / total


def plot_case(case: str, image_path: Path, prediction_path: Path, reference_path: Path | None,
              classes: dict[str, int], out: Path, notes: dict[str, str] | None = None) -> list[dict]:
    """One row per class present in the reference or the prediction (three views through its largest lesion,
    the reference's where it has one); the title gives the case, the class, Dice (with a reference) and
    ``notes[class]`` (e.g. the tumour burden). Returns per row the class, the centre and the Dice."""
    plt = pyplot()
    image_sitk = read_image(image_path)
    image = image_array(image_sitk).astype(np.float32)
    prediction = image_array(read_image(prediction_path))
    reference = image_array(read_image(reference_path)) if reference_path else None
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image_sitk.GetDirection())
    rows = []
    for name, label in classes.items():
        ref = reference == label if reference is not None else None
        pred = prediction == label
        centre = largest_lesion_centre(ref) if ref is not None and ref.any() else largest_lesion_centre(pred)
        if centre is not None:
            rows.append({"class": name, "centre": centre, "reference": ref, "prediction": pred,
                         "dice": dice(ref, pred) if ref is not None else None})
    fig, axes = plt.subplots(max(1, len(rows)), 3, figsize=(12, 4.2 * max(1, len(rows))), squeeze=False)
    if not rows:
        for ax in axes[0]:
            ax.set_axis_off()
        axes[0][1].set_title(f"{case}: no lesion in the reference or the prediction")
    for row, axes_row in zip(rows, axes):
        for ax, view in zip(axes_row, views(image, row["centre"], image_sitk.GetSpacing(), code)):
            origin = "lower" if view["lower"] else "upper"
            ax.imshow(view["slice"](image), cmap="gray", vmin=LEVEL - WIDTH / 2, vmax=LEVEL + WIDTH / 2,
                      aspect=view["aspect"], origin=origin, interpolation="nearest")
            for mask, colour in ((row["reference"], REFERENCE), (row["prediction"], PREDICTION)):
                if mask is not None and view["slice"](mask).any():
                    ax.contour(view["slice"](mask), levels=[0.5], colors=colour, linewidths=1.2, origin=origin)
            left, right, top, bottom = view["edges"]
            for text, xy, align in ((left, (0.01, 0.5), "left"), (right, (0.99, 0.5), "right")):
                ax.text(*xy, text, transform=ax.transAxes, color="yellow", ha=align, va="center", fontsize=9)
            for text, xy in ((top, (0.5, 0.98)), (bottom, (0.5, 0.02))):
                ax.text(*xy, text, transform=ax.transAxes, color="yellow", ha="center",
                        va="top" if xy[1] > 0.5 else "bottom", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(view["name"], fontsize=8)
        title = f"{case}: {row['class']}" + (f", Dice {row['dice']:.3f}" if row["dice"] is not None else "")
        title += f", {(notes or {}).get(row['class'])}" if (notes or {}).get(row["class"]) else ""
        axes_row[1].set_title(title, fontsize=10)
    handles = [plt.Line2D([], [], color=PREDICTION, label="prediction")]
    if reference is not None:
        handles.insert(0, plt.Line2D([], [], color=REFERENCE, label="reference"))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    write_figure(fig, out)
    return rows


def burden_notes(burden_table: Path, case: str, classes: dict[str, int]) -> dict[str, str]:
    table = pd.read_csv(burden_table, sep="\t").set_index("case")
    if case not in table.index:
        return {}
    return {name: f"{table.loc[case, f'{name}_ml']:.1f} ml in {int(table.loc[case, f'{name}_lesions'])} lesion(s)"
            for name in classes if f"{name}_ml" in table.columns}


def overlay_case_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.settings import lesion_classes

    p = cli.parser("overlay-case", "A picture of one case: CT, reference and prediction on three slices per class.")
    p.add_argument("--case", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--prediction", required=True)
    p.add_argument("--reference", nargs="?", default=None, help="the reference label, where there is one")
    cli.add_settings(p, "overlay-case")
    p.add_argument("--burden", help="burden.tsv: each class's volume in the title")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    classes = lesion_classes(args.settings)
    notes = burden_notes(Path(args.burden), args.case, classes) if args.burden else None
    rows = plot_case(args.case, Path(args.image), Path(args.prediction), Path(args.reference) if args.reference
                     else None, classes, Path(args.out), notes)
    print(f"{args.case}: {len(rows)} class(es) drawn")


def overlay_worst_entry(argv=None) -> None:
    from workflow_scripts import cli
    from workflow_scripts.settings import lesion_classes

    p = cli.parser("overlay-worst", "Pictures of the worst out-of-fold cases per class of a stage.")
    p.add_argument("--worst", required=True, help="worst_cases.tsv of summarize-metrics")
    p.add_argument("--stage", required=True)
    p.add_argument("--images", nargs="+", required=True, help="the out-of-fold cases' images")
    p.add_argument("--predictions", nargs="+", required=True, help="the stage's segmentations, same order")
    p.add_argument("--references", nargs="+", required=True, help="the reference labels, same order")
    cli.add_settings(p, "overlay-worst")
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    _, cases = cli.case_folder(args.images, "--images")
    paths = {case: (Path(i), Path(p), Path(r)) for case, i, p, r in
             zip(cases, args.images, args.predictions, args.references)}
    worst = pd.read_csv(args.worst, sep="\t")
    worst = worst[(worst["split"] == "oof") & (worst["stage"] == args.stage)]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for _, row in worst.iterrows():
        image, prediction, reference = paths[row["case"]]
        plot_case(row["case"], image, prediction, reference, {row["class"]: lesion_classes(args.settings)[row["class"]]},
                  out / f"{row['case']}_{row['class']}.png")
    print(f"{len(worst)} worst case(s) of {args.stage} drawn in {out}")
