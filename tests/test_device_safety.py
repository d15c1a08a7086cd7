"""The GPU path by construction: no tensor reaches NumPy or PIL from the GPU, no device is hard-coded.

An AST check over ``pipeline/`` and ``stages/``:
- every ``.numpy()`` call has ``.cpu()`` in the chain it is called on (``x.detach().cpu().numpy()``):
  ``.numpy()`` of a CUDA tensor raises, and only a run on a GPU would show it;
- ``np.asarray``/``np.array``/``Image.fromarray`` never take a torch method chain
  (``t.float().permute(...)``) without ``.cpu()`` in it;
- no string ``"cuda"`` / ``"cuda:N"`` and no ``.cuda()`` outside ``pipeline/core/devices.py``, the one
  module that turns ``train.device`` & co. into a device.
The checker is tested on code that breaks each rule.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVICE_MODULE = Path("pipeline/core/devices.py")
#: methods that exist on torch tensors and not on NumPy arrays or PIL images
TORCH_ONLY = {"permute", "byte", "detach", "clamp", "float", "half", "bfloat16", "contiguous", "to", "squeeze",
              "unsqueeze", "view", "sigmoid", "softmax"}
ARRAY_SINKS = {("np", "asarray"), ("np", "array"), ("numpy", "asarray"), ("numpy", "array"), ("Image", "fromarray")}
_CUDA = re.compile(r"^cuda(:\d+)?$")


def _chain_methods(node: ast.AST) -> list[str]:
    """Method names called along ``a.b().c()[0].d()``, outermost first."""
    names = []
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            names.append(node.func.attr)
            node = node.func.value
        elif isinstance(node, ast.Call):
            node = node.func
        else:
            node = node.value
    return names


def _sink(call: ast.Call) -> bool:
    f = call.func
    return isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in ARRAY_SINKS


def device_faults(source: str, path: Path) -> list[str]:
    """``"<path>:<line>: <what>"`` for each fault in ``source``."""
    faults = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "numpy":
            if "cpu" not in _chain_methods(node.func.value):
                faults.append(f"{path}:{node.lineno}: .numpy() without .cpu()")
        if isinstance(node, ast.Call) and _sink(node) and node.args:
            chain = _chain_methods(node.args[0])
            if set(chain) & TORCH_ONLY and "cpu" not in chain and "numpy" not in chain:
                faults.append(f"{path}:{node.lineno}: a tensor chain {chain} into {ast.unparse(node.func)} "
                              f"without .cpu()")
        if path != DEVICE_MODULE:
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _CUDA.match(node.value):
                faults.append(f"{path}:{node.lineno}: hard-coded device {node.value!r}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "cuda" \
                    and not node.args:
                faults.append(f"{path}:{node.lineno}: .cuda()")
    return faults


def test_the_package_passes_no_gpu_tensor_to_numpy_and_hard_codes_no_device():
    faults = []
    for folder in ("pipeline", "stages"):
        for file in sorted((REPO / folder).rglob("*.py")):
            rel = file.relative_to(REPO)
            faults += device_faults(file.read_text(), rel)
    assert faults == []


@pytest.mark.parametrize("code, found", [
    ("a = t.numpy()", ".numpy() without .cpu()"),
    ("a = t.detach().float().numpy()", ".numpy() without .cpu()"),
    ("a = maps[r][0].numpy()", ".numpy() without .cpu()"),
    ("img = Image.fromarray(t.byte().permute(1, 2, 0))", "into Image.fromarray"),
    ("a = np.asarray(x.float())", "into np.asarray"),
    ("x = t.to('cuda')", "hard-coded device 'cuda'"),
    ("x = torch.device('cuda:0')", "hard-coded device 'cuda:0'"),
    ("x = model.cuda()", ".cuda()"),
])
def test_the_check_finds_each_kind_of_fault(code: str, found: str):
    faults = device_faults(code, Path("pipeline/x.py"))
    assert len(faults) == 1 and found in faults[0], faults


@pytest.mark.parametrize("code", [
    "a = t.detach().cpu().numpy()",
    "a = t.cpu().float().numpy() > 0.5",
    "img = Image.fromarray(t.cpu().byte().permute(1, 2, 0).numpy())",
    "a = np.asarray(image.convert('RGB'))",
    "n = float(t); m = t.tolist()",
    "d = resolve_device(cfg.device)",
])
def test_the_check_passes_device_safe_code(code: str):
    assert device_faults(code, Path("pipeline/x.py")) == []


def test_only_the_device_module_may_name_cuda():
    assert device_faults("ok = device == 'cuda'", DEVICE_MODULE) == []
