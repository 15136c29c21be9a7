"""Layering rules, checked on every module or tracked file.

- The core stays free of the Singer edge: importing every core module loads no singer-sdk.
- Facts live in the repository (issue 25): no tracked file cites a path outside it (the vendor fact sheets are
  in ``docs/facts/``, the bulk reference server's scripts in ``bench/bulk-reference-server/``).
- The dialect is the only switch (issue 25): no connector module outside ``wellsky_core/products/`` compares a
  value with a product name literal (``product == "personal_care"``, ``product in ("home_health", "hospice")``,
  a ``case``). Tests (which assert what a tenant reports) and the sandbox (which emulates each product, and never
  imports the core) are not connector code.
"""

from __future__ import annotations

import ast
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import wellsky_core
from wellsky_core.products import DIALECTS, PRODUCTS

CORE_MODULES = sorted(m.name for m in pkgutil.walk_packages(wellsky_core.__path__, "wellsky_core."))


def test_no_core_module_imports_singer_sdk():
    probe = (
        "import importlib, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    if name.endswith('.__main__'):\n"
        "        continue\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'singer_sdk' or m.startswith('singer_sdk.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the core pulled in singer-sdk: {out.stdout.strip()}"
    assert len(CORE_MODULES) > 20


ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_PATH = re.compile("/" + "work/|" + re.escape("..") + "/shared")
"""A citation of the machine's shared folder (spelled in two parts so this file does not cite it)."""
CITATION_EXEMPT: dict[str, str] = {}
"""Files allowed to cite outside the repository, with why (none: README.md's citation went with its rewrite)."""
CONNECTOR_CODE = ("wellsky_core/", "tap_wellsky/", "target_wellsky/", "bench/", "scripts/")


def tracked(*patterns: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--", *patterns], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


def test_no_tracked_file_cites_a_path_outside_the_repository() -> None:
    offenders = []
    for path in tracked():
        if path in CITATION_EXEMPT:
            continue
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{path}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE_PATH.search(line)]
    assert offenders == [], "cite the repository copy (docs/facts/..., bench/bulk-reference-server/...) instead"


def test_the_citation_check_sees_a_citation() -> None:
    assert OUTSIDE_PATH.search("see /" + "work/shared/wellsky-home-connect.md")
    assert OUTSIDE_PATH.search("(" + ".." + "/shared/wellsky-kinnser-portal.md)")
    assert not OUTSIDE_PATH.search("docs/facts/wellsky-home-connect.md")


def product_comparisons(source: str) -> list[int]:
    """Line numbers where a comparison or a ``case`` names a product literal."""
    names = set(PRODUCTS)

    def literals(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return set().union(*(literals(e) for e in node.elts))
        if isinstance(node, ast.Call) and node.args:  # frozenset({...}), set((...))
            return literals(node.args[0])
        return set()

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            if any(literals(side) & names for side in (node.left, *node.comparators)):
                lines.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and literals(node.value) & names:
            lines.append(node.value.lineno)
    return lines


def test_no_module_outside_products_compares_with_a_product_name() -> None:
    offenders = []
    for path in tracked("*.py"):
        if not path.startswith(CONNECTOR_CODE) or path.startswith("wellsky_core/products/"):
            continue
        offenders += [f"{path}:{n}" for n in product_comparisons((ROOT / path).read_text(encoding="utf-8"))]
    assert offenders == [], "ask the product's dialect (wellsky_core/products/<product>/dialect.py) instead"


def test_the_product_check_sees_each_form_of_comparison() -> None:
    product = PRODUCTS[0]
    for source in (
        f"if config.product == {product!r}: pass",
        f"ok = {product!r} != product",
        f"ok = product in ({product!r}, 'x')",
        f"ok = product not in frozenset({{{product!r}}})",
        f"match product:\n    case {product!r}:\n        pass",
    ):
        assert product_comparisons(source), source
    assert product_comparisons("ok = dialect(product).api_channel is None") == []


def test_every_product_is_a_package_with_its_dialect() -> None:
    for product, d in DIALECTS.items():
        assert d.product == product
        assert (ROOT / "wellsky_core" / "products" / product / "dialect.py").is_file()
    assert tracked("wellsky_core/dialects") == [], "one registry: wellsky_core.products"


def test_the_target_imports_nothing_of_the_tap() -> None:
    """The destination shares the Airbyte message side through the core (``wellsky_core.airbyte``), not the tap."""
    offenders = [
        path for path in tracked("target_wellsky/*.py")
        if re.search(r"^\s*(from|import)\s+tap_wellsky\b", (ROOT / path).read_text(), re.M)
    ]
    assert not offenders, offenders
