"""Lesion meshes: volume and bounds agree with the voxels, on an oblique, anisotropic grid."""
import numpy as np
import pytest
import SimpleITK as sitk
import trimesh

from workflow_scripts.meshes import write_meshes

pytestmark = pytest.mark.unit

# A rotation about z by 30 degrees then about x by 20: no axis of the grid is a patient axis.
_A, _B = np.radians(30), np.radians(20)
OBLIQUE = (np.array([[1, 0, 0], [0, np.cos(_B), -np.sin(_B)], [0, np.sin(_B), np.cos(_B)]])
           @ np.array([[np.cos(_A), -np.sin(_A), 0], [np.sin(_A), np.cos(_A), 0], [0, 0, 1]]))


def test_meshes_match_the_voxels_in_volume_and_physical_bounds(tmp_path):
    shape = (24, 40, 48)
    zz, yy, xx = np.indices(shape)
    spacing = (0.8, 0.9, 2.5)  # x, y, z
    distance_mm = np.sqrt(((xx - 22) * spacing[0]) ** 2 + ((yy - 18) * spacing[1]) ** 2 + ((zz - 11) * spacing[2]) ** 2)
    labels = np.where(distance_mm <= 12.0, 1, 0).astype(np.uint8)
    labels[2:5, 30:36, 38:44] = 2  # a box at the grid's edge region: a second class
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(spacing)
    image.SetOrigin((-120.0, 35.0, 410.0))
    image.SetDirection(tuple(OBLIQUE.ravel()))
    sitk.WriteImage(image, str(tmp_path / "seg.nii.gz"))
    written = write_meshes(tmp_path / "seg.nii.gz", {"primary": 1, "metastasis": 2, "absent": 3}, tmp_path / "out")
    assert set(written) == {"primary", "metastasis"}
    for name, value in (("primary", 1), ("metastasis", 2)):
        mesh = trimesh.load(tmp_path / "out" / f"{name}.stl")
        assert mesh.is_watertight and mesh.volume > 0
        voxel_mm3 = (labels == value).sum() * np.prod(spacing)
        assert abs(mesh.volume - voxel_mm3) / voxel_mm3 < 0.12, (name, mesh.volume, voxel_mm3)
        # Bounds in physical LPS mm: those of the class's voxel centres, within one voxel diagonal.
        index = np.argwhere(labels == value)[:, ::-1].astype(float)  # x, y, z
        points = index @ (OBLIQUE * np.asarray(spacing)).T + np.asarray(image.GetOrigin())
        assert np.allclose(mesh.bounds, [points.min(axis=0), points.max(axis=0)], atol=np.linalg.norm(spacing))
    sphere = trimesh.load(tmp_path / "out" / "primary.stl")
    centre = np.array([22, 18, 11]) @ (OBLIQUE * np.asarray(spacing)).T + np.asarray(image.GetOrigin())
    assert np.allclose(sphere.centroid, centre, atol=0.5)
    assert abs(sphere.volume - 4 / 3 * np.pi * 12 ** 3) / (4 / 3 * np.pi * 12 ** 3) < 0.1
