"""The package's shape: nnU-Net's internals behind one seam, and no import cycles between modules."""
import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "workflow_scripts"


def test_private_nnunet_names_are_used_in_the_seam_only():
    """The names of nnU-Net's internals this workflow touches appear in nnunet_seam.py and nowhere else."""
    private = re.compile(r"_internal_\w+|my_fantastic_logging|\.fget\.cache_clear|_set_batch_size_and_oversample|"
                         r"save_checkpoint|recursive_find_\w+|\.multiprocessing\b|nnUNetTrainer as base")
    users = {path.name for path in PACKAGE.glob("*.py") if private.search(path.read_text())}
    assert users == {"nnunet_seam.py"}


def imports_of(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workflow_scripts."):
            found.add(node.module.split(".")[1])
    return found


def test_no_import_cycles_between_modules():
    graph = {path.stem: imports_of(path) for path in PACKAGE.glob("*.py")}
    assert graph["ensemble"] and graph["prediction"]  # the parser sees the package's own imports

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph.get(start, ()))

    cycles = sorted(module for module in graph if reaches(module, module))
    assert not cycles, f"modules on an import cycle: {cycles}"
