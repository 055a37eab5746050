"""Anatomy-aware label QC: each reference label checked against the case's TotalSegmentator map by rules kept
as data (``qc.anatomy_rules``), as the SegTHOR project checked heart labels against anatomy; for a flagged label,
a proposed correction (axis flips and shifts that make it agree with anatomy and image) written for review and
never applied.

Rule kinds: ``outside`` (at most ``max_fraction`` of a label inside ``structures``, e.g. bone or lung) and
``within_span`` (at least ``min_fraction`` within the cranio-caudal span of ``structures`` widened by
``margin_mm``). Every lesion voxel must also lie in the body (above ``qc.air_hu``).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.io import array_like, image_array, pyplot, read_image, write_figure, write_image, write_table
from workflow_scripts.qc import COLUMNS, finding
from workflow_scripts.anatomy import (anatomy_class_ids, body_mask, cranio_caudal_axis, span_region,
                                      structure_ids)

AXES = ("z", "y", "x")  # numpy order: slices, rows, columns
SAMPLE = 4000  # lesion voxels scored per candidate correction
MIN_GAIN = 0.2  # a correction is proposed when it raises the agreement by at least this much


def applies(rule: dict, value: int) -> bool:
    return not rule.get("labels") or value in rule["labels"]


def rule_region(rule: dict, anatomy: np.ndarray, spacing_xyz, direction, class_ids: dict[str, int]):
    """Where a rule lets a label lie (bool array), or None when the map holds none of its structures."""
    ids = structure_ids(rule["structures"], class_ids)
    inside = np.isin(anatomy, ids)
    if not inside.any():
        return None
    if rule["kind"] == "outside":
        return ~inside
    return span_region(anatomy, ids, rule["margin_mm"], spacing_xyz, cranio_caudal_axis(direction))


def check_label(case: str, label: np.ndarray, image: np.ndarray, anatomy: np.ndarray, spacing_xyz,
                direction, rules: list[dict], lesion_values: list[int], body_hu: float,
                class_ids: dict[str, int]) -> tuple[list[dict], dict[int, np.ndarray]]:
    """Rows for every rule a label breaks (warnings) or could not be checked by (info), and per lesion value
    the region where its voxels agree with every rule and lie in the body."""
    body = body_mask(image, body_hu)
    regions = {rule["name"]: rule_region(rule, anatomy, spacing_xyz, direction, class_ids) for rule in rules}
    rows, allowed = [], {}
    for value in lesion_values:
        mask = label == value
        allowed[value] = body.copy()
        for rule in (r for r in rules if applies(r, value)):
            region = regions[rule["name"]]
            if region is None:
                rows.append(finding(case, "label_anatomy", "info", f"label {value}: rule {rule['name']} not checked, "
                                 f"the anatomy map holds none of {rule['structures']}"))
                continue
            allowed[value] &= region
            if not mask.any():
                continue
            inside = float(np.mean(region[mask]))
            if rule["kind"] == "outside" and 1 - inside > rule["max_fraction"]:
                rows.append(finding(case, "label_anatomy", "warning", f"label {value}: {1 - inside:.0%} of it lies "
                                 f"inside {rule['structures']} (rule {rule['name']}: at most "
                                 f"{rule['max_fraction']:.0%}): a flipped, shifted or mismatched label?"))
            elif rule["kind"] == "within_span" and inside < rule["min_fraction"]:
                rows.append(finding(case, "label_anatomy", "warning", f"label {value}: {inside:.0%} of it lies within "
                                 f"the span of {rule['structures']} +- {rule['margin_mm']:g} mm (rule "
                                 f"{rule['name']}: at least {rule['min_fraction']:.0%}): a flipped, shifted or "
                                 "mismatched label?"))
    return rows, allowed


def candidate_shifts(search_mm: float, step_mm: float, spacing_xyz) -> np.ndarray:
    """Integer voxel shifts (z, y, x) of a grid in mm, the zero shift included."""
    steps = np.arange(-search_mm, search_mm + 1e-6, step_mm) if search_mm > 0 else np.zeros(1)
    spacing_zyx = np.asarray(spacing_xyz, float)[::-1]
    grid = np.array(list(itertools.product(steps, repeat=3)))
    return np.unique(np.rint(grid / spacing_zyx).astype(int), axis=0)


def agreement(points: np.ndarray, values: np.ndarray, allowed: dict[int, np.ndarray], flips, shifts: np.ndarray,
              shape) -> np.ndarray:
    """Fraction of ``points`` (lesion voxels, z y x) that agree with anatomy after flipping ``flips`` axes and
    shifting by each row of ``shifts``; points moved off the image count as disagreeing."""
    shape = np.asarray(shape)
    moved = np.where(flips, shape - 1 - points, points)
    scores = np.zeros(len(shifts))
    for value in np.unique(values):
        group = moved[values == value]
        where = group[None, :, :] + shifts[:, None, :]  # (shift, point, axis)
        inside = np.all((where >= 0) & (where < shape), axis=2)
        clipped = np.clip(where, 0, shape - 1)
        good = allowed[int(value)][clipped[..., 0], clipped[..., 1], clipped[..., 2]] & inside
        scores += good.sum(axis=1)
    return scores / len(points)


def transform_label(label: np.ndarray, flips, shift) -> np.ndarray:
    """The label flipped along ``flips`` (z, y, x) and shifted by ``shift`` voxels, zero-filled."""
    moved = np.flip(label, axis=tuple(a for a in range(3) if flips[a])) if any(flips) else label
    out = np.zeros_like(label)
    src, dst = [], []
    for n, s in zip(label.shape, shift):
        src.append(slice(max(0, -s), min(n, n - s)))
        dst.append(slice(max(0, s), min(n, n + s)))
    out[tuple(dst)] = moved[tuple(src)]
    return out


def contrast(image: np.ndarray, inner: np.ndarray, shell: np.ndarray, flips, shifts: np.ndarray) -> np.ndarray:
    """How distinct the label's inside is from a 2-voxel shell around it after each candidate move, in the
    spread of both (|mean difference| / (sd inside + sd shell + 10 HU)): a label that sits on its lesion marks
    a homogeneous region unlike its surroundings; one that straddles an organ edge marks a mixed one."""
    shape = np.asarray(image.shape)

    def values(points):
        where = np.where(flips, shape - 1 - points, points)[None, :, :] + shifts[:, None, :]
        clipped = np.clip(where, 0, shape - 1)
        return image[clipped[..., 0], clipped[..., 1], clipped[..., 2]]

    inside, around = values(inner), values(shell)
    return np.abs(inside.mean(axis=1) - around.mean(axis=1)) / (inside.std(axis=1) + around.std(axis=1) + 10.0)


def sample(points: np.ndarray, rng) -> np.ndarray:
    return points[rng.choice(len(points), SAMPLE, replace=False)] if len(points) > SAMPLE else points


def propose_correction(label: np.ndarray, image: np.ndarray, allowed: dict[int, np.ndarray], spacing_xyz,
                       search_mm: float, step_mm: float, seed: int = 0) -> dict:
    """The flip and shift (of the whole label map) that best agrees with anatomy and image. Candidates are ranked
    by their agreement with the anatomy rules (in steps of 2 %), then by how distinct the label is from its
    surroundings in the image (``contrast``, steps of 0.25), then by the size of the change (flipped axes plus shift over the
    search range)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    lesions = np.isin(label, list(allowed))
    points = sample(np.argwhere(lesions), rng)
    values = label[tuple(points.T)]
    shell = sample(np.argwhere(ndimage.binary_dilation(lesions, iterations=2) & ~lesions), rng)
    image = image.astype(np.float32)
    shifts = candidate_shifts(search_mm, step_mm, spacing_xyz)
    shift_mm = np.linalg.norm(shifts * np.asarray(spacing_xyz, float)[::-1], axis=1)
    best, identity = None, None
    for flips in itertools.product((False, True), repeat=3):
        flips_array = np.array(flips)
        scores = agreement(points, values, allowed, flips_array, shifts, label.shape)
        contrasts = contrast(image, points, shell, flips_array, shifts)
        costs = sum(flips) + shift_mm / max(search_mm, 1.0)
        if not any(flips):
            identity = float(scores[np.all(shifts == 0, axis=1)][0])
        keys = np.stack([np.round(scores / 0.02), np.round(contrasts / 0.25), -costs], axis=1)
        k = max(range(len(shifts)), key=lambda i: tuple(keys[i]))
        if best is None or tuple(keys[k]) > best[0]:
            best = (tuple(keys[k]), float(scores[k]), float(contrasts[k]), flips, tuple(int(v) for v in shifts[k]))
    _, score, hu, flips, shift = best
    return {"agreement": score, "identity": identity, "contrast": hu, "flips": flips, "shift": shift,
            "shift_mm": tuple(round(float(s * d), 1) for s, d in zip(shift, np.asarray(spacing_xyz, float)[::-1]))}


