"""Surface meshes of a segmentation, one STL per class, for surgeons and 3D viewers (as the pelvic-fracture
pipeline exports them): marching cubes (scikit-image) on each class's mask, vertices in millimetres in the
image's physical frame, which is ITK's LPS (3D Slicer reads STL as LPS)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from skimage.measure import marching_cubes


def class_mesh(mask: np.ndarray, image: sitk.Image):
    """The surface of ``mask`` (z, y, x) on ``image``'s grid as a closed trimesh in physical LPS millimetres,
    outward-facing; None when the mask is empty."""
    import trimesh

    if not mask.any():
        return None
    padded = np.pad(mask, 1).astype(np.float32)  # closed surfaces where the mask touches the border
    vertices, faces, _, _ = marching_cubes(padded, level=0.5)
    index_xyz = vertices[:, ::-1] - 1.0  # (z, y, x) of the padded array -> ITK's continuous index (x, y, z)
    matrix = np.asarray(image.GetDirection(), float).reshape(3, 3) * np.asarray(image.GetSpacing(), float)
    physical = index_xyz @ matrix.T + np.asarray(image.GetOrigin(), float)
    mesh = trimesh.Trimesh(physical, faces, process=True)
    if mesh.volume < 0:  # the axis order and the direction decide the winding
        mesh.invert()
    return mesh


def write_meshes(segmentation_path: Path, classes: dict[str, int], out_dir: Path) -> dict[str, dict]:
    """``out_dir/<class>.stl`` for every class present; per class its volume in ml by mesh and by voxels."""
    image = sitk.ReadImage(str(segmentation_path))
    labels = sitk.GetArrayFromImage(image)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, value in classes.items():
        mesh = class_mesh(labels == value, image)
        if mesh is None:
            continue
        mesh.export(out_dir / f"{name}.stl")
        written[name] = {"mesh_ml": mesh.volume / 1000, "voxel_ml": int((labels == value).sum()) * voxel_ml,
                         "faces": len(mesh.faces)}
    return written


def export_meshes_entry(argv=None) -> None:
    from workflow_scripts import cli

    p = cli.parser("export-meshes", "One STL surface per class of a segmentation (LPS, mm).")
    p.add_argument("--segmentation", required=True)
    cli.add_settings(p, "export-meshes")
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    from workflow_scripts.settings import lesion_classes

    written = write_meshes(Path(args.segmentation), lesion_classes(args.settings), Path(args.out_dir))
    for name, info in written.items():
        print(f"{name}: {info['faces']} faces, {info['mesh_ml']:.2f} ml by mesh, {info['voxel_ml']:.2f} ml by voxels")
    if not written:
        print("no lesion: no mesh written")