def describe(correction: dict) -> str:
    flips = [AXES[a] for a in range(3) if correction["flips"][a]]
    parts = ([f"flip along {', '.join(flips)}"] if flips else []) + (
        [f"shift (z, y, x) {correction['shift_mm']} mm"] if any(correction["shift"]) else [])
    return " and ".join(parts) or "no change"


def read_anatomy_map(path: Path, grid) -> tuple[np.ndarray | None, str]:
    """A precomputed or computed anatomy map (z, y, x), read as QC reads images (a header ITK would hang on, a
    truncated stream and the like are reported), and checked to lie on ``grid``; else None and what is wrong."""
    from workflow_scripts.io import describe_shape, read_volume

    try:
        volume = read_volume(path)
    except Exception as err:  # noqa: BLE001 - any reader failure is a finding, never a traceback
        return None, f"cannot be read ({type(err).__name__}: {str(err).strip()[:120]})"
    if volume.dimension != 3 or volume.components != 1:
        return None, f"is {describe_shape(volume)}, not one 3D label map"
    if tuple(volume.size) != tuple(grid.GetSize()) or not np.allclose(volume.spacing, grid.GetSpacing(), rtol=1e-3):
        return None, (f"is not on the label's grid (size {tuple(volume.size)}, spacing {tuple(volume.spacing)} vs "
                      f"{tuple(grid.GetSize())}, {tuple(grid.GetSpacing())})")
    voxels = np.asarray(volume.voxels)
    if not np.isfinite(voxels).all():
        return None, "holds NaN or infinite values"
    return np.rint(voxels.T).astype(np.int64), ""


def check_case_anatomy(case: str, image_path: Path, label_path: Path, anatomy_path: Path, settings: dict,
                       label_values: list[int], task: str, out_table: Path, out_proposal: Path) -> pd.DataFrame:
    """Check a case's label against its anatomy map; write the rows, and the proposed label into the folder
    ``out_proposal`` (``label.nii.gz``) when a correction agrees much better."""
    out_proposal.mkdir(parents=True, exist_ok=True)
    label_image = read_image(label_path)  # the image and label passed QC; the anatomy map is read with QC's reader
    label, image = image_array(label_image), image_array(read_image(image_path))
    anatomy, problem = read_anatomy_map(anatomy_path, label_image)
    if problem:
        table = pd.DataFrame([finding(case, "label_anatomy", "warning", f"anatomy map {anatomy_path} {problem}: labels "
                                   "not checked against anatomy; rewrite the map on the image grid")], columns=COLUMNS)
        write_table(table, out_table)
        return table
    lesion_values = [v for v in label_values if v != 0]
    spacing, direction = label_image.GetSpacing(), label_image.GetDirection()
    rows, allowed = check_label(case, label, image, anatomy, spacing, direction, settings["anatomy_rules"],
                                lesion_values, settings["air_hu"], anatomy_class_ids(task))
    if any(r["severity"] == "warning" for r in rows) and np.isin(label, lesion_values).any():
        correction = propose_correction(label, image, allowed, spacing, settings["anatomy_search_mm"],
                                        settings["anatomy_search_step_mm"])
        if correction["agreement"] - correction["identity"] >= MIN_GAIN:
            proposed = out_proposal / PROPOSAL
            write_image(array_like(transform_label(label, correction["flips"], correction["shift"]), label_image),
                        proposed)
            rows.append(finding(case, "label_anatomy_proposal", "warning", f"proposed correction for review: "
                             f"{describe(correction)}; agreement with anatomy {correction['identity']:.0%} -> "
                             f"{correction['agreement']:.0%}, contrast with its surroundings {correction['contrast']:.2f}; "
                             f"{proposed} (never applied: to use it, replace the "
                             "label with it)"))
        else:
            rows.append(finding(case, "label_anatomy_proposal", "info", f"no flip or shift within "
                             f"{settings['anatomy_search_mm']:g} mm agrees much better (best: {describe(correction)}, "
                             f"{correction['identity']:.0%} -> {correction['agreement']:.0%})"))
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_table(table, out_table)
    return table


PROPOSAL = "label.nii.gz"


# QC warnings whose case gets a picture: the label drawn where it is most wrong.
PICTURED_CHECKS = ("label_in_air", "label_mean_hu", "label_anatomy", "label_anatomy_proposal")


def worst_slice(label: np.ndarray, image: np.ndarray, air_hu: float) -> int:
    """The axial slice where a label is most wrong: the most label voxels in air, else the most label voxels."""
    lesions = label > 0
    in_air = (lesions & (image < air_hu)).sum(axis=(1, 2))
    counts = in_air if in_air.any() else lesions.sum(axis=(1, 2))
    return int(np.argmax(counts)) if counts.any() else label.shape[0] // 2


def plot_flagged(cases: list[dict], air_hu: float, out: Path) -> None:
    """Per flagged case (``case``, ``image``, ``label``, ``proposal`` or None, ``checks``): the CT (W 400 / L 40)
    with the label as given (red) on the slice where it is most wrong, and the proposal (green) on its own
    slice where there is one."""
    plt = pyplot()
    if not cases:
        fig, ax = plt.subplots(figsize=(5, 1.2))
        ax.text(0.5, 0.5, "no label flagged", ha="center", va="center")
        ax.set_axis_off()
        write_figure(fig, out)
        return
    fig, axes = plt.subplots(len(cases), 2, figsize=(8, 4 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        image = image_array(read_image(case["image"])).astype(float)
        label = image_array(read_image(case["label"]))
        panels = [("label as given", label, "red", worst_slice(label, image, air_hu))]
        if case["proposal"] is not None:
            proposal = image_array(read_image(case["proposal"]))
            panels.append(("proposed (for review)", proposal, "lime", worst_slice(proposal, image, air_hu)))
        for ax, (title, mask, colour, z) in zip(row, panels):
            ax.imshow(image[z], cmap="gray", vmin=40 - 200, vmax=40 + 200)
            if (mask[z] > 0).any():
                ax.contour(mask[z] > 0, levels=[0.5], colors=colour, linewidths=1.5)
            ax.set_title(f"{case['case']}: {title}, slice {z}\n{', '.join(case['checks'])}", fontsize=9)
        for ax in row:
            ax.set_axis_off()
    fig.tight_layout()
    write_figure(fig, out)


def qc_anatomy_report_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("qc-anatomy-report", "One table of the anatomy checks of every label, and a figure of every "
                   "flagged label (in air, off the tissue, against anatomy) with its proposed correction.")
    p.add_argument("--tables", nargs="*", default=[], help="the cases' anatomy QC tables")
    p.add_argument("--proposals", nargs="*", default=[], help="the cases' proposal folders, same order")
    p.add_argument("--images", nargs="*", default=[], help="the cases' images, same order")
    p.add_argument("--labels", nargs="*", default=[], help="the cases' labels, same order")
    p.add_argument("--qc-table", required=True, help="the QC table: its label warnings get pictures too")
    cli.add_settings(p, "qc-anatomy-report")
    p.add_argument("--out", required=True)
    p.add_argument("--figure", required=True)
    args = p.parse_args(argv)
    tables = [pd.read_csv(t, sep="\t") for t in args.tables]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS)
    write_table(table, Path(args.out))
    qc = pd.read_csv(args.qc_table, sep="\t")
    warnings = pd.concat([table, qc], ignore_index=True)
    warnings = warnings[(warnings["severity"] == "warning") & warnings["check"].isin(PICTURED_CHECKS)]
    flagged = []
    for t, folder, image, label in zip(args.tables, args.proposals, args.images, args.labels):
        case = Path(t).name[: -len(".tsv")]
        checks = sorted(set(warnings.loc[warnings["case"] == case, "check"]))
        if checks:
            proposal = Path(folder) / PROPOSAL
            flagged.append({"case": case, "image": Path(image), "label": Path(label), "checks": checks,
                            "proposal": proposal if proposal.is_file() else None})
    plot_flagged(flagged, args.settings["qc"]["air_hu"], Path(args.figure))
    print(f"anatomy QC: {len(args.tables)} label(s) checked, {len(flagged)} flagged label(s) pictured, "
          f"{sum(f['proposal'] is not None for f in flagged)} correction(s) proposed for review")


def qc_anatomy_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("qc-anatomy", "Check a case's label against its anatomy map; propose a flip or shift for "
                   "review when the label disagrees.")
    p.add_argument("--case", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--anatomy", required=True, help="the case's anatomy map (TotalSegmentator class ids)")
    cli.add_settings(p, "qc-anatomy")
    p.add_argument("--out", required=True, help="the case's anatomy QC table")
    p.add_argument("--proposal-dir", required=True, help="folder that gets label.nii.gz when a correction is proposed")
    args = p.parse_args(argv)
    table = check_case_anatomy(args.case, Path(args.image), Path(args.label), Path(args.anatomy),
                               args.settings["qc"], list(args.settings["labels"].values()),
                               args.settings["anatomy"]["task"], Path(args.out), Path(args.proposal_dir))
    for row in table[table["severity"] != "info"].itertuples():
        print(f"{row.severity}: [{row.check}] {row.message}")
